//go:build race

package caller

// raceEnabled: the race detector adds allocations of its own, so the
// allocation test only counts without it (the test script runs it again
// without -race).
const raceEnabled = true

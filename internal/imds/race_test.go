//go:build race

package imds

// raceEnabled: the race detector makes sync.Pool drop items at random, so
// allocation counts mean nothing under it. The test command runs the
// allocation tests again without -race.
const raceEnabled = true

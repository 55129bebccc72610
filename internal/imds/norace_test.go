//go:build !race

package imds

const raceEnabled = false

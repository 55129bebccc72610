package main

import (
	"runtime/debug"
	"testing"
)

// TestRevision: a build from a modified tree says so, whether the
// Makefile stamped the commit or go build recorded it.
func TestRevision(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	for _, tc := range []struct {
		stamped  string
		settings []debug.BuildSetting
		want     string
	}{
		{"0123abc", vcs("fedcba9876", "true"), "0123abc"},
		{"0123abc-dirty", nil, "0123abc-dirty"},
		{"", vcs("fedcba9876", "false"), "fedcba9876"},
		{"", vcs("fedcba9876", "true"), "fedcba9876-dirty"},
		{"", nil, "unknown"},
		{"", []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}}, "unknown"},
	} {
		if got := revision(tc.stamped, tc.settings); got != tc.want {
			t.Errorf("revision(%q, %v) = %q, want %q", tc.stamped, tc.settings, got, tc.want)
		}
	}
}

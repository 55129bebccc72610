package config

import (
	"fmt"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written as Go writes durations ("1h", "90m",
// "14m50s").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseDuration(n)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return FormatDuration(time.Duration(d)), nil }

// FormatDuration writes d as a person would: "1h", "14m50s", "90m" stays
// "1h30m".
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// RefreshWindow is how long before expiry credentials are replaced; zero
// means "auto": min(30m, half the credentials' lifetime).
type RefreshWindow time.Duration

// Auto reports whether the window is chosen from each credential's lifetime.
func (w RefreshWindow) Auto() bool { return w == 0 }

// UnmarshalYAML implements yaml.Unmarshaler.
func (w *RefreshWindow) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Value == "auto" {
		*w = 0
		return nil
	}
	v, err := parseDuration(n)
	if err != nil {
		return lineError{n.Line, fmt.Sprintf("%q is neither auto nor a duration (write auto, or e.g. 10m)", n.Value)}
	}
	if v == 0 {
		return lineError{n.Line, "0s is not a refresh window; write auto, or a positive duration such as 10m"}
	}
	*w = RefreshWindow(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (w RefreshWindow) MarshalYAML() (any, error) {
	if w.Auto() {
		return "auto", nil
	}
	return FormatDuration(time.Duration(w)), nil
}

func parseDuration(n *yaml.Node) (time.Duration, error) {
	if n.Kind != yaml.ScalarNode {
		return 0, lineError{n.Line, "expected a duration such as 1h or 90m, not a " + kindName(n)}
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return 0, lineError{n.Line, fmt.Sprintf("%q is not a duration (write e.g. 1h, 90m or 14m50s)", n.Value)}
	}
	if v < 0 {
		return 0, lineError{n.Line, fmt.Sprintf("%q is negative; durations must be positive", n.Value)}
	}
	return v, nil
}

// lineError is a problem tied to a line of the file.
type lineError struct {
	line int
	msg  string
}

func (e lineError) Error() string { return fmt.Sprintf("%d: %s", e.line, e.msg) }

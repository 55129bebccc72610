package hostinfo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imds-agent/imds-agent/internal/config"
)

// TestUserDataFile: user data is read from a regular file of at most EC2's
// 16 KB; a device (which would block the start or a reload) or a larger
// file is refused with the reason.
func TestUserDataFile(t *testing.T) {
	dir := t.TempDir()
	small, large := filepath.Join(dir, "small"), filepath.Join(dir, "large")
	if err := os.WriteFile(small, []byte("#!/bin/sh\necho hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(large, make([]byte, MaxUserData+1), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, err string }{
		{small, ""},
		{large, "at most 16384 bytes"},
		{"/dev/zero", "must be a regular file"},
	} {
		c := config.Default().Instance
		c.ID = "i-0123456789abcdef0"
		c.UserDataFile = tc.path
		in, err := System().Instance(c, "")
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.path, err)
		case tc.err == "" && string(in.UserData) != "#!/bin/sh\necho hi\n":
			t.Errorf("%s: user data %q", tc.path, in.UserData)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: err = %v, want %q", tc.path, err, tc.err)
		}
	}
}

// TestBootTimeIsStable: pendingTime, read again at a reload a second later,
// is the same instant.
func TestBootTimeIsStable(t *testing.T) {
	h := System()
	first := h.bootTime()
	for range 12 {
		time.Sleep(100 * time.Millisecond)
		if b := h.bootTime(); !b.Equal(first) {
			t.Fatalf("boot time moved from %s to %s", first, b)
		}
	}
}

package pkgtest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestLintian runs lintian on the .deb as the user nobody. Overridden tags
// (packaging/deb/lintian-overrides, explained in LINTIAN-RPMLINT.md) are
// shown; any error or warning fails the test.
func TestLintian(t *testing.T) {
	need(t, "lintian", "setpriv")
	needRoot(t) // to hand the copy to nobody
	u := newUnprivileged(t)
	deb := u.copy(t, pkgs.deb1, 0o644)
	// The verdict: errors and warnings fail.
	out, err := u.run(t, 5*time.Minute, "/usr/bin:/bin",
		"lintian", "--tag-display-limit", "0", "--display-info", "--fail-on", "error,warning", deb)
	if err != nil {
		t.Errorf("lintian: %v", err)
	}
	if bad := regexp.MustCompile(`(?m)^[EW]: .*$`).FindAllString(out, -1); len(bad) > 0 {
		t.Errorf("lintian reports:\n%s", strings.Join(bad, "\n"))
	}
	// The record, overridden tags included (lintian then exits 2 whatever
	// it finds).
	all, _ := u.run(t, 5*time.Minute, "/usr/bin:/bin",
		"lintian", "--tag-display-limit", "0", "--display-info", "--show-overrides", deb)
	t.Logf("lintian %s:\n%s", filepath.Base(pkgs.deb1), all)
}

// TestRpmlint runs rpmlint on the .rpm as the user nobody. rpmlint unpacks
// the payload with `cpio -id`, and nFPM's payload has absolute member names,
// so cpio would write into / : a wrapper adds --no-absolute-filenames (and
// nobody could not write there anyway).
func TestRpmlint(t *testing.T) {
	need(t, "rpmlint", "cpio", "setpriv")
	needRoot(t)
	u := newUnprivileged(t)
	rpm := u.copy(t, pkgs.rpm1, 0o644)
	cfg := u.copy(t, "../rpm/rpmlint.toml", 0o644)
	bin := filepath.Join(u.dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(bin, "cpio")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\nexec /usr/bin/cpio --no-absolute-filenames \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	before := exists("/usr/bin/imds-agent")
	out, err := u.run(t, 5*time.Minute, bin+":/usr/bin:/bin", "rpmlint", "-c", cfg, rpm)
	t.Logf("rpmlint %s:\n%s", filepath.Base(pkgs.rpm1), out)
	if err != nil {
		t.Errorf("rpmlint: %v", err)
	}
	if !strings.Contains(out, " 0 errors, 0 warnings") {
		t.Errorf("rpmlint reports errors or warnings")
	}
	if !strings.Contains(out, "checks: ") || strings.Contains(out, "no-binary") {
		t.Errorf("rpmlint did not check the unpacked payload")
	}
	if !before && exists("/usr/bin/imds-agent") {
		t.Errorf("rpmlint unpacked the package into /")
	}
}

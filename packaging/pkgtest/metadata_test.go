package pkgtest

import (
	"strings"
	"testing"
	"time"
)

// TestPackageDependencies checks what the .deb asks of the host: the
// programs its scripts and its unit run that a minimal image may lack.
// /bin/kill is the unit's ExecReload (systemctl reload); Debian and Ubuntu
// ship it in procps, which is not Essential. (The .rpm's requirements,
// /usr/bin/kill among them, are checked in TestRPMHeader.)
func TestPackageDependencies(t *testing.T) {
	need(t, "dpkg-deb")
	if got := strings.TrimSpace(mustRun(t, time.Minute, "dpkg-deb", "-f", pkgs.deb1, "Depends")); got != "passwd, procps" {
		t.Errorf("Depends: %q, want %q", got, "passwd, procps")
	}
}

package pkgtest

import (
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestPackageDependencies checks what each package asks of the host: the
// programs its scripts and its unit run that a minimal image may lack.
// /bin/kill is the unit's ExecReload (systemctl reload): on Debian and
// Ubuntu procps ships it and is not Essential; on rpm distributions
// /usr/bin/kill is util-linux's (util-linux-core on Fedora and RHEL 9), and
// /bin is a link to /usr/bin there.
func TestPackageDependencies(t *testing.T) {
	t.Run("deb", func(t *testing.T) {
		need(t, "dpkg-deb")
		if got := strings.TrimSpace(mustRun(t, time.Minute, "dpkg-deb", "-f", pkgs.deb1, "Depends")); got != "passwd, procps" {
			t.Errorf("Depends: %q, want %q", got, "passwd, procps")
		}
	})
	t.Run("rpm", func(t *testing.T) {
		h, err := readRPMHeader(pkgs.rpm1)
		if err != nil {
			t.Fatal(err)
		}
		got := h.requires()
		sort.Strings(got)
		if d := cmp.Diff([]string{"/bin/sh", "/usr/bin/kill", "/usr/sbin/useradd"}, got); d != "" {
			t.Errorf("requires (-want +got):\n%s", d)
		}
	})
}

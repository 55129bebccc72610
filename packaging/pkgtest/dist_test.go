package pkgtest

import (
	"debug/elf"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMakePackagesOutput checks what `make packages` wrote to
// $PKGTEST_DIST (scripts/test-packages.sh sets it): one .deb and one .rpm
// per architecture, named as README.md says, each holding
// a binary for its architecture.
func TestMakePackagesOutput(t *testing.T) {
	dist := os.Getenv("PKGTEST_DIST")
	if dist == "" {
		t.Skip("PKGTEST_DIST is not set (scripts/test-packages.sh sets it after make packages)")
	}
	need(t, "dpkg-deb", "rpm", "rpm2cpio", "cpio")
	for _, tc := range []struct {
		goarch, debArch, rpmArch string
		machine                  elf.Machine
	}{
		{"amd64", "amd64", "x86_64", elf.EM_X86_64},
		{"arm64", "arm64", "aarch64", elf.EM_AARCH64},
	} {
		debs, _ := filepath.Glob(filepath.Join(dist, "imds-agent_*-1_"+tc.debArch+".deb"))
		rpms, _ := filepath.Glob(filepath.Join(dist, "imds-agent-*-1."+tc.rpmArch+".rpm"))
		if len(debs) != 1 || len(rpms) != 1 {
			t.Errorf("%s: want one .deb and one .rpm in %s, found %v %v", tc.goarch, dist, debs, rpms)
			continue
		}
		debVersion := mustRun(t, time.Minute, "dpkg-deb", "-f", debs[0], "Version")
		if v := os.Getenv("PKGTEST_VERSION"); v != "" && strings.TrimSpace(debVersion) != v {
			t.Errorf("%s: version %q, want %q", debs[0], debVersion, v)
		}
		rpmVersion := mustRun(t, time.Minute, "rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE}", rpms[0])
		if strings.TrimSpace(debVersion) != rpmVersion {
			t.Errorf("%s: deb version %q, rpm version %q", tc.goarch, debVersion, rpmVersion)
		}
		if got := strings.TrimSpace(mustRun(t, time.Minute, "dpkg-deb", "-f", debs[0], "Architecture")); got != tc.debArch {
			t.Errorf("%s: deb Architecture %q", debs[0], got)
		}
		if got := mustRun(t, time.Minute, "rpm", "-qp", "--qf", "%{ARCH}", rpms[0]); got != tc.rpmArch {
			t.Errorf("%s: rpm arch %q", rpms[0], got)
		}
		dir := t.TempDir()
		mustRun(t, time.Minute, "dpkg-deb", "-x", debs[0], filepath.Join(dir, "deb"))
		checkELF(t, filepath.Join(dir, "deb/usr/bin/imds-agent"), tc.machine)
		// The binary says the version the package does (without the
		// package's release).
		if tc.goarch == runtime.GOARCH {
			want := "imds-agent " + strings.TrimSuffix(strings.TrimSpace(debVersion), "-1") + " "
			if got := mustRun(t, time.Minute, filepath.Join(dir, "deb/usr/bin/imds-agent"), "version"); !strings.HasPrefix(got, want) {
				t.Errorf("%s: imds-agent version says %q, want it to start %q", debs[0], got, want)
			}
		}
		rpmDir := filepath.Join(dir, "rpm")
		if err := os.Mkdir(rpmDir, 0o755); err != nil {
			t.Fatal(err)
		}
		mustRun(t, time.Minute, "sh", "-c", `cd "$1" && rpm2cpio "$2" | cpio -id --quiet --no-absolute-filenames`, "sh", rpmDir, rpms[0])
		checkELF(t, filepath.Join(rpmDir, "usr/bin/imds-agent"), tc.machine)
	}
}

func checkELF(t *testing.T, path string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	defer f.Close()
	if f.Machine != machine {
		t.Errorf("%s is for %v, want %v", path, f.Machine, machine)
	}
	if _, err := f.DynamicSymbols(); err == nil {
		t.Errorf("%s is dynamically linked; packages ship the static (CGO_ENABLED=0) build", path)
	}
}

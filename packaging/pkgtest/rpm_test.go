package pkgtest

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// rpmFiles is the .rpm's payload: flags (rpm's fflags: c config, n
// noreplace, d doc, l license), mode, owner:group and path.
var rpmFiles = []string{
	" drwxr-xr-x root:root /etc/imds-agent",
	" drwxr-x--- root:imds-agent /etc/imds-agent/aws",
	"cn -rw-r--r-- root:root /etc/imds-agent/config.yaml",
	" -rwxr-xr-x root:root /usr/bin/imds-agent",
	" -rw-r--r-- root:root /usr/lib/NetworkManager/conf.d/90-imds-agent.conf",
	" -rw-r--r-- root:root /usr/lib/modules-load.d/imds-agent.conf",
	" -rw-r--r-- root:root /usr/lib/systemd/network/10-imds-agent.network",
	" -rw-r--r-- root:root /usr/lib/systemd/system-preset/90-imds-agent.preset",
	" -rw-r--r-- root:root /usr/lib/systemd/system/imds-agent-link.service",
	" -rw-r--r-- root:root /usr/lib/systemd/system/imds-agent.service",
	" -rw-r--r-- root:root /usr/lib/sysusers.d/imds-agent.conf",
	" drwxr-xr-x root:root /usr/share/doc/imds-agent",
	"d -rw-r--r-- root:root /usr/share/doc/imds-agent/README.md",
	" drwxr-xr-x root:root /usr/share/licenses/imds-agent",
	"l -rw-r--r-- root:root /usr/share/licenses/imds-agent/LICENSE",
	"l -rw-r--r-- root:root /usr/share/licenses/imds-agent/THIRD_PARTY_NOTICES",
}

func rpmQuery(t *testing.T, pkg string, args ...string) string {
	t.Helper()
	return mustRun(t, time.Minute, "rpm", append(append([]string{"-qp"}, args...), pkg)...)
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

func TestRPMHeader(t *testing.T) {
	need(t, "rpm")
	got := rpmQuery(t, pkgs.rpm1, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE}\n")
	wantArch := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}
	arch := strings.Fields(got)[3]
	if want := "imds-agent " + version1 + " 1 " + arch + " Apache-2.0\n"; got != want || (wantArch[goarch()] != "" && arch != wantArch[goarch()]) {
		t.Errorf("header: %q, want %q (arch for %s)", got, want, goarch())
	}
	files := lines(rpmQuery(t, pkgs.rpm1, "--qf", "[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]"))
	if d := cmp.Diff(rpmFiles, files); d != "" {
		t.Errorf("payload (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"/etc/imds-agent/config.yaml"}, lines(rpmQuery(t, pkgs.rpm1, "--configfiles"))); d != "" {
		t.Errorf("config files (-want +got):\n%s", d)
	}
	reqs := lines(rpmQuery(t, pkgs.rpm1, "--requires"))
	sort.Strings(reqs)
	if d := cmp.Diff([]string{"/bin/sh", "/usr/bin/kill", "/usr/sbin/useradd"}, reqs); d != "" {
		t.Errorf("requires (-want +got):\n%s", d)
	}
	if cl := rpmQuery(t, pkgs.rpm1, "--changelog"); !strings.Contains(cl, "- "+version1+"-1\n") {
		t.Errorf("changelog does not name %s-1:\n%s", version1, cl)
	}
}

// TestRPMScripts checks that the scriptlets are the hand-written
// expansions of the systemd macros, and that only a first install that the
// preset policy enabled starts the service.
func TestRPMScripts(t *testing.T) {
	need(t, "rpm")
	scripts := rpmQuery(t, pkgs.rpm1, "--scripts")
	for _, want := range []string{
		"preinstall scriptlet (using /bin/sh)",
		"systemd-sysusers --replace=/usr/lib/sysusers.d/imds-agent.conf -",
		"useradd -r -g imds-agent -M -d /nonexistent -s /usr/sbin/nologin",
		"postinstall scriptlet (using /bin/sh)",
		"/usr/lib/systemd/systemd-update-helper install-system-units imds-agent.service",
		"systemctl --no-reload preset imds-agent.service",
		"systemctl -q is-enabled imds-agent.service; then\n\t\tsystemctl --no-block start imds-agent.service",
		"preuninstall scriptlet (using /bin/sh)",
		"/usr/lib/systemd/systemd-update-helper remove-system-units imds-agent.service imds-agent-link.service",
		"/usr/bin/imds-agent cleanup --config /etc/imds-agent/config.yaml",
		"postuninstall scriptlet (using /bin/sh)",
		"/usr/lib/systemd/systemd-update-helper mark-restart-system-units imds-agent.service",
		"systemctl try-restart imds-agent.service",
		"/usr/bin/imds-agent check-config --config /etc/imds-agent/config.yaml",
		"config_taken && /usr/lib/systemd/systemd-update-helper mark-restart-system-units imds-agent.service",
	} {
		if !strings.Contains(scripts, want) {
			t.Errorf("scriptlets lack %q", want)
		}
	}
	var code []string // the scriptlets without their comments and messages
	for _, l := range lines(scripts) {
		if l := strings.TrimSpace(l); !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "echo ") {
			code = append(code, l)
		}
	}
	for _, bad := range []string{"systemctl start", "systemctl restart", "systemctl enable"} {
		if strings.Contains(strings.Join(code, "\n"), bad) {
			t.Errorf("scriptlets run %q", bad)
		}
	}
	// The user in %pre must be the one the shipped sysusers.d file declares.
	sysusers, err := os.ReadFile("../../systemd/imds-agent.sysusers")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines(string(sysusers)) {
		if strings.HasPrefix(l, "u ") && !strings.Contains(scripts, "\n"+l+"\n") {
			t.Errorf("%%pre's sysusers entry differs from systemd/imds-agent.sysusers (%q)", l)
		}
	}
}

// TestRPMPresetPolicy checks what README.md says of the preset the .rpm
// ships, with systemctl preset itself (on a scratch root: --root works on
// the files there and asks no running systemd). systemd sorts the preset
// files of every directory together by file name and the first line that
// names the unit wins, so an administrator's "disable imds-agent.service"
// wins only from a file whose name sorts before 90-imds-agent.preset, or
// from /etc/systemd/system-preset/90-imds-agent.preset, which replaces the
// shipped file.
func TestRPMPresetPolicy(t *testing.T) {
	need(t, "systemctl")
	unit, err := os.ReadFile("../../systemd/imds-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	preset, err := os.ReadFile("../rpm/imds-agent.preset")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		adminFile string // in /etc/systemd/system-preset, saying "disable imds-agent.service"; "" for none
		want      string
	}{
		{"", "enabled"},
		{"10-site.preset", "disabled"},
		{"90-imds-agent.preset", "disabled"},
		{"99-site.preset", "enabled"}, // sorts after the shipped file, which wins
	} {
		name := tc.adminFile
		if name == "" {
			name = "no admin preset"
		}
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			for _, dir := range []string{"usr/lib/systemd/system", "usr/lib/systemd/system-preset", "etc/systemd/system-preset"} {
				mkdirAll(t, filepath.Join(root, dir))
			}
			writeFile(t, filepath.Join(root, "usr/lib/systemd/system/imds-agent.service"), string(unit), 0o644)
			writeFile(t, filepath.Join(root, "usr/lib/systemd/system-preset/90-imds-agent.preset"), string(preset), 0o644)
			if tc.adminFile != "" {
				writeFile(t, filepath.Join(root, "etc/systemd/system-preset", tc.adminFile), "disable imds-agent.service\n", 0o644)
			}
			mustRun(t, time.Minute, "systemctl", "--root="+root, "preset", "imds-agent.service")
			got, _ := run(t, time.Minute, "systemctl", "--root="+root, "is-enabled", "imds-agent.service") // exit status 1 when disabled
			if strings.TrimSpace(got) != tc.want {
				t.Errorf("after systemctl preset: %q, want %q", strings.TrimSpace(got), tc.want)
			}
		})
	}
}

// TestRPMInstallIntoScratchRoot installs, upgrades and erases the .rpm in a
// scratch root with rpm --root and no scriptlets (they need the target's
// tools), checking owners, modes and %config(noreplace).
func TestRPMInstallIntoScratchRoot(t *testing.T) {
	need(t, "rpm")
	needRoot(t) // rpm sets owners
	root := t.TempDir()
	// What %pre would have done: the user and group exist.
	for path, text := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nimds-agent:x:990:990:imds-agent metadata service:/nonexistent:/usr/sbin/nologin\n",
		"etc/group":  "root:x:0:\nimds-agent:x:990:\n",
	} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(path)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, path), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	realBefore := exists("/etc/imds-agent")
	rpm := func(args ...string) string {
		t.Helper()
		return mustRun(t, 2*time.Minute, "rpm", append([]string{"--root", root, "--dbpath", "/var/lib/rpm"}, args...)...)
	}
	rpm("--initdb")
	rpm("-i", "--nodeps", "--noscripts", pkgs.rpm1)

	for _, tc := range []struct {
		path      string
		mode      os.FileMode
		uid, gid  uint32
		isDir     bool
		wantEmpty bool
	}{
		{path: "usr/bin/imds-agent", mode: 0o755},
		{path: "usr/lib/systemd/system/imds-agent.service", mode: 0o644},
		{path: "etc/imds-agent", mode: 0o755, isDir: true},
		{path: "etc/imds-agent/config.yaml", mode: 0o644},
		{path: "etc/imds-agent/aws", mode: 0o750, gid: 990, isDir: true, wantEmpty: true},
	} {
		checkFile(t, filepath.Join(root, tc.path), tc.mode, tc.uid, tc.gid, tc.isDir)
		if tc.wantEmpty {
			if ents, _ := os.ReadDir(filepath.Join(root, tc.path)); len(ents) != 0 {
				t.Errorf("%s is not empty", tc.path)
			}
		}
	}
	if out, err := run(t, time.Minute, "rpm", "--root", root, "--dbpath", "/var/lib/rpm", "-V", "--nodeps", "imds-agent"); err != nil || out != "" {
		t.Errorf("rpm -V after install: %v\n%s", err, out)
	}

	// An operator's edit and credentials survive an upgrade.
	cfg := filepath.Join(root, "etc/imds-agent/config.yaml")
	appendFile(t, cfg, "log:\n  level: debug\n")
	writeFile(t, filepath.Join(root, "etc/imds-agent/aws/credentials"), "[default]\n", 0o640)
	rpm("-U", "--nodeps", "--noscripts", pkgs.rpm2)
	if got := rpm("-q", "--qf", "%{VERSION}", "imds-agent"); got != version2 {
		t.Errorf("after upgrade: version %q, want %q", got, version2)
	}
	if data, _ := os.ReadFile(cfg); !strings.HasSuffix(string(data), "log:\n  level: debug\n") {
		t.Errorf("the upgrade replaced the edited config")
	}
	if exists(cfg + ".rpmnew") {
		t.Errorf("the upgrade wrote %s.rpmnew though the packaged config did not change", cfg)
	}
	if !exists(filepath.Join(root, "etc/imds-agent/aws/credentials")) {
		t.Errorf("the upgrade removed aws/credentials")
	}

	// Erase keeps the edited config as .rpmsave and the operator's files.
	rpm("-e", "--nodeps", "--noscripts", "imds-agent")
	if exists(filepath.Join(root, "usr/bin/imds-agent")) {
		t.Errorf("erase left the binary")
	}
	if !exists(cfg + ".rpmsave") {
		t.Errorf("erase did not keep the edited config as config.yaml.rpmsave")
	}
	if !realBefore && exists("/etc/imds-agent") {
		t.Errorf("rpm --root wrote into the real /etc")
	}
}

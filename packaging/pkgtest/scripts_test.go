package pkgtest

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// stubScript stands in for every program a maintainer script runs: it
// records its name and arguments (and, for systemd-sysusers, its input),
// prints out.NAME and, to standard error, err.NAME if they exist, and exits
// with the code in exit.NAME.ARG1 or else exit.NAME, if one exists.
const stubScript = `#!/bin/sh
name=${0##*/}
echo "$name $*" >> "$STUB_DIR/log"
[ "$name" = systemd-sysusers ] && /bin/cat >> "$STUB_DIR/log"
[ -f "$STUB_DIR/out.$name" ] && /bin/cat "$STUB_DIR/out.$name"
[ -f "$STUB_DIR/err.$name" ] && /bin/cat "$STUB_DIR/err.$name" >&2
[ -f "$STUB_DIR/exit.$name.$1" ] && exit "$(/bin/cat "$STUB_DIR/exit.$name.$1")"
[ -f "$STUB_DIR/exit.$name" ] && exit "$(/bin/cat "$STUB_DIR/exit.$name")"
exit 0
`

// runScript runs a maintainer script the way dpkg or rpm does, with PATH
// holding only stubs (so nothing on this machine is touched: not the user
// database, not /etc, not systemd) and in a network namespace of its own.
// It returns the stubs' log and what the script printed.
func runScript(t *testing.T, script string, stubs []string, exits map[string]string, args ...string) ([]string, string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	mkdirAll(t, bin)
	writeFile(t, filepath.Join(dir, "stub"), stubScript, 0o755)
	for _, s := range stubs {
		if err := os.Symlink(filepath.Join(dir, "stub"), filepath.Join(bin, s)); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Contains(stubs, "stat") {
		if err := os.Symlink("/usr/bin/stat", filepath.Join(bin, "stat")); err != nil { // the rpm's chroot test
			t.Fatal(err)
		}
	}
	// exits holds exit codes by program name, and, under "out:NAME" and
	// "err:NAME", what the stub for NAME prints to standard output and error.
	for name, v := range exits {
		if prog, ok := strings.CutPrefix(name, "out:"); ok {
			writeFile(t, filepath.Join(dir, "out."+prog), v, 0o644)
			continue
		}
		if prog, ok := strings.CutPrefix(name, "err:"); ok {
			writeFile(t, filepath.Join(dir, "err."+prog), v, 0o644)
			continue
		}
		writeFile(t, filepath.Join(dir, "exit."+name), v, 0o644)
	}
	writeFile(t, filepath.Join(dir, "log"), "", 0o644)
	argv := append([]string{"--net", "--", "env", "-i", "PATH=" + bin, "STUB_DIR=" + dir, "/bin/sh", "-c", script, "sh"}, args...)
	out, err := run(t, time.Minute, "unshare", argv...)
	if err != nil {
		t.Fatalf("script %v: %v\n%s", args, err, out)
	}
	if out != "" {
		t.Logf("script %v printed:\n%s", args, out)
	}
	log, err := os.ReadFile(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	var calls []string
	for _, l := range lines(string(log)) {
		calls = append(calls, strings.TrimSpace(l))
	}
	return calls, out
}

// etcUnitDir is where `imds-agent install` writes its unit, which would
// override the package's.
const etcUnitDir = "/etc/systemd/system/"

// withUnitDir returns script reading a scratch directory instead of
// etcUnitDir, with a unit file of the given kind there ("" for none), and
// the warning the script prints when it finds one that overrides the
// package's. The machine's own /etc is never read or written.
func withUnitDir(t *testing.T, script, kind string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	if kind != "" && !strings.Contains(script, etcUnitDir) {
		t.Fatalf("the script never looks at %s", etcUnitDir)
	}
	script = strings.ReplaceAll(script, etcUnitDir, dir+"/")
	unit := filepath.Join(dir, "imds-agent.service")
	switch kind {
	case "":
	case "file":
		writeFile(t, unit, "[Service]\nExecStart=/usr/local/bin/imds-agent run\n", 0o644)
	case "empty": // systemd reads an empty unit file as a mask
		writeFile(t, unit, "", 0o644)
	case "mask":
		if err := os.Symlink("/dev/null", unit); err != nil {
			t.Fatal(err)
		}
	case "link": // systemctl link: a unit file kept elsewhere, on purpose
		other := filepath.Join(t.TempDir(), "imds-agent.service")
		writeFile(t, other, "[Service]\nExecStart=/opt/imds-agent/imds-agent run\n", 0o644)
		if err := os.Symlink(other, unit); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("withUnitDir: unknown kind %q", kind)
	}
	return script, "imds-agent: " + unit + " overrides the unit this package installed"
}

func mkdirAll(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// checkConfig is how the scripts ask the new binary whether it takes the
// configuration before restarting the agent on an upgrade.
const checkConfig = "imds-agent check-config --config /etc/imds-agent/config.yaml"

// bareBinary matches a command that runs imds-agent by name instead of as
// /usr/bin/imds-agent.
var bareBinary = regexp.MustCompile(`(^|[^/])imds-agent (cleanup|check-config|setup-link|run|install|uninstall|start|stop|status|refresh|version|dev)\b`)

// TestScriptsRunThePackagedBinary: every maintainer script and scriptlet
// runs the packaged binary by its path. By name, root's PATH (and sudo's
// secure_path) finds /usr/local/bin first, where the README's install
// without a package puts another imds-agent, which would then judge the
// configuration or remove the link instead.
func TestScriptsRunThePackagedBinary(t *testing.T) {
	scripts := map[string]string{}
	t.Run("deb", func(t *testing.T) {
		need(t, "dpkg-deb")
		dir := t.TempDir()
		mustRun(t, time.Minute, "dpkg-deb", "-e", pkgs.deb1, dir)
		for _, name := range []string{"postinst", "prerm", "postrm"} {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			scripts["deb "+name] = string(b)
		}
	})
	t.Run("rpm", func(t *testing.T) {
		need(t, "rpm")
		for name, tag := range map[string]string{"%pre": "PREIN", "%post": "POSTIN", "%preun": "PREUN", "%postun": "POSTUN"} {
			if scripts["rpm "+name] = rpmQuery(t, pkgs.rpm1, "--qf", "%{"+tag+"}"); scripts["rpm "+name] == "" {
				t.Errorf("the .rpm has no %s", name)
			}
		}
	})
	runs := 0
	for name, text := range scripts {
		for _, l := range lines(text) {
			l = strings.TrimSpace(l)
			if strings.HasPrefix(l, "#") || strings.HasPrefix(l, "echo ") { // what it says is no command
				continue
			}
			if bareBinary.MatchString(l) {
				t.Errorf("%s runs imds-agent by name: %s", name, l)
			}
			if strings.Contains(l, "/usr/bin/imds-agent ") {
				runs++
			}
		}
	}
	// The upgrade check (deb postinst, rpm %postun) and the link's removal
	// (deb prerm, rpm %preun), at least.
	if runs < 4 {
		t.Errorf("the scripts run /usr/bin/imds-agent %d times, want at least 4", runs)
	}
}

// TestDebMaintainerScriptsRun runs the .deb's scripts with stubs for every
// program and checks what they ask for, argument by argument.
func TestDebMaintainerScriptsRun(t *testing.T) {
	need(t, "dpkg-deb", "unshare")
	needRoot(t) // unshare --net
	dir := t.TempDir()
	mustRun(t, time.Minute, "dpkg-deb", "-e", pkgs.deb1, dir)
	script := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	stubs := []string{"getent", "systemd-sysusers", "groupadd", "useradd", "userdel", "groupdel", "dpkg-statoverride",
		"deb-systemd-helper", "deb-systemd-invoke", "systemctl", "networkctl", "nmcli", "ischroot", "imds-agent", "rm"}
	withoutSysusers := func() []string {
		var s []string
		for _, n := range stubs {
			if n != "systemd-sysusers" {
				s = append(s, n)
			}
		}
		return s
	}
	// The packaged binary judges the config, whatever else is on PATH
	// (a /usr/local/bin/imds-agent from an earlier `imds-agent install`).
	if !strings.Contains(script("postinst"), "/usr/bin/imds-agent check-config --config /etc/imds-agent/config.yaml") {
		t.Error("the postinst does not ask /usr/bin/imds-agent to check the config")
	}
	// Each script runs as on a host where systemd runs and as in a chroot
	// or container where it does not, whatever this host is: the scripts'
	// test for it, [ -d /run/systemd/system ], is pointed at a directory
	// that exists or not.
	for _, running := range []bool{false, true} {
		testDebScripts(t, script, stubs, withoutSysusers, running)
	}
}

func testDebScripts(t *testing.T, script func(string) string, stubs []string, withoutSysusers func() []string, running bool) {
	runDir := filepath.Join(t.TempDir(), "run-systemd-system")
	state := "stopped"
	if running {
		mkdirAll(t, runDir)
		state = "running"
	}
	ifRunning := func(l ...string) []string {
		if running {
			return l
		}
		return nil
	}
	cat := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	// What a purge does before it turns to the user.
	purgeStart := []string{
		"deb-systemd-helper purge imds-agent.service imds-agent-link.service",
		"deb-systemd-helper unmask imds-agent.service imds-agent-link.service",
		"dpkg-statoverride --list /etc/imds-agent/aws",
		"dpkg-statoverride --remove /etc/imds-agent/aws",
		"rm -rf /etc/imds-agent",
	}
	// The link unit, as dh_installsystemd --no-enable: on a first install
	// (no state yet) only recorded; on an upgrade enabled again if the
	// administrator had enabled it.
	linkFirst := []string{
		"deb-systemd-helper debian-installed imds-agent-link.service",
		"deb-systemd-helper update-state imds-agent-link.service",
	}
	linkUpgrade := []string{
		"deb-systemd-helper debian-installed imds-agent-link.service",
		"deb-systemd-helper unmask imds-agent-link.service",
		"deb-systemd-helper --quiet was-enabled imds-agent-link.service",
		"deb-systemd-helper enable imds-agent-link.service",
		"deb-systemd-helper update-state imds-agent-link.service",
	}
	// An upgrade up to the restart: the user and the credentials directory
	// are there, both units' states are kept, the managers reread their
	// drop-ins and the new binary is asked about the config.
	upgradeState := cat([]string{
		"getent passwd imds-agent",
		"dpkg-statoverride --list /etc/imds-agent/aws",
		"deb-systemd-helper unmask imds-agent.service",
		"deb-systemd-helper --quiet was-enabled imds-agent.service",
		"deb-systemd-helper enable imds-agent.service",
	}, linkUpgrade)
	reload := ifRunning("systemctl --system daemon-reload", "networkctl reload", "nmcli general reload conf")
	upgradeChecked := cat(upgradeState, reload, ifRunning(checkConfig))
	upgrade := cat(upgradeChecked, ifRunning("deb-systemd-invoke restart imds-agent.service"))
	for _, tc := range []struct {
		name     string
		script   string
		args     []string
		stubs    []string
		exits    map[string]string
		etcUnit  string // withUnitDir's kind
		noStderr bool   // run with standard error closed
		dpkgRoot bool   // run with DPKG_ROOT set, as for a foreign root
		want     []string
		wantWarn bool
		wantOut  []string // what the script must print
	}{
		{
			name: "postinst configure, first install", script: "postinst", args: []string{"configure", ""},
			exits: map[string]string{"getent": "2", "dpkg-statoverride.--list": "1", "deb-systemd-helper.debian-installed": "1"},
			want: cat([]string{
				"getent passwd imds-agent",
				"systemd-sysusers imds-agent.conf",
				"dpkg-statoverride --list /etc/imds-agent/aws",
				"dpkg-statoverride --update --add root imds-agent 0750 /etc/imds-agent/aws",
				"deb-systemd-helper unmask imds-agent.service",
				"deb-systemd-helper --quiet was-enabled imds-agent.service",
				"deb-systemd-helper enable imds-agent.service",
			}, linkFirst, reload, ifRunning("deb-systemd-invoke start imds-agent.service")),
		},
		{
			name: "postinst configure, first install without systemd-sysusers", script: "postinst", args: []string{"configure", ""},
			stubs: withoutSysusers(), exits: map[string]string{"getent": "2", "dpkg-statoverride.--list": "1", "deb-systemd-helper.--quiet": "1", "deb-systemd-helper.debian-installed": "1"},
			want: cat([]string{
				"getent passwd imds-agent",
				"getent group imds-agent",
				"groupadd --system imds-agent",
				"useradd --system --gid imds-agent --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --comment imds-agent metadata service imds-agent",
				"dpkg-statoverride --list /etc/imds-agent/aws",
				"dpkg-statoverride --update --add root imds-agent 0750 /etc/imds-agent/aws",
				"deb-systemd-helper unmask imds-agent.service",
				"deb-systemd-helper --quiet was-enabled imds-agent.service",
				// The admin disabled it: keep it disabled.
				"deb-systemd-helper update-state imds-agent.service",
			}, linkFirst, reload, ifRunning("deb-systemd-invoke start imds-agent.service")),
		},
		{name: "postinst configure, upgrade", script: "postinst", args: []string{"configure", "0.0.0"}, want: upgrade},
		{
			// Neither unit enabled: both stay as they are.
			name: "postinst configure, upgrade, both units disabled", script: "postinst", args: []string{"configure", "0.0.0"},
			exits: map[string]string{"deb-systemd-helper.--quiet": "1"},
			want: cat([]string{
				"getent passwd imds-agent",
				"dpkg-statoverride --list /etc/imds-agent/aws",
				"deb-systemd-helper unmask imds-agent.service",
				"deb-systemd-helper --quiet was-enabled imds-agent.service",
				"deb-systemd-helper update-state imds-agent.service",
				"deb-systemd-helper debian-installed imds-agent-link.service",
				"deb-systemd-helper unmask imds-agent-link.service",
				"deb-systemd-helper --quiet was-enabled imds-agent-link.service",
				"deb-systemd-helper update-state imds-agent-link.service",
			}, reload, ifRunning(checkConfig, "deb-systemd-invoke restart imds-agent.service")),
		},
		{
			// The new binary refuses the configuration: the running agent
			// is left serving, and the package says why.
			name: "postinst configure, upgrade, the config refused", script: "postinst", args: []string{"configure", "0.0.0"},
			exits: map[string]string{"imds-agent": "1", "err:imds-agent": `config.yaml:3: log.level: "C:\cfoo" is not a level`},
			want:  upgradeChecked,
			wantOut: ifRunning("imds-agent: not restarted: this version refuses /etc/imds-agent/config.yaml",
				`config.yaml:3: log.level: "C:\cfoo" is not a level`),
		},
		{
			// The binary cannot be run: not restarted either, saying so.
			name: "postinst configure, upgrade, the binary not runnable", script: "postinst", args: []string{"configure", "0.0.0"},
			exits:   map[string]string{"imds-agent": "127"},
			want:    upgradeChecked,
			wantOut: ifRunning("could not be run to check /etc/imds-agent/config.yaml"),
		},
		{
			// A foreign root (DPKG_ROOT): this host's service is not
			// this package's to check or restart.
			name: "postinst configure, upgrade, DPKG_ROOT", script: "postinst", args: []string{"configure", "0.0.0"}, dpkgRoot: true,
			want: upgradeState,
		},
		{
			// `imds-agent install` ran before the package came.
			name: "postinst configure, upgrade, a unit file in /etc", script: "postinst", args: []string{"configure", "0.0.0"},
			etcUnit: "file", want: upgrade, wantWarn: true,
		},
		{
			// The warning must not fail the script (set -e) where it
			// cannot be printed.
			name: "postinst configure, upgrade, a unit file in /etc, no stderr", script: "postinst", args: []string{"configure", "0.0.0"},
			etcUnit: "file", noStderr: true, want: upgrade,
		},
		{
			name: "postinst configure, upgrade, the unit masked", script: "postinst", args: []string{"configure", "0.0.0"},
			etcUnit: "mask", want: upgrade,
		},
		{
			name: "postinst configure, upgrade, the unit masked by an empty file", script: "postinst", args: []string{"configure", "0.0.0"},
			etcUnit: "empty", want: upgrade,
		},
		{
			name: "postinst configure, upgrade, a unit linked in", script: "postinst", args: []string{"configure", "0.0.0"},
			etcUnit: "link", want: upgrade,
		},
		{
			name: "prerm remove", script: "prerm", args: []string{"remove"}, exits: map[string]string{"ischroot": "1"},
			want: cat(ifRunning("deb-systemd-invoke stop imds-agent.service imds-agent-link.service"), []string{
				"ischroot --default-true",
				"imds-agent cleanup --config /etc/imds-agent/config.yaml",
			}),
		},
		{
			name: "prerm remove in a chroot", script: "prerm", args: []string{"remove"}, exits: map[string]string{"ischroot": "0"},
			want: cat(ifRunning("deb-systemd-invoke stop imds-agent.service imds-agent-link.service"), []string{"ischroot --default-true"}),
		},
		{name: "prerm upgrade", script: "prerm", args: []string{"upgrade", "0.0.1"}},
		{
			name: "postrm remove", script: "postrm", args: []string{"remove"},
			want: cat(ifRunning("systemctl --system daemon-reload"), []string{"deb-systemd-helper mask imds-agent.service imds-agent-link.service"}),
		},
		{
			name: "postrm purge", script: "postrm", args: []string{"purge"},
			exits: map[string]string{"out:getent": "imds-agent:x:995:995:imds-agent metadata service:/nonexistent:/usr/sbin/nologin\n"},
			want: append(slices.Clone(purgeStart),
				"getent passwd imds-agent",
				"userdel imds-agent",
				"getent group imds-agent",
				"groupdel imds-agent",
			),
		},
		{
			// A user the administrator made before the package stays.
			name: "postrm purge, a user made before", script: "postrm", args: []string{"purge"},
			exits:   map[string]string{"out:getent": "imds-agent:x:1500:1500:Site service account:/srv/imds:/bin/bash\n"},
			want:    append(slices.Clone(purgeStart), "getent passwd imds-agent"),
			wantOut: []string{"kept the user imds-agent and its group"},
		},
		{
			name: "postrm purge, no user", script: "postrm", args: []string{"purge"},
			exits: map[string]string{"getent": "2"},
			want:  append(slices.Clone(purgeStart), "getent passwd imds-agent"),
		},
		{name: "postrm upgrade", script: "postrm", args: []string{"upgrade", "0.0.1"}},
	} {
		t.Run(tc.name+", systemd "+state, func(t *testing.T) {
			s := tc.stubs
			if s == nil {
				s = stubs
			}
			// The packaged binary, by its path, is the stub.
			text := strings.ReplaceAll(script(tc.script), "/usr/bin/imds-agent ", "imds-agent ")
			text = strings.ReplaceAll(text, "/run/systemd/system", runDir)
			if tc.dpkgRoot {
				text = "DPKG_ROOT=/target\n" + text
			}
			text, warning := withUnitDir(t, text, tc.etcUnit)
			if tc.noStderr {
				text = "exec 2>&-\n" + text
			}
			got, out := runScript(t, text, s, tc.exits, tc.args...)
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("programs run (-want +got):\n%s", d)
			}
			if warned := strings.Contains(out, warning); warned != tc.wantWarn {
				t.Errorf("warned about a unit in /etc: %v, want %v; printed:\n%s", warned, tc.wantWarn, out)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("printed:\n%s\nwant %q", out, w)
				}
			}
		})
	}
}

// TestRPMScriptletsRun does the same for the .rpm's scriptlets, on a host
// without Fedora's systemd-update-helper (Debian has none), so the scripts
// take the branches of the older macro expansions.
func TestRPMScriptletsRun(t *testing.T) {
	need(t, "rpm", "unshare")
	needRoot(t)
	if _, err := os.Stat("/usr/lib/systemd/systemd-update-helper"); err == nil {
		t.Skip("this host has systemd-update-helper; its branches are checked by TestRPMScripts")
	}
	script := func(tag string) string {
		return rpmQuery(t, pkgs.rpm1, "--qf", "%{"+tag+"}")
	}
	stubs := []string{"getent", "systemd-sysusers", "groupadd", "useradd", "systemctl", "networkctl", "nmcli", "imds-agent"}
	// Each scriptlet runs as on a host where systemd runs and as in a
	// chroot or container where it does not, whatever this host is: the
	// scriptlets' test for it, [ -d /run/systemd/system ], is pointed at a
	// directory that exists or not.
	for _, running := range []bool{false, true} {
		testRPMScriptlets(t, script, stubs, running)
	}
}

func testRPMScriptlets(t *testing.T, script func(tag string) string, stubs []string, running bool) {
	runDir := filepath.Join(t.TempDir(), "run-systemd-system")
	state := "stopped"
	if running {
		mkdirAll(t, runDir)
		state = "running"
	}
	pick := func(stopped, started []string) []string {
		if running {
			return started
		}
		return stopped
	}
	postUpgrade := pick(nil, []string{"networkctl reload", "nmcli general reload conf"})
	for _, tc := range []struct {
		name, tag string
		arg       string
		stubs     []string
		exits     map[string]string
		etcUnit   string // withUnitDir's kind
		want      []string
		wantWarn  bool
		wantOut   []string // what the scriptlet must print
	}{
		{
			name: "%pre install", tag: "PREIN", arg: "1",
			want: []string{
				"systemd-sysusers --replace=/usr/lib/sysusers.d/imds-agent.conf -",
				`u imds-agent - "imds-agent metadata service" /nonexistent /usr/sbin/nologin`,
				"getent passwd imds-agent",
			},
		},
		{
			name: "%pre install without systemd-sysusers", tag: "PREIN", arg: "1",
			stubs: []string{"getent", "groupadd", "useradd"}, exits: map[string]string{"getent": "2"},
			want: []string{
				"getent passwd imds-agent",
				"getent group imds-agent",
				"groupadd -r imds-agent",
				"useradd -r -g imds-agent -M -d /nonexistent -s /usr/sbin/nologin -c imds-agent metadata service imds-agent",
			},
		},
		{
			name: "%post install", tag: "POSTIN", arg: "1",
			want: pick([]string{"systemctl --no-reload preset imds-agent.service"},
				// The drop-ins are read before the agent starts and creates imds0.
				[]string{"networkctl reload", "nmcli general reload conf", "systemctl --no-reload preset imds-agent.service",
					"systemctl -q is-enabled imds-agent.service", "systemctl --no-block start imds-agent.service"}),
		},
		{
			// An administrator's preset said disable: enabled it is not,
			// so it is not started either.
			name: "%post install, preset disabled", tag: "POSTIN", arg: "1", exits: map[string]string{"systemctl": "1"},
			want: pick([]string{"systemctl --no-reload preset imds-agent.service"},
				[]string{"networkctl reload", "nmcli general reload conf", "systemctl --no-reload preset imds-agent.service",
					"systemctl -q is-enabled imds-agent.service"}),
		},
		{name: "%post upgrade", tag: "POSTIN", arg: "2", want: postUpgrade},
		{name: "%post upgrade, a unit file in /etc", tag: "POSTIN", arg: "2", etcUnit: "file", want: postUpgrade, wantWarn: true},
		{name: "%post upgrade, the unit masked", tag: "POSTIN", arg: "2", etcUnit: "mask", want: postUpgrade},
		{name: "%post upgrade, the unit masked by an empty file", tag: "POSTIN", arg: "2", etcUnit: "empty", want: postUpgrade},
		{name: "%post upgrade, a unit linked in", tag: "POSTIN", arg: "2", etcUnit: "link", want: postUpgrade},
		{
			// PID 1's root is this root: not a chroot.
			name: "%preun erase", tag: "PREUN", arg: "0",
			stubs: append(append([]string(nil), stubs...), "stat"), exits: map[string]string{"out:stat": "2049:2\n"},
			want: []string{
				pick([]string{"systemctl --no-reload disable imds-agent.service imds-agent-link.service"}, []string{"systemctl --no-reload disable --now imds-agent.service imds-agent-link.service"})[0],
				"stat -c %d:%i /proc/1/root/.",
				"stat -c %d:%i /",
				"imds-agent cleanup --config /etc/imds-agent/config.yaml",
			},
		},
		{
			// PID 1's root cannot be read, so a chroot cannot be ruled out:
			// the link stays.
			name: "%preun erase, chroot unknown", tag: "PREUN", arg: "0",
			stubs: append(append([]string(nil), stubs...), "stat"), exits: map[string]string{"stat": "1"},
			want: []string{
				pick([]string{"systemctl --no-reload disable imds-agent.service imds-agent-link.service"}, []string{"systemctl --no-reload disable --now imds-agent.service imds-agent-link.service"})[0],
				"stat -c %d:%i /proc/1/root/.",
			},
		},
		{name: "%preun upgrade", tag: "PREUN", arg: "1"},
		{
			name: "%postun upgrade", tag: "POSTUN", arg: "1",
			want: pick(nil, []string{"systemctl daemon-reload", checkConfig, "systemctl try-restart imds-agent.service"}),
		},
		{
			// The new binary refuses the configuration: the running agent
			// is left serving, and the package says why.
			name: "%postun upgrade, the config refused", tag: "POSTUN", arg: "1",
			exits:   map[string]string{"imds-agent": "1", "err:imds-agent": "config.yaml:3: unknown key"},
			want:    pick(nil, []string{"systemctl daemon-reload", checkConfig}),
			wantOut: pick(nil, []string{"imds-agent: not restarted: this version refuses /etc/imds-agent/config.yaml", "config.yaml:3: unknown key"}),
		},
		{name: "%postun erase", tag: "POSTUN", arg: "0"},
	} {
		t.Run(tc.name+", systemd "+state, func(t *testing.T) {
			s := tc.stubs
			if s == nil {
				s = stubs
			}
			text := script(tc.tag)
			if strings.TrimSpace(text) == "" || text == "(none)" {
				t.Fatalf("no %s scriptlet", tc.tag)
			}
			text = strings.ReplaceAll(text, "/run/systemd/system", runDir)
			text = strings.ReplaceAll(text, "/usr/bin/imds-agent ", "imds-agent ") // the packaged binary, by its path, is the stub
			text, warning := withUnitDir(t, text, tc.etcUnit)
			got, out := runScript(t, text, s, tc.exits, tc.arg)
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("programs run (-want +got):\n%s", d)
			}
			if warned := strings.Contains(out, warning); warned != tc.wantWarn {
				t.Errorf("warned about a unit in /etc: %v, want %v; printed:\n%s", warned, tc.wantWarn, out)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("printed:\n%s\nwant %q", out, w)
				}
			}
		})
	}
}

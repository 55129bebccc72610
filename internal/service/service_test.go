package service

import (
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	kservice "github.com/kardianos/service"

	"github.com/imds-agent/imds-agent/systemd"
)

// installedText is the unit install writes for the binary at exe.
func installedText(exe string) string {
	return strings.ReplaceAll(UnitTemplate(), "{{Path | cmdEscape}}", exe)
}

func TestUnitTemplateIsThePackagedUnit(t *testing.T) {
	tmpl := UnitTemplate()
	got := installedText(systemd.BinaryPath)
	if n := strings.Count(got, "\n"+installedMark+"\n"); n != 1 {
		t.Errorf("the template holds the mark of an installed unit %d times, want once", n)
	}
	if got = strings.Replace(got, installedMark+"\n", "", 1); got != systemd.Unit {
		t.Errorf("the template with the packaged binary path and without its mark is not the packaged unit:\n%s", cmp.Diff(systemd.Unit, got))
	}
	if n, want := strings.Count(tmpl, "{{"), strings.Count(systemd.Unit, systemd.BinaryPath); n != want || n < 2 {
		t.Errorf("%d template actions, want one per binary path in the unit (%d)", n, want)
	}
}

// fakeService records the calls Control makes to kardianos/service, and
// writes and removes the unit as it would.
type fakeService struct {
	platform string
	calls    []string
	cfg      *kservice.Config
	unit     string
}

func (f *fakeService) Run() error     { f.calls = append(f.calls, "run"); return nil }
func (f *fakeService) Start() error   { f.calls = append(f.calls, "start"); return nil }
func (f *fakeService) Stop() error    { f.calls = append(f.calls, "stop"); return nil }
func (f *fakeService) Restart() error { f.calls = append(f.calls, "restart"); return nil }
func (f *fakeService) Install() error {
	f.calls = append(f.calls, "install")
	if err := os.MkdirAll(filepath.Dir(f.unit), 0o755); err != nil {
		return err
	}
	return os.WriteFile(f.unit, []byte(installedText(f.cfg.Executable)), 0o644)
}

func (f *fakeService) Uninstall() error {
	f.calls = append(f.calls, "uninstall")
	return os.Remove(f.unit)
}
func (f *fakeService) Logger(chan<- error) (kservice.Logger, error) {
	return nil, nil
}
func (f *fakeService) SystemLogger(chan<- error) (kservice.Logger, error) {
	return nil, nil
}
func (f *fakeService) String() string                   { return "imds-agent" }
func (f *fakeService) Platform() string                 { return f.platform }
func (f *fakeService) Status() (kservice.Status, error) { return kservice.StatusUnknown, nil }

// fakeHost is a host rooted in a temporary directory, with systemd
// running, as root, and a fake service manager.
type fakeHost struct {
	*host
	dir   string
	svc   *fakeService
	users []string // sysusers files createUser was given
}

func newFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	dir := t.TempDir()
	f := &fakeHost{dir: dir, svc: &fakeService{platform: "linux-systemd"}}
	mkdir(t, filepath.Join(dir, "run/systemd/system"))
	mkdir(t, filepath.Join(dir, "etc"))
	f.svc.unit = filepath.Join(dir, "etc/systemd/system", systemd.UnitName)
	f.host = &host{
		etc:            filepath.Join(dir, "etc"),
		unit:           filepath.Join(dir, "etc/systemd/system", systemd.UnitName),
		packagedUnits:  []string{filepath.Join(dir, "usr/lib/systemd/system", systemd.UnitName), filepath.Join(dir, "lib/systemd/system", systemd.UnitName)},
		systemdRuntime: filepath.Join(dir, "run/systemd/system"),
		euid:           func() int { return 0 },
		createUser: func(file string, _ io.Writer) error {
			f.users = append(f.users, file)
			return nil
		},
		groupID: func(string) (int, error) { return os.Getgid(), nil },
		newService: func(c *kservice.Config) (kservice.Service, error) {
			f.svc.cfg = c
			return f.svc, nil
		},
	}
	return f
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestRefusesUnitNotItsOwn: a unit file in /etc/systemd/system that
// `imds-agent install` did not write (another unit, or a mask, which
// removing a package leaves) is refused by install and uninstall alike
// before anything changes: no drop-in, user or directory is written, and
// the service is neither stopped nor its unit removed.
func TestRefusesUnitNotItsOwn(t *testing.T) {
	for _, tc := range []struct {
		name    string
		action  string
		unit    func(t *testing.T, path string)
		wantErr string
	}{
		{"install over another unit", "install", func(t *testing.T, p string) { writeTestFile(t, p, "[Service]\nExecStart=/bin/true\n") }, "exists and is not a unit `imds-agent install` wrote"},
		{"install over a mask", "install", func(t *testing.T, p string) { mkdir(t, filepath.Dir(p)); os.Symlink("/dev/null", p) }, "masks the service; unmask it first"},
		{"install over an empty file", "install", func(t *testing.T, p string) { writeTestFile(t, p, "") }, "masks the service"},
		{"uninstall another unit", "uninstall", func(t *testing.T, p string) { writeTestFile(t, p, "[Service]\nExecStart=/bin/true\n") }, "exists and is not a unit `imds-agent install` wrote"},
		{"uninstall a full copy of the package's unit", "uninstall", func(t *testing.T, p string) { writeTestFile(t, p, systemd.Unit) }, "exists and is not a unit `imds-agent install` wrote"},
		{"uninstall a mask", "uninstall", func(t *testing.T, p string) { mkdir(t, filepath.Dir(p)); os.Symlink("/dev/null", p) }, "masks the service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeHost(t)
			tc.unit(t, f.unit)
			cleaned := false
			err := f.control(tc.action, Options{Executable: "/usr/local/bin/imds-agent", Cleanup: func() error { cleaned = true; return nil }})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			if len(f.svc.calls) > 0 || len(f.users) > 0 || cleaned {
				t.Errorf("acted before refusing: service calls %v, users %v, cleanup %v", f.svc.calls, f.users, cleaned)
			}
			var written []string
			_ = filepath.WalkDir(f.etc, func(path string, d fs.DirEntry, err error) error {
				if err == nil && !d.IsDir() && path != f.unit {
					written = append(written, path)
				}
				return nil
			})
			if len(written) > 0 {
				t.Errorf("wrote before refusing: %v", written)
			}
			if _, err := os.Lstat(f.unit); err != nil {
				t.Errorf("the unit is gone: %v", err)
			}
		})
	}
}

// TestRefusesLinkUnitNotItsOwn: a link unit in /etc/systemd/system that
// install did not write is refused, and left, by install and uninstall.
func TestRefusesLinkUnitNotItsOwn(t *testing.T) {
	for _, action := range []string{"install", "uninstall"} {
		f := newFakeHost(t)
		if action == "uninstall" {
			writeTestFile(t, f.unit, installedText(systemd.BinaryPath))
		}
		writeTestFile(t, f.linkUnit(), systemd.LinkUnit)
		err := f.control(action, Options{Executable: systemd.BinaryPath, Cleanup: func() error { return nil }})
		if err == nil || !strings.Contains(err.Error(), f.linkUnit()+" exists and is not a unit `imds-agent install` wrote") {
			t.Errorf("%s: %v", action, err)
		}
		if b, _ := os.ReadFile(f.linkUnit()); string(b) != systemd.LinkUnit || len(f.svc.calls) > 0 {
			t.Errorf("%s changed the link unit or called %v", action, f.svc.calls)
		}
	}
}

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		action  string
		setup   func(t *testing.T, f *fakeHost)
		exe     string
		wantErr string
	}{
		{name: "unknown action", action: "restart", wantErr: `unknown action "restart"; use one of install, uninstall, start, stop`},
		{name: "not root", action: "install", setup: func(t *testing.T, f *fakeHost) { f.euid = func() int { return 1000 } }, wantErr: "install needs root"},
		{name: "no systemd", action: "start", setup: func(t *testing.T, f *fakeHost) {
			os.Remove(f.systemdRuntime)
		}, wantErr: "systemd does not run this host"},
		{name: "packaged unit in /usr/lib", action: "install", setup: func(t *testing.T, f *fakeHost) {
			writeTestFile(t, f.packagedUnits[0], systemd.Unit)
		}, wantErr: "a package installed " + "%DIR%/usr/lib/systemd/system/imds-agent.service, so the package manages the service"},
		{name: "packaged unit in /lib", action: "install", setup: func(t *testing.T, f *fakeHost) {
			writeTestFile(t, f.packagedUnits[1], systemd.Unit)
		}, wantErr: "which would shadow the package's unit forever"},
		{name: "uninstall over a packaged unit", action: "uninstall", setup: func(t *testing.T, f *fakeHost) {
			writeTestFile(t, f.packagedUnits[0], systemd.Unit)
		}, wantErr: "uninstall: a package installed"},
		{name: "binary in a home directory", action: "install", exe: "/home/me/imds-agent", wantErr: "/home/me/imds-agent is under /home/, which the service's sandbox hides"},
		{name: "binary in /tmp", action: "install", exe: "/tmp/x/imds-agent", wantErr: "copy it to /usr/bin/imds-agent first"},
		{name: "binary path with a quote", action: "install", exe: "/opt/it's/imds-agent", wantErr: "must not hold quotes"},
		{name: "not systemd after all", action: "install", setup: func(t *testing.T, f *fakeHost) {
			f.svc.platform = "unix-systemv"
		}, wantErr: "the service manager found is unix-systemv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeHost(t)
			if tc.setup != nil {
				tc.setup(t, f)
			}
			exe := tc.exe
			if exe == "" {
				exe = "/usr/local/bin/imds-agent"
			}
			err := f.control(tc.action, Options{Executable: exe})
			want := strings.ReplaceAll(tc.wantErr, "%DIR%", f.dir)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want one containing %q", err, want)
			}
			if len(f.svc.calls) > 0 || len(f.users) > 0 {
				t.Errorf("acted before refusing: service calls %v, users %v", f.svc.calls, f.users)
			}
			if ents, _ := os.ReadDir(f.etc); len(ents) > 0 {
				t.Errorf("wrote to etc before refusing: %v", ents)
			}
		})
	}
}

func TestStartAndStopWorkWithAPackagedUnit(t *testing.T) {
	f := newFakeHost(t)
	writeTestFile(t, f.packagedUnits[0], systemd.Unit)
	for _, action := range []string{"start", "stop"} {
		if err := f.control(action, Options{Executable: "/usr/bin/imds-agent"}); err != nil {
			t.Fatal(err)
		}
	}
	if d := cmp.Diff([]string{"start", "stop"}, f.svc.calls); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
}

func TestInstallLaysOutTheHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("install gives /etc/imds-agent/aws to root: needs root")
	}
	f := newFakeHost(t)
	mkdir(t, filepath.Join(f.etc, "NetworkManager"))
	var out bytes.Buffer
	if err := f.control("install", Options{Executable: "/opt/imds agent/imds-agent", Out: &out}); err != nil {
		t.Fatal(err)
	}
	t.Log(out.String())
	if d := cmp.Diff([]string{"install"}, f.svc.calls); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
	if f.svc.cfg.Executable != "/opt/imds agent/imds-agent" || f.svc.cfg.Option["SystemdScript"] != UnitTemplate() || f.svc.cfg.Name != "imds-agent" {
		t.Errorf("service config: %+v", f.svc.cfg)
	}
	sysusers := filepath.Join(f.etc, "sysusers.d/imds-agent.conf")
	if d := cmp.Diff([]string{sysusers}, f.users); d != "" {
		t.Errorf("createUser (-want +got):\n%s", d)
	}
	for path, want := range map[string]string{
		sysusers: systemd.Sysusers,
		filepath.Join(f.etc, "systemd/network/10-imds-agent.network"):    systemd.Network,
		filepath.Join(f.etc, "NetworkManager/conf.d/90-imds-agent.conf"): systemd.NetworkManager,
		filepath.Join(f.etc, "modules-load.d/imds-agent.conf"):           systemd.ModulesLoad,
		filepath.Join(f.etc, "imds-agent/config.yaml"):                   systemd.Config,
	} {
		checkFile(t, path, want, 0o644)
	}
	checkDir(t, filepath.Join(f.etc, "imds-agent"), 0o755, 0)
	checkDir(t, filepath.Join(f.etc, "imds-agent/aws"), 0o750, os.Getgid())
	checkFile(t, f.linkUnit(), LinkUnit("/opt/imds agent/imds-agent"), 0o644)
	if !strings.Contains(LinkUnit("/opt/imds agent/imds-agent"), `ExecStart=/opt/imds\x20agent/imds-agent setup-link`) {
		t.Errorf("the link unit does not run the installed binary:\n%s", LinkUnit("/opt/imds agent/imds-agent"))
	}

	// A second install keeps the operator's config and credentials.
	cfg := filepath.Join(f.etc, "imds-agent/config.yaml")
	writeTestFile(t, cfg, "version: 1\n")
	writeTestFile(t, filepath.Join(f.etc, "imds-agent/aws/credentials"), "[default]\n")
	if err := os.Chmod(filepath.Join(f.etc, "imds-agent/aws"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The unit the first install wrote is replaced, not refused.
	out.Reset()
	if err := f.control("install", Options{Executable: "/usr/bin/imds-agent", Out: &out}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f.unit); string(b) != installedText("/usr/bin/imds-agent") || !strings.Contains(out.String(), "replaced and enabled "+f.unit) {
		t.Errorf("the earlier unit was not replaced:\n%s", out.String())
	}
	checkFile(t, cfg, "version: 1\n", 0o644)
	checkFile(t, filepath.Join(f.etc, "imds-agent/aws/credentials"), "[default]\n", 0o644)

	// A unit someone else wrote under that name is left alone.
	writeTestFile(t, f.unit, "[Unit]\nDescription=something else\n")
	if err := f.control("install", Options{Executable: "/usr/bin/imds-agent", Out: io.Discard}); err == nil || !strings.Contains(err.Error(), "move it away first") {
		t.Errorf("install over a foreign unit: %v", err)
	}
	checkFile(t, f.unit, "[Unit]\nDescription=something else\n", 0o644)
	checkDir(t, filepath.Join(f.etc, "imds-agent/aws"), 0o700, os.Getgid())
}

func TestUninstallKeepsConfigurationAndUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (install first)")
	}
	f := newFakeHost(t)
	if err := f.control("install", Options{Executable: "/usr/bin/imds-agent"}); err != nil {
		t.Fatal(err)
	}
	f.svc.calls = nil
	// The administrator enabled the link unit.
	wants := filepath.Join(f.etc, "systemd/system/multi-user.target.wants", systemd.LinkUnitName)
	mkdir(t, filepath.Dir(wants))
	if err := os.Symlink(f.linkUnit(), wants); err != nil {
		t.Fatal(err)
	}
	cleaned := 0
	var out bytes.Buffer
	err := f.control("uninstall", Options{Executable: "/usr/bin/imds-agent", Out: &out, Cleanup: func() error {
		cleaned++
		f.svc.calls = append(f.svc.calls, "cleanup")
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"stop", "cleanup", "uninstall"}, f.svc.calls); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
	for _, gone := range []string{"sysusers.d/imds-agent.conf", "systemd/network/10-imds-agent.network", "modules-load.d/imds-agent.conf",
		"systemd/system/" + systemd.LinkUnitName, "systemd/system/multi-user.target.wants/" + systemd.LinkUnitName} {
		if _, err := os.Lstat(filepath.Join(f.etc, gone)); err == nil {
			t.Errorf("uninstall left %s", gone)
		}
	}
	for _, kept := range []string{"imds-agent/config.yaml", "imds-agent/aws"} {
		if _, err := os.Stat(filepath.Join(f.etc, kept)); err != nil {
			t.Errorf("uninstall removed %s", kept)
		}
	}
	if !strings.Contains(out.String(), "userdel imds-agent") {
		t.Errorf("uninstall does not say how to remove what it kept:\n%s", out.String())
	}
	// Run again (as after an interrupted run), it finishes without a unit
	// to disable.
	f.svc.calls = nil
	writeTestFile(t, filepath.Join(f.etc, "modules-load.d/imds-agent.conf"), systemd.ModulesLoad)
	out.Reset()
	if err := f.control("uninstall", Options{Executable: "/usr/bin/imds-agent", Out: &out, Cleanup: func() error {
		f.svc.calls = append(f.svc.calls, "cleanup")
		return nil
	}}); err != nil {
		t.Fatalf("a second uninstall: %v", err)
	}
	if d := cmp.Diff([]string{"cleanup"}, f.svc.calls); d != "" || !strings.Contains(out.String(), "nothing to disable") {
		t.Errorf("a second uninstall: calls (-want +got):\n%s\nsaid:\n%s", d, out.String())
	}
	if _, err := os.Stat(filepath.Join(f.etc, "modules-load.d/imds-agent.conf")); err == nil {
		t.Error("a second uninstall left a drop-in")
	}
}

func writeTestFile(t *testing.T, path, text string) {
	t.Helper()
	mkdir(t, filepath.Dir(path))
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func checkFile(t *testing.T, path, want string, mode os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Error(err)
		return
	}
	if string(got) != want {
		t.Errorf("%s:\n%s", path, cmp.Diff(want, string(got)))
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != mode {
		t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), mode)
	}
}

func checkDir(t *testing.T, path string, mode os.FileMode, gid int) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	sys := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || st.Mode().Perm() != mode || sys.Uid != 0 || int(sys.Gid) != gid {
		t.Errorf("%s: %v %d:%d, want a directory %v 0:%d", path, st.Mode(), sys.Uid, sys.Gid, mode, gid)
	}
}

// TestUninstallHandsOverToThePackage: a package installed after
// `imds-agent install` is shadowed by the unit install wrote; uninstall
// removes that unit and says how to start the package's.
func TestUninstallHandsOverToThePackage(t *testing.T) {
	f := newFakeHost(t)
	writeTestFile(t, f.packagedUnits[0], systemd.Unit)
	writeTestFile(t, f.unit, installedText(systemd.BinaryPath))
	// The package's link unit, enabled: not install's to disable.
	packagedLink := filepath.Join(filepath.Dir(f.packagedUnits[0]), systemd.LinkUnitName)
	writeTestFile(t, packagedLink, systemd.LinkUnit)
	wants := filepath.Join(f.etc, "systemd/system/multi-user.target.wants", systemd.LinkUnitName)
	mkdir(t, filepath.Dir(wants))
	if err := os.Symlink(packagedLink, wants); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := f.control("uninstall", Options{Executable: "/usr/bin/imds-agent", Out: &out}); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"stop", "uninstall"}, f.svc.calls); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
	if !strings.Contains(out.String(), "is in charge now") || strings.Contains(out.String(), "rm -r") {
		t.Errorf("uninstall said:\n%s", out.String())
	}
	if target, err := os.Readlink(wants); err != nil || target != packagedLink {
		t.Errorf("uninstall removed the enablement of the package's link unit: %v", err)
	}
	// A unit in /etc that install did not write is not install's to remove.
	g := newFakeHost(t)
	writeTestFile(t, g.packagedUnits[0], systemd.Unit)
	for _, unit := range []string{"[Unit]\n", systemd.Unit} { // another unit; a full copy of the package's (systemctl edit --full)
		writeTestFile(t, g.unit, unit)
		if err := g.control("uninstall", Options{Executable: "/usr/bin/imds-agent", Out: io.Discard}); err == nil || !strings.Contains(err.Error(), "a package installed") {
			t.Errorf("uninstall over a foreign unit: %v", err)
		}
		if b, _ := os.ReadFile(g.unit); string(b) != unit || len(g.svc.calls) > 0 {
			t.Errorf("uninstall changed the unit or called %v", g.svc.calls)
		}
	}
}

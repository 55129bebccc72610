package service

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/imds-agent/imds-agent/systemd"
)

// helperEnv makes the test binary act as the child of
// TestKardianosInstallsThePackagedUnit instead of running tests.
const helperEnv = "IMDS_AGENT_SERVICE_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		if err := child(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestKardianosInstallsThePackagedUnit drives the real kardianos/service
// through install, start, stop and uninstall in a child process that has a
// mount namespace of its own, where /run and /etc/systemd/system are empty
// tmpfs mounts (so systemd looks present and the unit lands nowhere real)
// and `systemctl` is a stub that records its arguments. Nothing on this
// machine changes and nothing starts.
func TestKardianosInstallsThePackagedUnit(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare is not installed")
	}
	if st, err := os.Stat("/etc/systemd/system"); err != nil || !st.IsDir() {
		t.Skip("no /etc/systemd/system to mount over")
	}
	for _, tc := range []struct{ exe, inUnit string }{
		{"/usr/bin/imds-agent", "/usr/bin/imds-agent"},
		{"/opt/imds agent/bin/imds-agent", `/opt/imds\x20agent/bin/imds-agent`},
	} {
		t.Run(tc.exe, func(t *testing.T) {
			dir := t.TempDir()
			stubs := filepath.Join(dir, "bin")
			mkdir(t, stubs)
			log := filepath.Join(dir, "systemctl.log")
			stub := "#!/bin/sh\necho \"$*\" >> '" + log + "'\n[ \"$1\" = --version ] && echo 'systemd 252 (252.38-1~deb12u1)'\nexit 0\n"
			if err := os.WriteFile(filepath.Join(stubs, "systemctl"), []byte(stub), 0o755); err != nil {
				t.Fatal(err)
			}
			etc := filepath.Join(dir, "etc")
			mkdir(t, etc)
			unitCopy := filepath.Join(dir, "installed.service")

			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c",
				`mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && mount -t tmpfs tmpfs /etc/systemd/system && exec "$0"`,
				os.Args[0])
			cmd.Env = append(os.Environ(),
				helperEnv+"=1",
				"PATH="+stubs+":"+os.Getenv("PATH"),
				"CHILD_ETC="+etc,
				"CHILD_EXE="+tc.exe,
				"CHILD_UNIT_COPY="+unitCopy,
				"CHILD_PACKAGED="+filepath.Join(dir, "no-package", systemd.UnitName),
			)
			out, err := cmd.CombinedOutput()
			t.Logf("child:\n%s", out)
			if err != nil {
				t.Fatalf("child: %v", err)
			}

			got, err := os.ReadFile(unitCopy)
			if err != nil {
				t.Fatal(err)
			}
			want := installedText(tc.inUnit)
			if d := cmp.Diff(want, string(got)); d != "" {
				t.Errorf("installed unit (-want +got):\n%s", d)
			}
			if tc.exe == systemd.BinaryPath && strings.Replace(string(got), installedMark+"\n", "", 1) != systemd.Unit {
				t.Error("with the binary at /usr/bin the installed unit, but for its mark, is not byte for byte the packaged one")
			}
			link, err := os.ReadFile(unitCopy + ".link")
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(LinkUnit(tc.exe), string(link)); d != "" {
				t.Errorf("installed link unit (-want +got):\n%s", d)
			}
			verifyUnit(t, string(got), string(link), tc.exe)
			calls, err := os.ReadFile(log)
			if err != nil {
				t.Fatal(err)
			}
			var actions []string
			for _, l := range strings.Split(strings.TrimSpace(string(calls)), "\n") {
				if l != "--version" && l != "is-active imds-agent.service" {
					actions = append(actions, l)
				}
			}
			wantCalls := []string{
				"enable imds-agent.service", "daemon-reload", // install
				"enable imds-agent.service", "daemon-reload", // install again
				"start imds-agent.service",                                               // start
				"stop imds-agent.service",                                                // stop
				"stop imds-agent.service", "disable imds-agent.service", "daemon-reload", // uninstall
			}
			if d := cmp.Diff(wantCalls, actions); d != "" {
				t.Errorf("systemctl calls (-want +got):\n%s", d)
			}
		})
	}
}

// verifyUnit runs `systemd-analyze verify` on an installed unit in a scratch
// root that holds the host's units, /bin/kill and a stand-in for the binary
// at exe (verify checks that each command exists; nothing is run).
func verifyUnit(t *testing.T, unit, link, exe string) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze is not installed: not verifying the unit")
		return
	}
	root := t.TempDir()
	mkdir(t, filepath.Join(root, "usr/lib/systemd"))
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copying the host's units: %v\n%s", err, out)
	}
	os.Remove(filepath.Join(root, "usr/lib/systemd/system", systemd.UnitName)) // a packaged one, if this host has it
	os.Remove(filepath.Join(root, "usr/lib/systemd/system", systemd.LinkUnitName))
	writeTestFile(t, filepath.Join(root, "etc/systemd/system", systemd.UnitName), unit)
	writeTestFile(t, filepath.Join(root, "etc/systemd/system", systemd.LinkUnitName), link)
	writeTestFile(t, filepath.Join(root, exe), "#!/bin/sh\n")
	if err := os.Chmod(filepath.Join(root, exe), 0o755); err != nil {
		t.Fatal(err)
	}
	kill, err := os.ReadFile("/bin/kill")
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(root, "bin/kill"), string(kill))
	if err := os.Chmod(filepath.Join(root, "bin/kill"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{systemd.UnitName, systemd.LinkUnitName} {
		out, err := exec.Command("systemd-analyze", "verify", "--man=no", "--root="+root, name).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify of the installed %s: %v\n%s", name, err, out)
		}
	}
}

// child runs in the mount namespace set up by
// TestKardianosInstallsThePackagedUnit.
func child() error {
	h := systemHost()
	h.etc = os.Getenv("CHILD_ETC")
	h.packagedUnits = []string{os.Getenv("CHILD_PACKAGED")}
	h.createUser = func(string, io.Writer) error { return nil }
	h.groupID = func(string) (int, error) { return os.Getgid(), nil }
	opts := Options{Executable: os.Getenv("CHILD_EXE"), Out: os.Stdout}
	if err := h.control("install", opts); err != nil {
		return err
	}
	unit, err := os.ReadFile("/etc/systemd/system/" + systemd.UnitName)
	if err != nil {
		return err
	}
	if err := os.WriteFile(os.Getenv("CHILD_UNIT_COPY"), unit, 0o644); err != nil {
		return err
	}
	link, err := os.ReadFile("/etc/systemd/system/" + systemd.LinkUnitName)
	if err != nil {
		return err
	}
	if err := os.WriteFile(os.Getenv("CHILD_UNIT_COPY")+".link", link, 0o644); err != nil {
		return err
	}
	// Installing again (a new binary) replaces the unit instead of failing
	// on kardianos/service's "Init already exists".
	if err := h.control("install", opts); err != nil {
		return fmt.Errorf("second install: %w", err)
	}
	for _, action := range []string{"start", "stop", "uninstall"} {
		if err := h.control(action, opts); err != nil {
			return err
		}
	}
	for _, name := range []string{systemd.UnitName, systemd.LinkUnitName} {
		if _, err := os.Stat("/etc/systemd/system/" + name); err == nil {
			return fmt.Errorf("uninstall left %s", name)
		}
	}
	if err := h.control("uninstall", opts); err != nil {
		return fmt.Errorf("a second uninstall: %w", err)
	}
	return nil
}

// Package service installs, removes, starts and stops imds-agent as a
// systemd service on hosts that do not use the .deb or .rpm package
// (`imds-agent install|uninstall|start|stop`). It drives
// github.com/kardianos/service with the packaged unit (package systemd) as
// the unit template, so both ways of installing run the same hardened unit,
// and it lays out what the packages would: the service user, /etc/imds-agent
// and the drop-ins that keep systemd-networkd and NetworkManager off the
// agent's link.
package service

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	kservice "github.com/kardianos/service"

	"github.com/imds-agent/imds-agent/systemd"
)

// Actions are the actions Control accepts.
var Actions = []string{"install", "uninstall", "start", "stop"}

// Options configure Control.
type Options struct {
	// Executable is the imds-agent binary the unit runs. Default: the
	// running binary. It must be outside /home, /root, /run/user and the
	// temporary directories, which the unit's sandbox hides.
	Executable string
	// Out receives one line per step done or skipped. Default: discarded.
	Out io.Writer
	// Cleanup removes the agent's link and addresses. Uninstall calls it
	// after stopping the service: the agent keeps them when it stops, on
	// purpose. nil skips it (with a note on Out).
	Cleanup func() error
}

// Control performs one of Actions:
//
//   - install writes the packaged units to /etc/systemd/system (the binary
//     path adjusted to Executable) and enables the service, creates the user
//     imds-agent, /etc/imds-agent with the default config.yaml and an empty
//     aws/ (root:imds-agent 0750) unless they exist, and the sysusers.d,
//     networkd, NetworkManager and modules-load.d drop-ins under /etc. It
//     does not start the service.
//   - uninstall stops the service, calls Options.Cleanup, disables and
//     removes the units and the drop-ins. It keeps /etc/imds-agent (the
//     operator's configuration and credentials) and the user.
//   - start and stop start and stop the service.
//
// install and uninstall refuse, saying why, where a package installed the
// unit (/usr/lib/systemd/system/imds-agent.service): a unit in
// /etc/systemd/system would shadow the package's forever. Every action
// refuses where systemd does not run the host, and needs root.
func Control(action string, opts Options) error {
	return systemHost().control(action, opts)
}

// host is the machine Control acts on; tests substitute its parts.
type host struct {
	etc            string   // where install writes configuration and drop-ins ("/etc")
	unit           string   // the unit file kardianos/service writes
	packagedUnits  []string // unit files that mean a package manages the service
	systemdRuntime string   // exists when systemd runs the host
	euid           func() int
	// createUser creates the user imds-agent from the sysusers.d file at
	// sysusersFile; the one place this package runs a program itself.
	createUser func(sysusersFile string, out io.Writer) error
	groupID    func(name string) (int, error)
	newService func(*kservice.Config) (kservice.Service, error)
}

func systemHost() *host {
	return &host{
		etc:            "/etc",
		unit:           "/etc/systemd/system/" + systemd.UnitName,
		packagedUnits:  []string{"/usr/lib/systemd/system/" + systemd.UnitName, "/lib/systemd/system/" + systemd.UnitName},
		systemdRuntime: "/run/systemd/system",
		euid:           os.Geteuid,
		createUser:     createUser,
		groupID:        lookupGroupID,
		newService:     func(c *kservice.Config) (kservice.Service, error) { return kservice.New(noProgram{}, c) },
	}
}

func (h *host) control(action string, opts Options) error {
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	switch action {
	case "install", "uninstall", "start", "stop":
	default:
		return fmt.Errorf("unknown action %q; use one of %s", action, strings.Join(Actions, ", "))
	}
	if h.euid() != 0 {
		return fmt.Errorf("%s needs root", action)
	}
	if _, err := os.Stat(h.systemdRuntime); err != nil {
		return fmt.Errorf("%s: systemd does not run this host (%s is missing); imds-agent runs as a systemd service only", action, h.systemdRuntime)
	}
	if action == "install" || action == "uninstall" {
		if u := h.packagedUnit(); u != "" && !(action == "uninstall" && h.installedUnit()) {
			return fmt.Errorf("%s: a package installed %s, so the package manages the service: use systemctl, and apt or dnf to remove it; "+
				"`imds-agent install` would write /etc/systemd/system/%s, which would shadow the package's unit forever", action, u, systemd.UnitName)
		}
		if err := h.foreignUnit(action); err != nil {
			return err
		}
		if err := h.foreignLinkUnit(action); err != nil {
			return err
		}
	}
	exe, err := executable(opts.Executable)
	if err != nil {
		return err
	}
	svc, err := h.newService(&kservice.Config{
		Name:        "imds-agent",
		DisplayName: "imds-agent",
		Description: "EC2 instance metadata service with instance-profile credentials",
		Executable:  exe,
		Option:      kservice.KeyValue{"SystemdScript": UnitTemplate()},
	})
	if err != nil {
		return fmt.Errorf("kardianos/service: %w", err)
	}
	if p := svc.Platform(); p != "linux-systemd" {
		return fmt.Errorf("%s: the service manager found is %s; imds-agent runs as a systemd service only", action, p)
	}
	switch action {
	case "install":
		return h.install(svc, exe, opts.Out)
	case "uninstall":
		return h.uninstall(svc, opts)
	case "start":
		if err := svc.Start(); err != nil {
			return fmt.Errorf("start: %w", err)
		}
		fmt.Fprintln(opts.Out, "started imds-agent.service")
	case "stop":
		if err := svc.Stop(); err != nil {
			return fmt.Errorf("stop: %w", err)
		}
		fmt.Fprintln(opts.Out, "stopped imds-agent.service (the link and its addresses stay; `imds-agent cleanup` removes them)")
	}
	return nil
}

// installedMark is the line that tells a unit `imds-agent install` wrote
// from a copy of the package's (`systemctl edit --full` makes one), which
// uninstall must leave alone.
const installedMark = "# Written by `imds-agent install`; `imds-agent uninstall` removes it."

// marked returns unit with the mark of a unit install wrote.
func marked(unit string) string {
	return strings.Replace(unit, "\n[Unit]\n", "\n"+installedMark+"\n[Unit]\n", 1)
}

// UnitTemplate is the packaged unit as a kardianos/service template, marked
// as written by install: every mention of the packaged binary path becomes
// the installed binary's path. The unit holds no other template action
// (package systemd tests that).
func UnitTemplate() string {
	return strings.ReplaceAll(marked(systemd.Unit), systemd.BinaryPath, "{{Path | cmdEscape}}")
}

// LinkUnit is the packaged link unit as install writes it, marked, for the
// binary at exe. A space in the path is escaped as kardianos/service
// escapes it in the service unit; executable refuses the other characters
// that would need it.
func LinkUnit(exe string) string {
	return strings.ReplaceAll(marked(systemd.LinkUnit), systemd.BinaryPath, strings.ReplaceAll(exe, " ", `\x20`))
}

// executable returns the absolute path of the binary the unit will run,
// refusing places the unit's sandbox hides from the service.
func executable(path string) (string, error) {
	if path == "" {
		var err error
		if path, err = os.Executable(); err != nil {
			return "", fmt.Errorf("finding this binary: %w", err)
		}
	}
	path, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if hidden := systemd.SandboxHidden(path); hidden != "" {
		return "", fmt.Errorf("%s is under %s/, which the service's sandbox hides (ProtectHome, PrivateTmp); copy it to %s first", path, hidden, systemd.BinaryPath)
	}
	if strings.ContainsAny(path, "\n\"'\\%$") {
		return "", fmt.Errorf("%q: the binary's path must not hold quotes, backslashes, %%, $ or newlines", path)
	}
	return path, nil
}

// dropIns are the files install writes under etc, as the packages ship
// them under /usr/lib. The NetworkManager one only where NetworkManager is
// installed.
func (h *host) dropIns() []struct{ path, text string } {
	files := []struct{ path, text string }{
		{filepath.Join(h.etc, "sysusers.d", systemd.SysusersName), systemd.Sysusers},
		{filepath.Join(h.etc, "systemd/network", systemd.NetworkName), systemd.Network},
		{filepath.Join(h.etc, "modules-load.d", systemd.ModulesLoadName), systemd.ModulesLoad},
	}
	if _, err := os.Stat(filepath.Join(h.etc, "NetworkManager")); err == nil {
		files = append(files, struct{ path, text string }{filepath.Join(h.etc, "NetworkManager/conf.d", systemd.NetworkManagerName), systemd.NetworkManager})
	}
	return files
}

// packagedUnit is the unit file a package installed, or "" for none.
func (h *host) packagedUnit() string {
	for _, u := range h.packagedUnits {
		if _, err := os.Stat(u); err == nil {
			return u
		}
	}
	return ""
}

// installedUnit reports whether the unit file is one `imds-agent install`
// wrote. Where a package was installed afterwards, that unit shadows the
// package's, and uninstall is how it goes away.
func (h *host) installedUnit() bool { return writtenByInstall(h.unit) }

// linkUnit is where install writes the link unit: beside the service unit.
func (h *host) linkUnit() string { return filepath.Join(filepath.Dir(h.unit), systemd.LinkUnitName) }

// writtenByInstall reports whether the file at path is a unit install
// wrote.
func writtenByInstall(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	return strings.Contains(string(b), "\n"+installedMark+"\n")
}

// foreignUnit refuses a unit file in /etc/systemd/system that `imds-agent
// install` did not write, before anything is changed: a mask (a link to
// /dev/null, or an empty file, which removing a package leaves) or anyone
// else's unit. Install would not write over it, and uninstall must not stop
// the service and remove it.
func (h *host) foreignUnit(action string) error {
	fi, err := os.Lstat(h.unit)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if target, _ := os.Readlink(h.unit); target == "/dev/null" || (fi.Mode().IsRegular() && fi.Size() == 0) {
		return fmt.Errorf("%s: %s masks the service; unmask it first: systemctl unmask %s", action, h.unit, systemd.UnitName)
	}
	if !h.installedUnit() {
		return fmt.Errorf("%s: %s exists and is not a unit `imds-agent install` wrote; it is left alone: move it away first", action, h.unit)
	}
	return nil
}

// foreignLinkUnit refuses a link unit in /etc/systemd/system that install
// did not write, as foreignUnit does the service unit.
func (h *host) foreignLinkUnit(action string) error {
	if _, err := os.Lstat(h.linkUnit()); errors.Is(err, fs.ErrNotExist) || writtenByInstall(h.linkUnit()) {
		return nil
	}
	return fmt.Errorf("%s: %s exists and is not a unit `imds-agent install` wrote; it is left alone: move it away first", action, h.linkUnit())
}

func (h *host) install(svc kservice.Service, exe string, out io.Writer) error {
	drops := h.dropIns()
	for _, f := range drops {
		if err := writeFile(f.path, f.text, 0o644); err != nil {
			return err
		}
		fmt.Fprintln(out, "wrote", f.path)
	}
	if err := h.createUser(drops[0].path, out); err != nil {
		return fmt.Errorf("creating the user imds-agent: %w", err)
	}
	gid, err := h.groupID("imds-agent")
	if err != nil {
		return err
	}
	dir := filepath.Join(h.etc, "imds-agent")
	if err := ensureDir(dir, 0o755, 0, out); err != nil {
		return err
	}
	cfg := filepath.Join(dir, "config.yaml")
	if _, err := os.Lstat(cfg); err == nil {
		fmt.Fprintln(out, "kept", cfg)
	} else if err := writeFile(cfg, systemd.Config, 0o644); err != nil {
		return err
	} else {
		fmt.Fprintln(out, "wrote", cfg, "(no instance profile attached yet)")
	}
	if err := ensureDir(filepath.Join(dir, "aws"), 0o750, gid, out); err != nil {
		return err
	}
	// The link unit first: the daemon-reload that installing the service
	// unit makes finds it there.
	if err := writeFile(h.linkUnit(), LinkUnit(exe), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(out, "wrote", h.linkUnit())
	// kardianos/service refuses to write over a unit: one an earlier
	// install wrote is replaced (a new binary path, a newer unit), anything
	// else is left alone.
	replaced := false
	if _, err := os.Stat(h.unit); err == nil { // one of ours: foreignUnit refused any other
		if err := os.Remove(h.unit); err != nil {
			return err
		}
		replaced = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := svc.Install(); err != nil {
		return fmt.Errorf("installing the unit: %w", err)
	}
	if replaced {
		fmt.Fprintf(out, "replaced and enabled %s, running %s; restart the service to run it: imds-agent stop && imds-agent start\n", h.unit, exe)
		return nil
	}
	fmt.Fprintf(out, "installed and enabled %s, running %s\n", h.unit, exe)
	fmt.Fprintf(out, "to claim the metadata address early in boot, before the network (where nothing else needs the network's own at boot): systemctl enable %s\n", systemd.LinkUnitName)
	fmt.Fprintf(out, "next: put source credentials in %s, attach a profile in %s, then run: imds-agent start\n", filepath.Join(dir, "aws"), cfg)
	return nil
}

func (h *host) uninstall(svc kservice.Service, opts Options) error {
	out := opts.Out
	// With no unit (an earlier uninstall got this far), there is no service
	// to stop or disable: what follows is still done, so that a second run
	// finishes what an interrupted one left.
	_, err := os.Lstat(h.unit)
	hasUnit := err == nil
	if hasUnit {
		if err := svc.Stop(); err != nil {
			fmt.Fprintln(out, "stopping the service:", err)
		}
	}
	if opts.Cleanup == nil {
		fmt.Fprintln(out, "not removing the link and its addresses: run `imds-agent cleanup`")
	} else if err := opts.Cleanup(); err != nil {
		fmt.Fprintln(out, "removing the link and its addresses:", err)
	} else {
		fmt.Fprintln(out, "removed the link and its addresses")
	}
	// The link unit first, with the link that enabling it made, if the
	// administrator did: the daemon-reload that removing the service unit
	// makes forgets both.
	wants := filepath.Join(filepath.Dir(h.unit), "multi-user.target.wants", systemd.LinkUnitName)
	if target, err := os.Readlink(wants); err == nil && target == h.linkUnit() { // not one to a package's unit
		if err := os.Remove(wants); err != nil {
			return err
		}
	}
	if err := os.Remove(h.linkUnit()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if hasUnit {
		if err := svc.Uninstall(); err != nil {
			return fmt.Errorf("removing the unit: %w", err)
		}
		fmt.Fprintf(out, "disabled and removed /etc/systemd/system/%s\n", systemd.UnitName)
	} else {
		fmt.Fprintf(out, "no unit at /etc/systemd/system/%s: nothing to disable\n", systemd.UnitName)
	}
	for _, f := range h.dropIns() {
		if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if u := h.packagedUnit(); u != "" {
		fmt.Fprintf(out, "the package's unit %s is in charge now, with the same configuration and credentials: systemctl enable --now %s\n", u, systemd.UnitName)
		return nil
	}
	fmt.Fprintf(out, "kept %s (configuration and credentials) and the user imds-agent; to remove them too: rm -r %s && userdel imds-agent\n",
		filepath.Join(h.etc, "imds-agent"), filepath.Join(h.etc, "imds-agent"))
	return nil
}

// ensureDir creates dir owned by root and group gid with mode unless it
// exists; an existing one is the operator's and is left as it is.
func ensureDir(dir string, mode os.FileMode, gid int, out io.Writer) error {
	if _, err := os.Lstat(dir); err == nil {
		fmt.Fprintln(out, "kept", dir)
		return nil
	}
	if err := os.Mkdir(dir, mode); err != nil {
		return err
	}
	if err := os.Chown(dir, 0, gid); err != nil {
		return err
	}
	if err := os.Chmod(dir, mode); err != nil { // Mkdir's mode is masked by the umask
		return err
	}
	fmt.Fprintf(out, "created %s (%#o, root:%d)\n", dir, mode, gid)
	return nil
}

// writeFile writes text to path atomically, creating the directory.
func writeFile(path, text string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(text); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// createUser creates the user imds-agent with systemd-sysusers from the
// sysusers.d file, or with groupadd and useradd where systemd-sysusers is
// missing. This is the exception to "no os/exec" in style.md.
func createUser(sysusersFile string, out io.Writer) error {
	if _, err := user.Lookup("imds-agent"); err == nil {
		fmt.Fprintln(out, "kept the user imds-agent")
		return nil
	}
	var cmds [][]string
	if path, err := exec.LookPath("systemd-sysusers"); err == nil {
		cmds = [][]string{{path, sysusersFile}}
	} else {
		if _, err := user.LookupGroup("imds-agent"); err != nil {
			cmds = append(cmds, []string{"groupadd", "--system", "imds-agent"})
		}
		cmds = append(cmds, []string{"useradd", "--system", "--gid", "imds-agent", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment", "imds-agent metadata service", "imds-agent"})
	}
	for _, c := range cmds {
		if b, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, strings.TrimSpace(string(b)))
		}
	}
	fmt.Fprintln(out, "created the user imds-agent")
	return nil
}

func lookupGroupID(name string) (int, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}

// noProgram satisfies kardianos/service's Interface: Control only manages
// the service; `imds-agent run` is the program.
type noProgram struct{}

func (noProgram) Start(kservice.Service) error { return nil }
func (noProgram) Stop(kservice.Service) error  { return nil }

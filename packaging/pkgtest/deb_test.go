package pkgtest

import (
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	policyRCD   = "/usr/sbin/policy-rc.d"
	configPath  = "/etc/imds-agent/config.yaml"
	awsDir      = "/etc/imds-agent/aws"
	credentials = "/etc/imds-agent/aws/credentials"
	dpkgTimeout = 3 * time.Minute
)

func goarch() string { return runtime.GOARCH }

// dpkg runs dpkg in a network namespace of its own, so that even a
// maintainer script gone wrong (a start that ignored policy-rc.d, the
// cleanup command) could only touch an empty network, never this machine's.
func dpkg(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runIn(t, dpkgTimeout, []string{"DEBIAN_FRONTEND=noninteractive"},
		"unshare", append([]string{"--net", "--", "dpkg"}, args...)...)
	if err != nil {
		t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("dpkg %s:\n%s", strings.Join(args, " "), out)
	return out
}

// TestDebLifecycle installs the .deb on this machine with service starts
// refused by policy-rc.d, checks what it installed, upgrades it over an
// edited config, removes and purges it, and checks that nothing is left and
// that the service never ran. It refuses to run where imds-agent is already
// installed, and purges what it installed even when it fails.
func TestDebLifecycle(t *testing.T) {
	need(t, "dpkg", "dpkg-deb", "unshare", "setpriv", "getent")
	needRoot(t)
	if out, err := run(t, time.Minute, "dpkg-query", "-W", "-f", "${db:Status-Status}", "imds-agent"); err == nil && out != "not-installed" {
		t.Fatalf("imds-agent is on this machine already (%s); this test installs and purges it, so it leaves the machine alone", out)
	}
	for _, p := range []string{"/etc/imds-agent", "/usr/bin/imds-agent"} {
		if exists(p) {
			t.Fatalf("%s exists already; this test would remove it", p)
		}
	}
	if _, err := run(t, time.Minute, "getent", "passwd", "imds-agent"); err == nil {
		t.Fatal("the user imds-agent exists already; this test would remove it")
	}

	addrsBefore := hostAddrs(t)
	denyServiceStarts(t)
	t.Cleanup(func() { purgeLeftovers(t) }) // runs before policy-rc.d is restored

	// What the package holds, and what of it the machine had before.
	var shipped []string
	for _, l := range lines(mustRun(t, time.Minute, "dpkg-deb", "-c", pkgs.deb1)) {
		f := strings.Fields(l)
		p := strings.TrimSuffix(strings.TrimPrefix(f[len(f)-1], "."), "/")
		if p != "" {
			shipped = append(shipped, p)
		}
	}
	hadBefore := map[string]bool{}
	for _, p := range shipped {
		hadBefore[p] = exists(p)
	}

	t.Run("install", func(t *testing.T) {
		dpkg(t, "-i", pkgs.deb1)
		if got := mustRun(t, time.Minute, "dpkg-query", "-W", "-f", "${Status} ${Version}", "imds-agent"); got != "install ok installed "+version1+"-1" {
			t.Errorf("dpkg-query: %q", got)
		}
		checkInstalled(t)
		if out := mustRun(t, time.Minute, "/usr/bin/imds-agent", "version"); !strings.Contains(out, "imds-agent "+version1+" ") {
			t.Errorf("imds-agent version: %q, want version %s", out, version1)
		}
		checkNeverStarted(t, addrsBefore)
	})
	if t.Failed() {
		return
	}

	t.Run("installed units verify", func(t *testing.T) {
		need(t, "systemd-analyze")
		for _, unit := range []string{"imds-agent.service", "imds-agent-link.service"} {
			out, err := run(t, time.Minute, "systemd-analyze", "verify", "--man=no", "/usr/lib/systemd/system/"+unit)
			if err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
			}
		}
	})

	t.Run("upgrade keeps the edited config and the credentials", func(t *testing.T) {
		appendFile(t, configPath, "log:\n  level: debug\n")
		writeFile(t, credentials, "[default]\naws_access_key_id = AKIAEXAMPLEEXAMPLE00\n", 0o640)
		uid := userField(t, 2)
		dpkg(t, "-i", pkgs.deb2)
		if got := mustRun(t, time.Minute, "dpkg-query", "-W", "-f", "${Version}", "imds-agent"); got != version2+"-1" {
			t.Errorf("after upgrade: version %q, want %s-1", got, version2)
		}
		if out := mustRun(t, time.Minute, "/usr/bin/imds-agent", "version"); !strings.Contains(out, "imds-agent "+version2+" ") {
			t.Errorf("imds-agent version after upgrade: %q", out)
		}
		if data, _ := os.ReadFile(configPath); !strings.HasSuffix(string(data), "log:\n  level: debug\n") {
			t.Errorf("the upgrade replaced the edited %s", configPath)
		}
		for _, p := range []string{configPath + ".dpkg-new", configPath + ".dpkg-dist", configPath + ".dpkg-old"} {
			if exists(p) {
				t.Errorf("the upgrade left %s", p)
			}
		}
		if data, _ := os.ReadFile(credentials); !strings.Contains(string(data), "AKIAEXAMPLEEXAMPLE00") {
			t.Errorf("the upgrade changed %s", credentials)
		}
		checkFile(t, awsDir, 0o750, 0, groupID(t), true)
		if got := userField(t, 2); got != uid {
			t.Errorf("the upgrade changed the user's uid from %s to %s", uid, got)
		}
		out := asUser(t, "imds-agent", "/usr/bin/imds-agent", "check-config", "--config", configPath)
		if !strings.Contains(out, "level: debug") {
			t.Errorf("check-config as imds-agent does not show the edit:\n%s", out)
		}
		// Run by root, check-config judges the files as the service user
		// would read them: root's own group is not the service's.
		if err := os.Chown(credentials, 0, 0); err != nil {
			t.Fatal(err)
		}
		if out, err := run(t, time.Minute, "/usr/bin/imds-agent", "check-config", "--config", configPath); err == nil ||
			!strings.Contains(out, credentials+" cannot be read by user imds-agent, as whom the agent runs") {
			t.Errorf("check-config as root with %s root:root 0640: %v\n%s", credentials, err, out)
		}
		if err := os.Chown(credentials, 0, int(groupID(t))); err != nil {
			t.Fatal(err)
		}
		mustRun(t, time.Minute, "/usr/bin/imds-agent", "check-config", "--config", configPath)
		checkNeverStarted(t, addrsBefore)
	})

	t.Run("remove keeps configuration, credentials and user", func(t *testing.T) {
		dpkg(t, "-r", "imds-agent")
		for _, p := range []string{"/usr/bin/imds-agent", "/usr/lib/systemd/system/imds-agent.service"} {
			if exists(p) {
				t.Errorf("remove left %s", p)
			}
		}
		for _, p := range []string{configPath, credentials} {
			if !exists(p) {
				t.Errorf("remove deleted %s", p)
			}
		}
		if _, err := run(t, time.Minute, "getent", "passwd", "imds-agent"); err != nil {
			t.Errorf("remove deleted the user")
		}
		checkNeverStarted(t, addrsBefore)
	})

	t.Run("purge leaves nothing", func(t *testing.T) {
		dpkg(t, "--purge", "imds-agent")
		if out, err := run(t, time.Minute, "dpkg-query", "-W", "-f", "${db:Status-Status}", "imds-agent"); err == nil && out != "not-installed" {
			t.Errorf("after purge dpkg-query says %q", out)
		}
		for _, p := range shipped {
			if !hadBefore[p] && exists(p) {
				t.Errorf("purge left %s", p)
			}
		}
		checkNothingLeft(t)
		checkNeverStarted(t, addrsBefore)
	})
}

// checkInstalled checks the files, owners and modes after an install.
func checkInstalled(t *testing.T) {
	t.Helper()
	gid := groupID(t)
	for _, tc := range []struct {
		path  string
		mode  os.FileMode
		gid   uint32
		isDir bool
	}{
		{path: "/usr/bin/imds-agent", mode: 0o755},
		{path: "/usr/lib/systemd/system/imds-agent.service", mode: 0o644},
		{path: "/usr/lib/systemd/system/imds-agent-link.service", mode: 0o644},
		{path: "/usr/lib/sysusers.d/imds-agent.conf", mode: 0o644},
		{path: "/usr/lib/systemd/network/10-imds-agent.network", mode: 0o644},
		{path: "/usr/lib/NetworkManager/conf.d/90-imds-agent.conf", mode: 0o644},
		{path: "/usr/lib/modules-load.d/imds-agent.conf", mode: 0o644},
		{path: "/etc/imds-agent", mode: 0o755, isDir: true},
		{path: configPath, mode: 0o644},
		{path: awsDir, mode: 0o750, gid: gid, isDir: true},
		{path: "/usr/share/doc/imds-agent/copyright", mode: 0o644},
		{path: "/usr/share/doc/imds-agent/changelog.Debian.gz", mode: 0o644},
		{path: "/usr/share/doc/imds-agent/THIRD_PARTY_NOTICES", mode: 0o644},
	} {
		checkFile(t, tc.path, tc.mode, 0, tc.gid, tc.isDir)
	}
	// The licences of what the binary links: the AWS SDK's NOTICE among them.
	if notices, err := os.ReadFile("/usr/share/doc/imds-agent/THIRD_PARTY_NOTICES"); err != nil ||
		!strings.Contains(string(notices), "\ngithub.com/aws/aws-sdk-go-v2 v") || !strings.Contains(string(notices), "-- NOTICE.txt --") {
		t.Errorf("THIRD_PARTY_NOTICES lacks the AWS SDK's licence and notice (%v)", err)
	}
	if ents, err := os.ReadDir(awsDir); err != nil || len(ents) != 0 {
		t.Errorf("%s is not an empty directory: %v %v", awsDir, ents, err)
	}
	if got := strings.TrimSpace(mustRun(t, time.Minute, "dpkg-statoverride", "--list", awsDir)); got != "root imds-agent 750 "+awsDir {
		t.Errorf("statoverride: %q", got)
	}
	if got := strings.TrimSpace(mustRun(t, time.Minute, "cat", "/var/lib/dpkg/info/imds-agent.conffiles")); got != configPath {
		t.Errorf("conffiles: %q", got)
	}

	// The user: a system account without home or shell.
	pw := strings.Split(strings.TrimSpace(mustRun(t, time.Minute, "getent", "passwd", "imds-agent")), ":")
	if uid, _ := strconv.Atoi(pw[2]); uid <= 0 || uid >= 1000 {
		t.Errorf("uid %d is not a system uid", uid)
	}
	if pw[5] != "/nonexistent" || pw[6] != "/usr/sbin/nologin" || exists("/nonexistent") {
		t.Errorf("user: %q; want home /nonexistent (absent) and shell /usr/sbin/nologin", pw)
	}

	// The service user reads the config and the credentials directory;
	// other users do not get into the latter.
	asUser(t, "imds-agent", "/usr/bin/imds-agent", "check-config", "--config", configPath)
	asUser(t, "imds-agent", "/bin/ls", "-a", awsDir)
	if out, err := run(t, time.Minute, "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/bin/ls", awsDir); err == nil {
		t.Errorf("nobody can list %s:\n%s", awsDir, out)
	}

	// Enabled (deb-systemd-helper works without a running systemd), and
	// the policy-rc.d refusal is what kept it from starting.
	if target, err := os.Readlink("/etc/systemd/system/multi-user.target.wants/imds-agent.service"); err != nil ||
		!strings.HasSuffix(target, "/systemd/system/imds-agent.service") {
		t.Errorf("not enabled: multi-user.target.wants/imds-agent.service -> %q, %v", target, err)
	}
}

func checkFile(t *testing.T, path string, mode os.FileMode, uid, gid uint32, isDir bool) {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode().Perm() != mode || st.IsDir() != isDir || sys.Uid != uid || sys.Gid != gid {
		t.Errorf("%s: %v %d:%d, want %v (dir %v) %d:%d", path, st.Mode(), sys.Uid, sys.Gid, mode, isDir, uid, gid)
	}
}

// checkNothingLeft checks that no trace of the package, its user or its
// unit's enablement remains.
func checkNothingLeft(t *testing.T) {
	t.Helper()
	if exists("/etc/imds-agent") {
		t.Error("purge left /etc/imds-agent")
	}
	for _, db := range []string{"passwd", "group", "shadow", "gshadow"} {
		if out, err := run(t, time.Minute, "getent", db, "imds-agent"); err == nil {
			t.Errorf("purge left imds-agent in %s: %s", db, out)
		}
	}
	if out, _ := run(t, time.Minute, "dpkg-statoverride", "--list", awsDir); strings.TrimSpace(out) != "" {
		t.Errorf("purge left the statoverride: %s", out)
	}
	for _, dir := range []string{"/etc/systemd", "/var/lib/systemd", "/run/systemd", "/var/lib/dpkg/info"} {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && strings.Contains(d.Name(), "imds-agent") {
				t.Errorf("purge left %s", p)
			}
			return nil
		})
	}
}

// checkNeverStarted proves the agent never ran: no process runs the
// installed binary, and this machine's network has no imds0 link and no
// address it did not have before.
func checkNeverStarted(t *testing.T, addrsBefore map[string]bool) {
	t.Helper()
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		if exe, err := os.Readlink("/proc/" + p.Name() + "/exe"); err == nil && strings.HasPrefix(exe, "/usr/bin/imds-agent") {
			t.Errorf("process %s runs %s", p.Name(), exe)
		}
	}
	if _, err := net.InterfaceByName("imds0"); err == nil {
		t.Error("the link imds0 exists in this machine's network namespace")
	}
	for a := range hostAddrs(t) {
		if !addrsBefore[a] {
			t.Errorf("address %s appeared on this machine", a)
		}
	}
}

func hostAddrs(t *testing.T) map[string]bool {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, a := range addrs {
		m[a.String()] = true
	}
	return m
}

// denyServiceStarts installs a policy-rc.d that refuses every action
// (exit 101), keeping any existing one aside, and restores it at the end.
func denyServiceStarts(t *testing.T) {
	t.Helper()
	backup := policyRCD + ".imds-agent-test"
	if exists(backup) {
		t.Fatalf("%s exists: an earlier run did not finish; restore it to %s by hand", backup, policyRCD)
	}
	had := exists(policyRCD)
	if had {
		if err := os.Rename(policyRCD, backup); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		os.Remove(policyRCD)
		if had {
			if err := os.Rename(backup, policyRCD); err != nil {
				t.Errorf("restoring %s: %v", policyRCD, err)
			}
		}
	})
	writeFile(t, policyRCD, "#!/bin/sh\n# imds-agent package test: no service may start.\nexit 101\n", 0o755)
}

// purgeLeftovers undoes the install whatever state the test stopped in.
func purgeLeftovers(t *testing.T) {
	out, _ := runIn(t, dpkgTimeout, []string{"DEBIAN_FRONTEND=noninteractive"},
		"unshare", "--net", "--", "dpkg", "--purge", "imds-agent")
	if t.Failed() {
		t.Logf("cleanup: dpkg --purge imds-agent:\n%s", out)
	}
	if _, err := run(t, time.Minute, "getent", "passwd", "imds-agent"); err == nil {
		run(t, time.Minute, "userdel", "imds-agent")
	}
	if _, err := run(t, time.Minute, "getent", "group", "imds-agent"); err == nil {
		run(t, time.Minute, "groupdel", "imds-agent")
	}
	if out, _ := run(t, time.Minute, "dpkg-statoverride", "--list", awsDir); strings.TrimSpace(out) != "" {
		run(t, time.Minute, "dpkg-statoverride", "--remove", awsDir)
	}
	os.RemoveAll("/etc/imds-agent")
}

func asUser(t *testing.T, name string, argv ...string) string {
	t.Helper()
	args := append([]string{"--reuid=" + name, "--regid=" + name, "--init-groups"}, argv...)
	return mustRun(t, time.Minute, "setpriv", args...)
}

func userField(t *testing.T, i int) string {
	t.Helper()
	return strings.Split(strings.TrimSpace(mustRun(t, time.Minute, "getent", "passwd", "imds-agent")), ":")[i]
}

func groupID(t *testing.T) uint32 {
	t.Helper()
	f := strings.Split(strings.TrimSpace(mustRun(t, time.Minute, "getent", "group", "imds-agent")), ":")
	gid, err := strconv.Atoi(f[2])
	if err != nil {
		t.Fatal(err)
	}
	return uint32(gid)
}

func writeFile(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

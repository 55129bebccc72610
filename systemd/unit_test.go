package systemd

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/imds-agent/imds-agent/internal/config"
)

// maxExposure is the highest `systemd-analyze security` score the unit may
// have. With CAP_NET_BIND_SERVICE and AF_NETLINK kept, 1.5 is the floor on
// systemd 252 (see docs/platform-notes.md).
const maxExposure = 1.5

func TestConfigIsValidWithNoRole(t *testing.T) {
	c, err := config.Parse("config.yaml", []byte(Config))
	if err != nil {
		t.Fatalf("the packaged config does not validate:\n%v", err)
	}
	if c.Credentials.InstanceProfile != "" || c.Credentials.RoleARN != "" {
		t.Errorf("the packaged config attaches a role (instance_profile %q, role_arn %q); it must attach none",
			c.Credentials.InstanceProfile, c.Credentials.RoleARN)
	}
	if c.Listen.Link != config.DefaultLink {
		t.Errorf("the packaged config manages link %q; the drop-ins name %q", c.Listen.Link, config.DefaultLink)
	}
}

// TestExamplesInConfigAreValid uncomments each commented example block in
// the packaged config and checks that the result still validates, so the
// comments never teach an operator a key the agent rejects.
func TestExamplesInConfigAreValid(t *testing.T) {
	for _, section := range []string{"instance", "credentials", "metadata_options", "listen", "access", "log", "metrics"} {
		t.Run(section, func(t *testing.T) {
			text := uncomment(t, Config, section)
			if section == "credentials" {
				// The block shows two alternatives; keep one.
				text = regexp.MustCompile(`(?m)^  role_arn: .*\n`).ReplaceAllString(text, "")
			}
			if _, err := config.Parse("config.yaml", []byte(text)); err != nil {
				t.Fatalf("with %s uncommented:\n%v\n\n%s", section, err, text)
			}
		})
	}
}

// uncomment removes the leading "#" from the block that starts at
// "#section:" and runs to the next blank line.
func uncomment(t *testing.T, text, section string) string {
	t.Helper()
	var out []string
	in := false
	found := false
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "#"+section+":" {
			in, found = true, true
		}
		if in && line == "" {
			in = false
		}
		if in {
			line = strings.TrimPrefix(line, "#")
		}
		out = append(out, line)
	}
	if !found {
		t.Fatalf("no commented %q block in config.yaml", section)
	}
	return strings.Join(out, "\n") + "\n"
}

// unitLines returns the set of a unit's lines, comments left out.
func unitLines(unit string) map[string]bool {
	lines := map[string]bool{}
	for _, l := range strings.Split(unit, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines[l] = true
		}
	}
	return lines
}

// TestLinkUnitContract: the link unit, once enabled, claims the address
// before the network is configured, once per boot, with netlink alone, and
// keeps it when stopped, as the service does; the service does not pull it
// in.
func TestLinkUnitContract(t *testing.T) {
	lines := unitLines(LinkUnit)
	for _, want := range []string{
		"DefaultDependencies=no",
		"After=systemd-modules-load.service local-fs.target",
		"Wants=network-pre.target",
		"Before=network-pre.target imds-agent.service shutdown.target",
		"Conflicts=shutdown.target",
		"Type=oneshot",
		"RemainAfterExit=yes",
		"ExecStart=" + BinaryPath + " setup-link --config " + config.DefaultPath,
		"CapabilityBoundingSet=CAP_NET_ADMIN",
		"RestrictAddressFamilies=AF_NETLINK AF_UNIX",
		"WantedBy=multi-user.target",
	} {
		if !lines[want] {
			t.Errorf("the link unit lacks %q", want)
		}
	}
	for l := range lines {
		if strings.HasPrefix(l, "ExecStop") {
			t.Errorf("the link unit has %q: the address must stay", l)
		}
	}
	for l := range unitLines(Unit) {
		if (strings.HasPrefix(l, "Wants=") || strings.HasPrefix(l, "Requires=")) && strings.Contains(l, LinkUnitName) {
			t.Errorf("the service unit has %q: the link unit is the administrator's to enable", l)
		}
	}
	if strings.Contains(LinkUnit, "{{") {
		t.Error("the link unit contains \"{{\"")
	}
}

// TestUnitContract checks the lines other parts of the product rely on.
func TestUnitContract(t *testing.T) {
	lines := unitLines(Unit)
	for _, want := range []string{
		"Type=notify",
		"After=" + LinkUnitName,
		"ExecStartPre=+" + BinaryPath + " setup-link --config " + config.DefaultPath,
		"ExecStart=" + BinaryPath + " run --config " + config.DefaultPath,
		"ExecReload=" + BinaryPath + " check-config --config " + config.DefaultPath,
		"ExecReload=/bin/kill -HUP $MAINPID",
		"Restart=on-failure",
		"StartLimitIntervalSec=5min",
		"StartLimitBurst=10",
		"WatchdogSec=30s",
		"LogRateLimitIntervalSec=0",
		"User=imds-agent",
		"Group=imds-agent",
		"RuntimeDirectory=imds-agent",
		"CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
		"AmbientCapabilities=CAP_NET_BIND_SERVICE",
		"RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
		"Environment=AWS_EC2_METADATA_DISABLED=true",
		"EnvironmentFile=-/etc/default/imds-agent",
		"EnvironmentFile=-/etc/sysconfig/imds-agent",
		"WantedBy=multi-user.target",
	} {
		if !lines[want] {
			t.Errorf("the unit lacks %q", want)
		}
	}
	// systemd runs ExecReload= lines in turn and stops at a failure: the
	// check comes before the signal.
	if check, kill := strings.Index(Unit, "ExecReload="+BinaryPath+" check-config"), strings.Index(Unit, "ExecReload=/bin/kill"); check < 0 || kill < check {
		t.Error("the unit does not check the file before it signals the agent to reload")
	}
	// Each of these would break the agent (platform-notes.md).
	for _, bad := range []string{"PrivateNetwork=yes", "PrivateUsers=yes", "IPAddressDeny=any", "ExecStopPost"} {
		for l := range lines {
			if strings.HasPrefix(l, bad) {
				t.Errorf("the unit has %q", l)
			}
		}
	}
	// kardianos/service renders the unit as a template: it must hold no
	// template actions of its own.
	if strings.Contains(Unit, "{{") {
		t.Error("the unit contains \"{{\", which `imds-agent install` would treat as a template action")
	}
	if !strings.Contains(Unit, "# No ExecStopPost=imds-agent cleanup, on purpose") {
		t.Error("the unit no longer explains why the link stays when the agent stops")
	}
}

func TestDropInsNameTheLink(t *testing.T) {
	link := config.DefaultLink
	for name, tc := range map[string]struct{ text, want string }{
		"networkd":       {Network, "Name=" + link},
		"NetworkManager": {NetworkManager, "unmanaged-devices+=interface-name:" + link},
		"modules-load":   {ModulesLoad, "dummy"},
		"sysusers":       {Sysusers, `u imds-agent - "imds-agent metadata service" /nonexistent /usr/sbin/nologin`},
	} {
		if !hasLine(tc.text, tc.want) {
			t.Errorf("%s drop-in lacks the line %q:\n%s", name, tc.want, tc.text)
		}
	}
	if !hasLine(Network, "Unmanaged=yes") {
		t.Errorf("networkd drop-in does not say Unmanaged=yes")
	}
}

func hasLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// unitRoot returns a scratch root holding the unit as the packages install
// it, the host's own units (for the targets it refers to), /bin/kill, and a
// stand-in for the binary: `systemd-analyze verify` checks that each command
// exists. Nothing in it is ever run.
func unitRoot(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is missing (install systemd)")
		}
		t.Skip("systemd-analyze is not installed")
	}
	root := t.TempDir()
	unitDir := filepath.Join(root, "usr/lib/systemd/system")
	if err := os.MkdirAll(filepath.Dir(unitDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", unitDir).CombinedOutput(); err != nil {
		t.Fatalf("copying the host's units: %v\n%s", err, out)
	}
	// The host's copy may already hold installed imds-agent units.
	write(t, filepath.Join(unitDir, UnitName), Unit, 0o644)
	write(t, filepath.Join(unitDir, LinkUnitName), LinkUnit, 0o644)
	write(t, filepath.Join(root, BinaryPath), "#!/bin/sh\nexit 0\n", 0o755)
	kill, err := os.ReadFile("/bin/kill")
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(root, "bin/kill"), string(kill), 0o755)
	return root
}

func write(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
}

func TestUnitVerifies(t *testing.T) {
	root := unitRoot(t)
	for _, name := range []string{UnitName, LinkUnitName} {
		out, err := exec.Command("systemd-analyze", "verify", "--man=no", "--root="+root, name).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
}

var exposureRe = regexp.MustCompile(`(?m)^→ Overall exposure level for imds-agent\.service: ([0-9]+\.[0-9]+) .*$`)

// TestUnitSecurityScore runs `systemd-analyze security --offline` on the
// unit and prints the overall exposure line (visible with go test -v).
func TestUnitSecurityScore(t *testing.T) {
	root := unitRoot(t)
	cmd := exec.Command("systemd-analyze", "security", "--offline=yes", "--no-pager", "--root="+root, UnitName)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := exposureRe.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure line in:\n%s", out)
	}
	score, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(string(m[0]))
	if score > maxExposure {
		t.Errorf("exposure %.1f is above %.1f:\n%s", score, maxExposure, out)
	}
}

// TestSandboxHidden: the directories SandboxHidden names are those the
// unit's ProtectHome=yes and PrivateTmp=yes hide.
func TestSandboxHidden(t *testing.T) {
	for _, line := range []string{"ProtectHome=yes", "PrivateTmp=yes"} {
		if !regexp.MustCompile(`(?m)^` + line + `$`).MatchString(Unit) {
			t.Errorf("the unit has no %s line; SandboxHidden follows it", line)
		}
	}
	for path, want := range map[string]string{
		"/home/me/aws/config": "/home", "/root/user-data": "/root", "/run/user/1000/x": "/run/user",
		"/tmp/x": "/tmp", "/var/tmp/x/y": "/var/tmp", "/tmp/../etc/x": "", "/home": "/home",
		"/etc/imds-agent/aws/config": "", "/homework/x": "", "/var/tmpfiles": "", "/run/imds-agent/x": "",
	} {
		if got := SandboxHidden(path); got != want {
			t.Errorf("SandboxHidden(%q) = %q, want %q", path, got, want)
		}
	}
}

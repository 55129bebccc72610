package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCommandLine: check-config, version and usage errors, with their exit
// codes (scripts and packages depend on them: the packages' upgrade scripts
// restart the agent only when `check-config --config PATH` exits 0, and
// installed scripts call the binaries of later releases).
func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(good, []byte("version: 1\ncredentials:\n  instance_profile: web\n"), 0o644)
	_ = os.WriteFile(bad, []byte("version: 1\ncredentials:\n  instance_profil: web\n"), 0o644)
	// Valid YAML that the agent would refuse to start with: check-config
	// says so too.
	unknownUser := filepath.Join(dir, "unknown-user.yaml")
	_ = os.WriteFile(unknownUser, []byte("version: 1\naccess:\n  credentials:\n    deny: [\"user:no-such-user-imds\"]\n"), 0o644)
	noUserData := filepath.Join(dir, "no-user-data.yaml")
	_ = os.WriteFile(noUserData, []byte("version: 1\ninstance:\n  user_data_file: "+filepath.Join(dir, "missing-user-data")+"\n"), 0o644)
	// Valid, but the service's sandbox would hide the user data in /tmp,
	userData := filepath.Join(dir, "user-data")
	_ = os.WriteFile(userData, []byte("#!/bin/sh\n"), 0o644)
	hiddenUserData := filepath.Join(dir, "hidden-user-data.yaml")
	_ = os.WriteFile(hiddenUserData, []byte("version: 1\ninstance:\n  user_data_file: "+userData+"\n"), 0o644)
	// and the program a profile's credential_process runs from /tmp.
	safeProgram := filepath.Join(dir, "safe-creds")
	_ = os.WriteFile(safeProgram, []byte("#!/bin/sh\nexit 1\n"), 0o755)
	safeProcessConfig := filepath.Join(dir, "aws-safe-process-config")
	_ = os.WriteFile(safeProcessConfig, []byte("[default]\ncredential_process = "+safeProgram+"\n"), 0o600)
	hiddenProgram := filepath.Join(dir, "hidden-program.yaml")
	_ = os.WriteFile(hiddenProgram, []byte("version: 1\ncredentials:\n  shared_config_files: ["+safeProcessConfig+"]\n  shared_credentials_files: []\n"), 0o644)
	// A start that would refuse its source credentials, and serve none.
	openSourceFile := filepath.Join(dir, "aws-config")
	_ = os.WriteFile(openSourceFile, []byte("[default]\nregion = eu-west-1\n"), 0o644)
	_ = os.Chmod(openSourceFile, 0o666)
	openSource := filepath.Join(dir, "open-source.yaml")
	_ = os.WriteFile(openSource, []byte("version: 1\ncredentials:\n  shared_config_files: ["+openSourceFile+"]\n"), 0o644)
	openProgram := filepath.Join(dir, "creds")
	_ = os.WriteFile(openProgram, []byte("#!/bin/sh\nexit 1\n"), 0o755)
	_ = os.Chmod(openProgram, 0o777)
	processConfig := filepath.Join(dir, "aws-process-config")
	_ = os.WriteFile(processConfig, []byte("[default]\ncredential_process = "+openProgram+" --x\n"), 0o600)
	openProcess := filepath.Join(dir, "open-process.yaml")
	_ = os.WriteFile(openProcess, []byte("version: 1\ncredentials:\n  shared_config_files: ["+processConfig+"]\n  shared_credentials_files: []\n"), 0o644)
	// A source_profile the files do not have: a start with a role loads
	// it, and serves no credentials; without a role it loads nothing.
	noProfile := filepath.Join(dir, "no-profile.yaml")
	_ = os.WriteFile(noProfile, []byte("version: 1\ncredentials:\n  instance_profile: web\n  source_profile: nosuch\n  shared_config_files: ["+safeProcessConfig+"]\n  shared_credentials_files: []\n"), 0o644)
	noProfileNoRole := filepath.Join(dir, "no-profile-no-role.yaml")
	_ = os.WriteFile(noProfileNoRole, []byte("version: 1\ncredentials:\n  source_profile: nosuch\n  shared_config_files: ["+safeProcessConfig+"]\n  shared_credentials_files: []\n"), 0o644)
	// The cases below that a broken argument check would let run do no
	// harm even then: run has a loopback-only configuration (not the
	// default, which claims 169.254.169.254), and the service managers'
	// commands that start would call are stubs that fail.
	loopback := filepath.Join(dir, "loopback.yaml")
	_ = os.WriteFile(loopback, []byte("version: 1\nlisten:\n  link: \"\"\n  addresses: [\"127.0.0.1:0\"]\nadmin:\n  socket: "+filepath.Join(dir, "admin.sock")+"\n"), 0o644)
	stubs := filepath.Join(dir, "bin")
	_ = os.Mkdir(stubs, 0o755)
	for _, name := range []string{"systemctl", "service", "initctl", "rc-service"} {
		_ = os.WriteFile(filepath.Join(stubs, name), []byte("#!/bin/sh\nexit 1\n"), 0o755)
	}
	env := append(baseEnv(t), "PATH="+stubs+":"+os.Getenv("PATH"))
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"check-config", "--config", good}, 0, "instance_profile: web"},
		{[]string{"check-config", "--config", bad}, 1, `bad.yaml:3: unknown key "credentials.instance_profil"; did you mean "instance_profile"?`},
		{[]string{"check-config", "--config", filepath.Join(dir, "missing.yaml")}, 1, "does not exist"},
		{[]string{"check-config", "--config", unknownUser}, 1, `access rule deny "user:no-such-user-imds": no such user`},
		{[]string{"check-config", "--config", noUserData}, 1, "instance.user_data_file: open "},
		{[]string{"check-config", "--config", openSource}, 1, "the agent would start but serve no credentials: source credentials: " + openSourceFile + " can be changed by every user on this host"},
		{[]string{"check-config", "--config", openProcess}, 1, "serve no credentials: source credentials: what credential_process runs in profile default: " + openProgram + " can be changed by every user on this host"},
		{[]string{"check-config", "--config", noProfile}, 1, "the agent would start but serve no credentials: loading source credentials: no source credentials: failed to get shared config profile, nosuch"},
		{[]string{"check-config", "--config", noProfileNoRole}, 0, "is valid"},
		{[]string{"check-config", "--config", hiddenUserData}, 0, "warning: instance.user_data_file: " + userData + " is under /tmp, which the sandbox of imds-agent.service hides (ProtectHome, PrivateTmp)"},
		{[]string{"check-config", "--config", hiddenProgram}, 0, "warning: a file the source credentials' profile names: " + safeProgram + " is under /tmp"},
		{[]string{"version"}, 0, "imds-agent "},
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"run", "--config", loopback, "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"version", "--config", "x"}, 2, "flag provided but not defined: -config"},
		{[]string{"start", "--config", "x"}, 2, "flag provided but not defined: -config"},
		{[]string{"check-config", "-h"}, 0, "configuration file"},
		{[]string{}, 2, "Usage:"},
		{[]string{"status", "--socket", filepath.Join(dir, "none.sock")}, 1, "no agent is answering (is it running? A running agent keeps the admin.socket it started with until a restart)"},
		// dev refuses these before it opens anything. (A documentation
		// address, not a wildcard: were the check lost, nothing would be
		// served to the network.)
		{[]string{"dev", "--listen", "localhost:1338"}, 1, `"localhost" is not an IP address`},
		{[]string{"dev", "--listen", "192.0.2.1:0"}, 1, "dev serves on loopback only"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, binary, tc.args...)
		cmd.Env = env
		out, _ := cmd.CombinedOutput()
		cancel()
		if code := cmd.ProcessState.ExitCode(); code != tc.code || !strings.Contains(string(out), tc.want) {
			t.Errorf("imds-agent %s: exit %d, output:\n%s\nwant exit %d and %q", strings.Join(tc.args, " "), code, out, tc.code, tc.want)
		}
	}
	// Without a source_profile in the file, the SDK's profile is the
	// environment's, and an administrator's AWS_PROFILE is not the
	// service's: a load that fails by it is a warning.
	roleDefaultProfile := filepath.Join(dir, "role-default-profile.yaml")
	_ = os.WriteFile(roleDefaultProfile, []byte("version: 1\ncredentials:\n  instance_profile: web\n  shared_config_files: ["+safeProcessConfig+"]\n  shared_credentials_files: []\n"), 0o644)
	byShell := exec.Command(binary, "check-config", "--config", roleDefaultProfile)
	byShell.Env = append(baseEnv(t), "AWS_PROFILE=admins-own")
	if out, err := byShell.CombinedOutput(); err != nil || !strings.Contains(string(out), "warning: the default source profile does not load in this environment") {
		t.Errorf("check-config with the caller's AWS_PROFILE naming a profile the files lack: %v\n%s", err, out)
	}

	// check-config shows what the agent derives from the host, marked as
	// such, and what it prints is a config it accepts.
	cmd := exec.Command(binary, "check-config", "--config", good)
	cmd.Env = baseEnv(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("check-config: %v", err)
	}
	for _, want := range []string{"\n  id: i-", " # from this host\n", "\n  type: on-premises\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("check-config output lacks %q:\n%s", want, out)
		}
	}
	effective := filepath.Join(dir, "effective.yaml")
	if err := os.WriteFile(effective, out, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(binary, "check-config", "--config", effective)
	cmd.Env = baseEnv(t)
	if again, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("check-config of its own output: %v\n%s", err, again)
	}
}

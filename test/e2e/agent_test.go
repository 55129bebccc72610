package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runningAgent is `imds-agent run` on a loopback port.
type runningAgent struct {
	*process
	url, dir, config, socket string
}

// runConfig starts `imds-agent run` with a config made of the sections
// body(dir) returns plus a loopback listener, an admin socket and debug
// logging. dir is the test's own directory for files the config names.
func runConfig(t *testing.T, env []string, body func(dir string) string) *runningAgent {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	a := &runningAgent{dir: dir, config: filepath.Join(dir, "config.yaml"), socket: filepath.Join(dir, "admin.sock"),
		url: fmt.Sprintf("http://127.0.0.1:%d", port)}
	text := fmt.Sprintf("version: 1\n%s\nlisten:\n  link: \"\"\n  addresses: [\"127.0.0.1:%d\"]\nadmin:\n  socket: %s\nlog:\n  level: debug\n",
		body(dir), port, a.socket)
	if err := os.WriteFile(a.config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	a.process = start(t, env, "run", "--config", a.config)
	waitFor(t, 20*time.Second, "the agent to listen", func() bool {
		status, _ := imdsGet(a.url, "/latest/meta-data/instance-id")
		return status == http.StatusOK
	})
	return a
}

// TestCredentialProcessEnvironment: a credential_process the agent starts
// inherits an environment in which an SDK cannot ask the instance metadata
// service (the agent itself) or a container endpoint, whatever the
// agent's own environment said; the agent warns of the container
// variables it removed.
func TestCredentialProcessEnvironment(t *testing.T) {
	dir := t.TempDir()
	seen := filepath.Join(dir, "environment")
	script := filepath.Join(dir, "creds")
	body := "#!/bin/sh\nenv > " + seen + ".tmp && mv " + seen + ".tmp " + seen + "\n" +
		`echo '{"Version": 1, "AccessKeyId": "AKIAEXAMPLE000000001", "SecretAccessKey": "secret"}'` + "\n"
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	env := clientEnv(t, "http://127.0.0.1:9", false) // the agent's own would-be IMDS: nothing listens there
	env = append(env, "AWS_ENDPOINT_URL=http://127.0.0.1:9", "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9/creds",
		"AWS_CONTAINER_AUTHORIZATION_TOKEN=own")
	a := runConfig(t, env, func(dir string) string {
		cfg := filepath.Join(dir, "aws-config")
		if err := os.WriteFile(cfg, []byte("[default]\ncredential_process = "+script+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("credentials:\n  role_arn: arn:aws:iam::123456789012:role/r\n  shared_config_files: [%s]\n  shared_credentials_files: []\n", cfg)
	})
	waitFor(t, 20*time.Second, "the credential_process to run", func() bool {
		_, err := os.Stat(seen)
		return err == nil
	})
	b, err := os.ReadFile(seen)
	if err != nil {
		t.Fatal(err)
	}
	vars := "\n" + string(b)
	if !strings.Contains(vars, "\nAWS_EC2_METADATA_DISABLED=true\n") || strings.Contains(vars, "\nAWS_CONTAINER_") {
		t.Errorf("the credential_process's environment:\n%s", b)
	}
	if log := a.stderr.String(); !strings.Contains(log, "AWS_CONTAINER_CREDENTIALS_FULL_URI") || !strings.Contains(log, "AWS_CONTAINER_AUTHORIZATION_TOKEN") {
		t.Errorf("no warning naming the removed variables:\n%s", log)
	}
}

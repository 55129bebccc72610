package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
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

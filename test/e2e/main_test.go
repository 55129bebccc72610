// Package e2e drives the built imds-agent binary with real clients: the
// aws-sdk-go-v2 default chain, boto3, the AWS CLI, and moto as STS and IAM.
// Every client process is pointed at the agent under test on loopback (or
// has IMDS disabled) and at a loopback STS; nothing leaves the host.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// binary is the imds-agent built for this test run; goclient is an
// application using the Go SDK's default chain (test/goclient).
var binary, goclient string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "imds-agent-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Other local users run goclient in the policy tests.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "imds-agent")
	_, here, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(here), "..", "..")
	goclient = filepath.Join(dir, "goclient")
	for out, pkg := range map[string]string{binary: "./cmd/imds-agent", goclient: "./test/goclient"} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Dir = root
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building", pkg+":", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects a process's output safely for concurrent reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// process is a started imds-agent.
type process struct {
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan error
}

// start runs the binary with args, stopping it at the end of the test.
func start(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(binary, args...), stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("agent stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

// stop sends SIGTERM and waits (bounded) for a clean exit.
func (p *process) stop(t *testing.T) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("agent did not stop within 10s of SIGINT")
	}
}

// waitFor polls cond every 50ms until it holds or the bound passes. It is
// a readiness wait, not a timing assertion.
func waitFor(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", bound, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var (
	metadataLine = regexp.MustCompile(`instance metadata on (http://[0-9.:]+)`)
	emulatorLine = regexp.MustCompile(`AWS emulator \(STS, IAM\) on (http://[0-9.:]+)`)
)

// devAgent is `imds-agent dev` on an ephemeral port.
type devAgent struct {
	*process
	metadataURL, emulatorURL string
}

func startDev(t *testing.T) *devAgent {
	t.Helper()
	p := start(t, baseEnv(t), "dev", "--listen", "127.0.0.1:0")
	d := &devAgent{process: p}
	waitFor(t, 20*time.Second, "the dev banner", func() bool {
		out := p.stdout.String()
		m, e := metadataLine.FindStringSubmatch(out), emulatorLine.FindStringSubmatch(out)
		if m != nil && e != nil {
			d.metadataURL, d.emulatorURL = m[1], e[1]
			return true
		}
		return false
	})
	waitReady(t, d.metadataURL)
	return d
}

// statusCommand is the status command dev's banner prints (the binary,
// "status", "--socket" and the socket's path).
func (d *devAgent) statusCommand(t *testing.T) []string {
	t.Helper()
	for _, l := range strings.Split(d.stdout.String(), "\n") {
		if s, ok := strings.CutPrefix(l, "Status: "); ok {
			if f := strings.Fields(s); len(f) == 4 && f[1] == "status" && f[2] == "--socket" {
				return f
			}
		}
	}
	t.Fatalf("the dev banner has no status command:\n%s", d.stdout.String())
	return nil
}

// waitReady waits until the agent serves credentials (the role list alone
// answers as soon as the role is known, before its credentials arrive).
func waitReady(t *testing.T, url string) {
	t.Helper()
	waitFor(t, 20*time.Second, "credentials at "+url, func() bool {
		status, role := imdsGet(url, "/latest/meta-data/iam/security-credentials/")
		if status != http.StatusOK {
			return false
		}
		status, _ = imdsGet(url, "/latest/meta-data/iam/security-credentials/"+role)
		return status == http.StatusOK
	})
}

// imdsGet fetches a metadata path the IMDSv2 way.
func imdsGet(base, path string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, base+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	tok, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return res.StatusCode, string(tok)
	}
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	req.Header.Set("X-aws-ec2-metadata-token", string(tok))
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// baseEnv is a minimal environment for child processes: no AWS settings
// from the machine, IMDS disabled unless a test points it at the agent,
// no proxies, and a private HOME so no ~/.aws is read.
func baseEnv(t *testing.T) []string {
	home := t.TempDir()
	empty := filepath.Join(home, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"LANG=C.UTF-8",
		"NO_PROXY=*",
		"no_proxy=*",
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=" + empty,
		"AWS_SHARED_CREDENTIALS_FILE=" + empty,
	}
}

// clientEnv is baseEnv for an SDK that must take its credentials from the
// agent at metadataURL.
func clientEnv(t *testing.T, metadataURL string, v1Disabled bool) []string {
	env := baseEnv(t)
	for i, kv := range env {
		if strings.HasPrefix(kv, "AWS_EC2_METADATA_DISABLED=") {
			env[i] = "AWS_EC2_METADATA_DISABLED=false"
		}
	}
	env = append(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT="+metadataURL+"/")
	if v1Disabled {
		env = append(env, "AWS_EC2_METADATA_V1_DISABLED=true")
	}
	return env
}

// python returns the Python interpreter that has boto3 (the machine
// image's); the test command puts it first on PATH.
func python(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 not found: %v (the test command installs it)", err)
	}
	if err := exec.Command(p, "-c", "import boto3").Run(); err != nil {
		t.Fatalf("%s cannot import boto3: %v (the test command installs it)", p, err)
	}
	return p
}

// runClient runs a client process with a bound on its time.
func runClient(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	out, _, err := runClientOutputs(t, env, name, args...)
	return out, err
}

// runClientOutputs is runClient that also returns what the command printed
// on stderr, whether or not it failed.
func runClientOutputs(t *testing.T, env []string, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), errOut.String(), fmt.Errorf("%s %s: %w\nstderr:\n%s", name, strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), errOut.String(), nil
}

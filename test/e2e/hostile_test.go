package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Hostile input against the built agent on loopback. Every test is bounded
// in connections and time.

// healthyLatency times one IMDSv2 credentials flow of a new client; one
// kept waiting fails the test (imdsGet gives up after 2 s).
func healthyLatency(t *testing.T, url, role string) time.Duration {
	t.Helper()
	start := time.Now()
	status, body := imdsGet(url, "/latest/meta-data/iam/security-credentials/"+role)
	took := time.Since(start)
	if status != http.StatusOK || !strings.Contains(body, `"Code":"Success"`) {
		t.Fatalf("healthy client: %d %.100s", status, body)
	}
	return took
}

// rawRequest sends raw bytes on a new connection and returns the status
// line of the answer.
func rawRequest(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return "write failed: " + err.Error()
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "read failed: " + err.Error()
	}
	return strings.TrimSpace(line)
}

func TestHostileInput(t *testing.T) {
	d := startDev(t)
	addr := strings.TrimPrefix(d.metadataURL, "http://")
	role := "imds-agent-demo"

	t.Run("DNS rebinding: foreign Host header", func(t *testing.T) {
		tok := rawToken(t, addr)
		got := rawRequest(t, addr, "GET /latest/meta-data/iam/security-credentials/"+role+" HTTP/1.1\r\nHost: attacker.example:1338\r\nX-aws-ec2-metadata-token: "+tok+"\r\n\r\n")
		if !strings.Contains(got, " 403 ") {
			t.Errorf("foreign Host: %s, want 403", got)
		}
		got = rawRequest(t, addr, "PUT /latest/api/token HTTP/1.1\r\nHost: attacker.example\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")
		if !strings.Contains(got, " 403 ") {
			t.Errorf("foreign Host on the token: %s, want 403", got)
		}
		got = rawRequest(t, addr, "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: "+addr+"\r\nX-aws-ec2-metadata-token: "+tok+"\r\n\r\n")
		if !strings.Contains(got, " 200 ") {
			t.Errorf("own Host: %s, want 200", got)
		}
	})

	t.Run("oversized headers", func(t *testing.T) {
		big := strings.Repeat("a", 64<<10)
		got := rawRequest(t, addr, "GET /latest/meta-data/ HTTP/1.1\r\nHost: "+addr+"\r\nX-Big: "+big+"\r\n\r\n")
		if !strings.Contains(got, " 431 ") {
			t.Errorf("64 KiB header: %s, want 431", got)
		}
		healthyLatency(t, d.metadataURL, role)
	})

	t.Run("oversized body", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		fmt.Fprintf(c, "PUT /latest/api/token HTTP/1.1\r\nHost: %s\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: %d\r\n\r\n", addr, 64<<20)
		// Send 8 MiB of the announced 64 without waiting for the answer.
		go func() {
			chunk := make([]byte, 64<<10)
			for i := 0; i < 128; i++ {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.Contains(line, " 200 ") {
			t.Errorf("token with a huge body: %q %v", line, err)
		}
		healthyLatency(t, d.metadataURL, role)
	})

	t.Run("slow sender is cut off while others are served", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		closed := make(chan time.Duration, 1)
		go func() {
			// One header byte every 200 ms: never finishes within the
			// agent's header timeout.
			for _, b := range []byte("GET /latest/meta-data/ HTTP/1.1\r\nHost: " + addr + "\r\nX-Slow: " + strings.Repeat("z", 200)) {
				if _, err := c.Write([]byte{b}); err != nil {
					closed <- time.Since(start)
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
			closed <- 0
		}()
		var worst time.Duration
		for i := 0; i < 20; i++ {
			worst = max(worst, healthyLatency(t, d.metadataURL, role))
			time.Sleep(100 * time.Millisecond)
		}
		select {
		case after := <-closed:
			if after == 0 {
				t.Fatal("the slow sender was never cut off")
			}
			t.Logf("slow sender cut off after %v; healthy clients meanwhile: longest %v", after.Round(time.Millisecond), worst)
		case <-time.After(15 * time.Second):
			t.Fatal("the slow sender was not cut off within 15s")
		}
	})

	t.Run("ten thousand idle and half-sent connections", func(t *testing.T) {
		const idle = 10000
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for i := 0; i < idle; i++ {
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				t.Fatalf("connection %d refused: accepting stopped: %v", i, err)
			}
			if i%3 == 0 { // a third send half a request
				_, _ = io.WriteString(c, "GET /latest/meta-data/ HTTP/1.1\r\nHost: ")
			}
			conns = append(conns, c)
		}
		var worst, total time.Duration
		const probes = 50
		for i := 0; i < probes; i++ {
			l := healthyLatency(t, d.metadataURL, role)
			worst, total = max(worst, l), total+l
		}
		st := devStatus(t, d)
		t.Logf("%d idle or half-sent connections held by the client; healthy credentials flow: mean %v, longest %v over %d new clients; agent holds %d connections, shed %d",
			idle, (total / probes).Round(time.Microsecond), worst.Round(time.Microsecond), probes, st.Clients, st.ClientsShed)
		if st.ClientsShed == 0 || st.Clients > 4096+probes+10 {
			t.Errorf("agent holds %d connections, shed %d: idle connections are not bounded", st.Clients, st.ClientsShed)
		}
	})

	t.Run("tens of thousands of tokens for one caller", func(t *testing.T) {
		const total, workers = 20000, 8
		var ok, refused atomic.Int64
		start := time.Now()
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1}}
				for i := 0; i < total/workers; i++ {
					req, _ := http.NewRequest(http.MethodPut, d.metadataURL+"/latest/api/token", nil)
					req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
					res, err := c.Do(req)
					if err != nil {
						refused.Add(1)
						continue
					}
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode == http.StatusOK {
						ok.Add(1)
					} else {
						refused.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		took := time.Since(start)
		t.Logf("%d tokens for one caller in %v (%.0f/s on this shared machine)", ok.Load(), took.Round(time.Millisecond), float64(ok.Load())/took.Seconds())
		if ok.Load() != total || refused.Load() != 0 {
			t.Errorf("%d of %d token requests served, %d refused: no limit applies by default", ok.Load(), total, refused.Load())
		}
	})
}

// rawToken gets a token over a raw connection.
func rawToken(t *testing.T, addr string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

type statusView struct {
	Clients     int64  `json:"clients"`
	ClientsShed uint64 `json:"clients_shed"`
}

func devStatus(t *testing.T, d *devAgent) statusView {
	t.Helper()
	cmd := d.statusCommand(t)
	out, err := runClient(t, baseEnv(t), binary, "status", "--socket", cmd[len(cmd)-1], "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st statusView
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestAccessPolicyByUser: a policy denying www-data the credentials and
// binding tokens to their user; the agent answers each local user as the
// policy says and the audit trail names them.
func TestAccessPolicyByUser(t *testing.T) {
	m := startMoto(t)
	a := runConfig(t, append(baseEnv(t), "AWS_ENDPOINT_URL="+m.url), func(dir string) string {
		creds := filepath.Join(dir, "credentials")
		if err := os.WriteFile(creds, []byte(fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", m.keyID, m.secret)), 0o600); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("instance:\n  id: %s\ncredentials:\n  role_arn: arn:aws:iam::%s:role/%s\n  shared_credentials_files: [%s]\n  shared_config_files: []\naccess:\n  credentials:\n    deny: [\"user:www-data\"]\n  metadata:\n    deny: [\"uid:4242\"]\n  bind_tokens_to_uid: true\n",
			motoInstanceID, motoAccount, motoRole, creds)
	})
	waitReady(t, a.url)
	for _, tc := range []struct {
		name string
		uid  uint32
		want string
		env  []string
	}{
		{"root", 0, "PUT 200 GET 200", nil},
		{"nobody", 65534, "PUT 200 GET 200", nil},
		{"www-data", 33, "PUT 200 GET 403", nil},
		{"uid 4242", 4242, "PUT 403 GET 401", nil},
		// A socket bound to a device is not found by the plain look-up;
		// the user must not pass for a container and slip past the rule.
		{"www-data bound to lo", 33, "PUT 200 GET 403", []string{"IMDS_BIND_DEVICE=lo"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(goclient, "imds", "/latest/meta-data/iam/security-credentials/"+motoRole)
			cmd.Env = append(append(baseEnv(t), "AWS_EC2_METADATA_SERVICE_ENDPOINT="+a.url), tc.env...)
			cmd.Dir = "/"
			if tc.uid != 0 {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: tc.uid, Gid: tc.uid}}
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if got := strings.TrimSpace(string(out)); got != tc.want {
				t.Errorf("as %s: %s, want %s", tc.name, got, tc.want)
			}
		})
	}
	// With bind_tokens_to_uid, root's token is worthless to nobody.
	rootToken := rawToken(t, strings.TrimPrefix(a.url, "http://"))
	for _, tc := range []struct {
		uid  uint32
		want string
	}{{0, "GET 200"}, {65534, "GET 401"}} {
		cmd := exec.Command(goclient, "imds", "/latest/meta-data/iam/security-credentials/"+motoRole)
		cmd.Env = append(baseEnv(t), "AWS_EC2_METADATA_SERVICE_ENDPOINT="+a.url, "IMDS_TOKEN="+rootToken)
		cmd.Dir = "/"
		if tc.uid != 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: tc.uid, Gid: tc.uid}}
		}
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != tc.want {
			t.Errorf("root's token used by uid %d: %s %v, want %s", tc.uid, out, err, tc.want)
		}
	}
	waitFor(t, 5*time.Second, "the audit records", func() bool {
		return strings.Contains(a.stderr.String(), "reason=token-wrong-user")
	})
	logs := a.stderr.String()
	for _, want := range []string{
		`msg="request refused" component=audit decision=deny route=credentials status=403 reason=access-denied remote=`,
		`msg="request refused" component=audit decision=deny route=token status=403 reason=access-denied remote=`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("audit lacks %q", want)
		}
	}
	found := map[string]bool{}
	for _, l := range strings.Split(logs, "\n") {
		switch {
		case strings.Contains(l, "decision=deny route=credentials") && strings.Contains(l, "uid=33 "):
			found["www-data denied"] = true
		case strings.Contains(l, "decision=allow") && strings.Contains(l, "uid=65534 "):
			found["nobody allowed"] = true
		case strings.Contains(l, "decision=deny route=token") && strings.Contains(l, "uid=4242 "):
			found["4242 denied a token"] = true
		}
	}
	for _, k := range []string{"www-data denied", "nobody allowed", "4242 denied a token"} {
		if !found[k] {
			t.Errorf("no audit record: %s\n%s", k, logs)
		}
	}
}

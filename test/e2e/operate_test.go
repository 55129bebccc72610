package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// notifySocket is a stand-in for systemd's notify socket.
type notifySocket struct {
	path string
	mu   sync.Mutex
	msgs []string
	conn *net.UnixConn
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify.sock")}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n.conn = c
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n
}

func (n *notifySocket) messages() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.msgs...)
}

// index returns the position of the first message at or after from
// starting with prefix, or -1.
func (n *notifySocket) index(from int, prefix string) int {
	msgs := n.messages()
	for i := from; i < len(msgs); i++ {
		if strings.HasPrefix(msgs[i], prefix) {
			return i
		}
	}
	return -1
}

// TestSystemdNotify checks the sd_notify conversation: READY=1 with a
// STATUS once serving, WATCHDOG=1 pings, RELOADING=1 with MONOTONIC_USEC and
// READY=1 around a SIGHUP, STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	n := newNotifySocket(t)
	env := append(baseEnv(t), "NOTIFY_SOCKET="+n.path, "WATCHDOG_USEC=400000")
	a := runConfig(t, env, func(string) string { return "" })
	waitFor(t, 10*time.Second, "READY=1", func() bool { return n.index(0, "READY=1") >= 0 })
	ready := n.messages()[n.index(0, "READY=1")]
	if !strings.Contains(ready, "\nSTATUS=serving metadata; no role attached") {
		t.Errorf("READY message = %q, want a STATUS saying no role is attached", ready)
	}
	waitFor(t, 10*time.Second, "three watchdog pings", func() bool {
		c := 0
		for _, m := range n.messages() {
			if m == "WATCHDOG=1" {
				c++
			}
		}
		return c >= 3
	})
	before := len(n.messages())
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "RELOADING=1 then READY=1", func() bool {
		i := n.index(before, "RELOADING=1")
		return i >= 0 && n.index(i+1, "READY=1") >= 0
	})
	reloading := n.messages()[n.index(before, "RELOADING=1")]
	var usec int64
	if _, err := fmt.Sscanf(reloading, "RELOADING=1\nMONOTONIC_USEC=%d", &usec); err != nil || usec <= 0 {
		t.Errorf("RELOADING message = %q, want MONOTONIC_USEC", reloading)
	}
	before = len(n.messages())
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "STOPPING=1", func() bool { return n.index(before, "STOPPING=1") >= 0 })
	<-a.done
	if code := a.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code after SIGTERM: %d", code)
	}
}

// TestStatusAfterRefusedEdit: `status` and `refresh` reach the running
// agent through the socket its config names even while the file holds an
// edit a reload refused, and say that the file does not load; status says
// the reload was refused.
func TestStatusAfterRefusedEdit(t *testing.T) {
	a := runConfig(t, baseEnv(t), func(string) string { return "" })
	text, err := os.ReadFile(a.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.config, append(text, "bogus_key: 1\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the failed reload to be logged", func() bool {
		return strings.Contains(a.stderr.String(), "reload failed; the running configuration stays")
	})
	for _, cmd := range []string{"status", "refresh"} {
		c := exec.Command(binary, cmd, "--config", a.config)
		c.Env = baseEnv(t)
		var out, errOut strings.Builder
		c.Stdout, c.Stderr = &out, &errOut
		if err := c.Run(); err != nil {
			t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", cmd, err, out.String(), errOut.String())
		}
		if !strings.Contains(errOut.String(), `unknown key "bogus_key"`) || !strings.Contains(errOut.String(), "trying the admin socket "+a.socket) {
			t.Errorf("%s: stderr does not report the config and the socket tried:\n%s", cmd, errOut.String())
		}
		if want := map[string]string{"status": "no role attached", "refresh": "refreshed: no-role"}[cmd]; !strings.Contains(out.String(), want) {
			t.Errorf("%s: stdout lacks %q:\n%s", cmd, want, out.String())
		}
		if cmd == "status" && !regexp.MustCompile(`reload refused +\S+ \(\S+ ago\), the running configuration stays: .*unknown key "bogus_key"`).MatchString(out.String()) {
			t.Errorf("status does not say the reload was refused:\n%s", out.String())
		}
	}
}

// metricsOf reads the agent's metrics at addr once, and returns a reader
// of one series' value (a histogram's sample count), which fails the test
// and gives -1 for a series that is not there.
func metricsOf(t *testing.T, addr string) func(name string, labels map[string]string) float64 {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("parsing metrics: %v", err)
	}
	return func(name string, labels map[string]string) float64 {
		t.Helper()
		f, ok := fams[name]
		if !ok {
			t.Errorf("metric %s missing", name)
			return -1
		}
		for _, mt := range f.Metric {
			if matchLabels(mt, labels) {
				switch {
				case mt.Counter != nil:
					return mt.Counter.GetValue()
				case mt.Gauge != nil:
					return mt.Gauge.GetValue()
				case mt.Histogram != nil:
					return float64(mt.Histogram.GetSampleCount())
				}
			}
		}
		t.Errorf("metric %s%v missing", name, labels)
		return -1
	}
}

// TestStatusMetricsAudit: `imds-agent status` against a running agent, the
// metrics endpoint scraped and parsed, and the audit trail naming callers.
func TestStatusMetricsAudit(t *testing.T) {
	m := startMoto(t)
	a := runConfig(t, append(baseEnv(t), "AWS_ENDPOINT_URL="+m.url), func(dir string) string {
		creds := filepath.Join(dir, "credentials")
		if err := os.WriteFile(creds, []byte(fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", m.keyID, m.secret)), 0o600); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("instance:\n  id: %s\ncredentials:\n  role_arn: arn:aws:iam::%s:role/%s\n  shared_credentials_files: [%s]\n  shared_config_files: []\nmetrics:\n  listen: 127.0.0.1:0\n",
			motoInstanceID, motoAccount, motoRole, creds)
	})
	waitReady(t, a.url)
	served := func() int { return strings.Count(a.stderr.String(), `msg="credentials served"`) }
	waitFor(t, 5*time.Second, "the readiness check's audit record", func() bool { return served() >= 1 })
	before := served()
	for range 3 {
		if status, _ := imdsGet(a.url, "/latest/meta-data/iam/security-credentials/"+motoRole); status != 200 {
			t.Fatalf("credentials: %d", status)
		}
	}
	// A refusal: no token.
	if res, err := http.Get(a.url + "/latest/meta-data/iam/security-credentials/" + motoRole); err != nil || res.StatusCode != 401 {
		t.Fatalf("tokenless GET: %v %v", res, err)
	} else {
		res.Body.Close()
	}

	out, err := runClient(t, baseEnv(t), binary, "status", "--socket", a.socket, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		State, Role, Metrics string
		AccessKeySuffix      string `json:"access_key_suffix"`
		InstanceID           string `json:"instance_id"`
		Refreshes            int
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if st.State != "ready" || st.Role != motoRole || st.InstanceID != motoInstanceID || st.Refreshes < 1 || st.Metrics == "" || len(st.AccessKeySuffix) != 4 {
		t.Errorf("status = %+v", st)
	}
	human, err := runClient(t, baseEnv(t), binary, "status", "--socket", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"role              arn:aws:iam::123456789012:role/app", "credentials       current; access key …", "last error        none"} {
		if !strings.Contains(human, want) {
			t.Errorf("status lacks %q:\n%s", want, human)
		}
	}

	value := metricsOf(t, st.Metrics)
	if v := value("imds_agent_requests_total", map[string]string{"route": "credentials", "status": "200"}); v < 3 {
		t.Errorf("credentials 200s = %v, want at least 3", v)
	}
	if v := value("imds_agent_tokens_issued_total", nil); v < 3 {
		t.Errorf("tokens issued = %v", v)
	}
	if v := value("imds_agent_refusals_total", map[string]string{"reason": "token-missing"}); v != 1 {
		t.Errorf("token-missing refusals = %v, want 1", v)
	}
	if v := value("imds_agent_refresh_success_total", nil); v < 1 {
		t.Errorf("refresh successes = %v", v)
	}
	if v := value("imds_agent_refresh_duration_seconds", nil); v < 1 {
		t.Errorf("refresh latency samples = %v", v)
	}
	if v := value("imds_agent_credentials_expiry_seconds", nil); v < 3000 || v > 3600 {
		t.Errorf("seconds until expiry = %v", v)
	}
	if v := value("imds_agent_credentials_ready", nil); v != 1 {
		t.Errorf("credentials ready = %v", v)
	}
	// Before any failure, each class's series is there at 0.
	for _, class := range []string{"transient", "throttled", "terminal", "duration-too-long"} {
		if v := value("imds_agent_refresh_failures_total", map[string]string{"class": class}); v != 0 {
			t.Errorf("refresh failures of class %s = %v, want 0", class, v)
		}
		if v := value("imds_agent_profile_lookup_failures_total", map[string]string{"class": class}); v != 0 {
			t.Errorf("profile look-up failures of class %s = %v, want 0", class, v)
		}
	}

	waitFor(t, 5*time.Second, "three more audit records", func() bool { return served() >= before+3 })
	logs := a.stderr.String()
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `msg="credentials served"`) {
			uid := fmt.Sprintf("uid=%d ", os.Getuid())
			if !strings.Contains(l, "component=audit") || !strings.Contains(l, uid) || !strings.Contains(l, "role="+motoRole) || !strings.Contains(l, "access_key_suffix=") {
				t.Errorf("audit record lacks caller, role or key: %s", l)
			}
		}
	}
	if n := served() - before; n != 3 {
		t.Errorf("%d audit records for 3 credential answers", n)
	}
	if !strings.Contains(logs, `msg="request refused" component=audit decision=deny route=credentials status=401 reason=token-missing`) {
		t.Errorf("no audit record of the refusal:\n%s", logs)
	}
}

func matchLabels(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		found := false
		for _, l := range m.Label {
			if l.GetName() == k && l.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// TestReloadKeepsRunningConfig: a broken config on SIGHUP, whether it
// fails to parse or fails to apply, is reported and changes nothing, and
// the credentials keep being served; a valid one takes effect.
func TestReloadKeepsRunningConfig(t *testing.T) {
	m := startMoto(t)
	a := runConfig(t, append(baseEnv(t), "AWS_ENDPOINT_URL="+m.url), func(dir string) string {
		creds := filepath.Join(dir, "credentials")
		if err := os.WriteFile(creds, []byte(fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", m.keyID, m.secret)), 0o600); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("instance:\n  id: i-00000000000000001\ncredentials:\n  role_arn: arn:aws:iam::%s:role/%s\n  shared_credentials_files: [%s]\n  shared_config_files: []\nmetadata_options:\n  http_tokens: required\n",
			motoAccount, motoRole, creds)
	})
	waitReady(t, a.url)
	key := accessKey(t, a.url)
	orig, err := os.ReadFile(a.config)
	if err != nil {
		t.Fatal(err)
	}
	// Source settings that do not load: a profile that does not exist, and
	// a credentials file other users can read.
	exposed := filepath.Join(filepath.Dir(a.config), "exposed-credentials")
	if err := os.WriteFile(exposed, []byte(fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", m.keyID, m.secret)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(exposed, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	creds := regexp.MustCompile(`shared_credentials_files: \[[^]]*\]`)
	for i, bad := range []struct{ text, says string }{
		{string(orig) + "bogus_key: 1\n", `unknown key \"bogus_key\"`},
		{strings.Replace(string(orig), "instance:\n", "instance:\n  user_data_file: /nonexistent/user-data\n", 1), "instance.user_data_file"},
		{strings.Replace(string(orig), "credentials:\n", "credentials:\n  source_profile: nosuch\n", 1), "profile, nosuch"},
		{creds.ReplaceAllString(string(orig), "shared_credentials_files: ["+exposed+"]"), "readable by"},
	} {
		if err := os.WriteFile(a.config, []byte(bad.text), 0o644); err != nil {
			t.Fatal(err)
		}
		_ = a.cmd.Process.Signal(syscall.SIGHUP)
		waitFor(t, 10*time.Second, "the failed reload to be logged", func() bool {
			return strings.Count(a.stderr.String(), "reload failed; the running configuration stays") > i
		})
		if !strings.Contains(a.stderr.String(), bad.says) {
			t.Errorf("reload error does not say %s:\n%s", bad.says, a.stderr.String())
		}
		if status, body := imdsGet(a.url, "/latest/meta-data/instance-id"); status != 200 || body != "i-00000000000000001" {
			t.Errorf("after a failed reload: %d %q", status, body)
		}
		if k := accessKey(t, a.url); k != key {
			t.Errorf("a failed reload changed the credentials: %s -> %s", key, k)
		}
	}
	changed := strings.Replace(string(orig), "i-00000000000000001", "i-00000000000000002", 1)
	changed = strings.Replace(changed, "http_tokens: required", "http_tokens: optional", 1)
	if err := os.WriteFile(a.config, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the new instance id", func() bool {
		_, body := imdsGet(a.url, "/latest/meta-data/instance-id")
		return body == "i-00000000000000002"
	})
	res, err := http.Get(a.url + "/latest/meta-data/instance-id")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Errorf("IMDSv1 after switching http_tokens to optional: %d", res.StatusCode)
	}
	// http_protocol_ipv6 decides which addresses are bound: a reload says
	// it needs a restart.
	if err := os.WriteFile(a.config, []byte(strings.Replace(changed, "http_tokens: optional", "http_tokens: optional\n  http_protocol_ipv6: disabled", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	const restartOnly = `these settings change only on restart; the running ones stay" keys=metadata_options.http_protocol_ipv6`
	_ = a.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the restart warning", func() bool {
		return strings.Contains(a.stderr.String(), restartOnly)
	})
	// So does log.format, and nothing else differs from the start this
	// time: the log's handlers are made once.
	withJSON := strings.Replace(changed, "log:\n  level: debug\n", "log:\n  level: debug\n  format: json\n", 1)
	if withJSON == changed {
		t.Fatalf("no log section to change in:\n%s", changed)
	}
	if err := os.WriteFile(a.config, []byte(withJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the restart warning for log.format", func() bool {
		return strings.Contains(a.stderr.String(), `these settings change only on restart; the running ones stay" keys=log.format`)
	})
	// A moved admin socket: the warning says which one is still in use
	// (status reads the file's, where no agent answers until a restart).
	moved := strings.Replace(withJSON, a.socket, filepath.Join(filepath.Dir(a.socket), "moved.sock"), 1)
	if err := os.WriteFile(a.config, []byte(moved), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the restart warning for admin.socket", func() bool {
		// In text still: log.format changes on restart too.
		return strings.Contains(a.stderr.String(), `keys="admin.socket, log.format" admin_socket_in_use=`+a.socket+"\n")
	})
}

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/imds-agent/imds-agent/internal/netnstest"
)

// Topology built by TestNamespaces (all namespaces created and removed by
// the test; nothing touches the machine's own network):
//
//	ns "host" (the agent, moto on its loopback, imds0 with 169.254.169.254/32
//	and fd00:ec2::254/128)
//	    10.9.0.1/24 ──veth── 10.9.0.2/24  ns "container" (one hop away, like
//	                                       a container on the host)
//	                          10.9.1.1/24 ──veth── 10.9.1.2/24  ns "far"
//	                                       (routed through "container": two hops)
type topology struct {
	host, container, far *netnstest.NS
}

func buildTopology(t *testing.T) *topology {
	tp := &topology{host: netnstest.New(t), container: netnstest.New(t), far: netnstest.New(t)}
	netnstest.Link(t, tp.host, tp.container, netip.MustParsePrefix("10.9.0.1/24"), netip.MustParsePrefix("10.9.0.2/24"))
	netnstest.Link(t, tp.container, tp.far, netip.MustParsePrefix("10.9.1.1/24"), netip.MustParsePrefix("10.9.1.2/24"))
	tp.container.Forwarding(true)
	tp.host.Route(netip.MustParsePrefix("10.9.1.0/24"), netip.MustParseAddr("10.9.0.2"))
	tp.container.Route(netip.MustParsePrefix("169.254.169.254/32"), netip.MustParseAddr("10.9.0.1"))
	tp.far.Route(netip.MustParsePrefix("169.254.169.254/32"), netip.MustParseAddr("10.9.1.1"))
	return tp
}

// nsAgent is the agent binary running inside a namespace.
type nsAgent struct {
	ns     *netnstest.NS
	config string
	env    []string
	*process
}

func (a *nsAgent) start(t *testing.T) {
	t.Helper()
	cmd := a.ns.Command(context.Background(), binary, "run", "--config", a.config)
	p := &process{cmd: cmd, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Env = a.env
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("agent stderr:\n%s", p.stderr.String())
		}
	})
	a.process = p
}

// tokenFrom asks for a token from inside ns; "" when none arrives.
func tokenFrom(ns *netnstest.NS, base string) (string, error) {
	c := ns.HTTPClient()
	c.Timeout = 2 * time.Second
	req, _ := http.NewRequest(http.MethodPut, base+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	res, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s", res.Status)
	}
	return string(b), nil
}

// getFrom fetches a metadata path from inside ns with a token.
func getFrom(ns *netnstest.NS, base, path string) (int, string) {
	tok, err := tokenFrom(ns, base)
	if err != nil {
		return 0, err.Error()
	}
	c := ns.HTTPClient()
	c.Timeout = 2 * time.Second
	req, _ := http.NewRequest(http.MethodGet, base+path, nil)
	req.Header.Set("X-aws-ec2-metadata-token", tok)
	res, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

const (
	imdsV4 = "http://169.254.169.254"
	imdsV6 = "http://[fd00:ec2::254]"
)

// TestNamespaces runs the agent as on a host: in its own network namespace
// it creates imds0 through netlink and serves 169.254.169.254:80 and
// [fd00:ec2::254]:80. SDKs in that namespace, with no endpoint settings at
// all, get the role's credentials. A namespace routed through the first (a
// container) is one hop away: no token at hop limit 1, one at 2; a namespace
// one more routed hop away needs 3. Restarts and SIGKILL reuse the link.
func TestNamespaces(t *testing.T) {
	tp := buildTopology(t)
	motoPort := 4566
	m := startMotoWith(t, func(name string, args ...string) *exec.Cmd {
		return tp.host.Command(context.Background(), name, args...)
	}, tp.host.HTTPClient(), motoPort)

	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	if err := os.WriteFile(creds, []byte(fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", m.keyID, m.secret)), 0o600); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "config.yaml")
	writeConfig := func(hopLimit int) {
		body := fmt.Sprintf(`version: 1
instance:
  id: %s
  region: us-east-1
credentials:
  instance_profile: %s
  shared_config_files: []
  shared_credentials_files: [%s]
metadata_options:
  http_put_response_hop_limit: %d
admin:
  socket: %s
log:
  level: debug
`, motoInstanceID, motoProfile, creds, hopLimit, filepath.Join(dir, "admin.sock"))
		if err := os.WriteFile(config, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig(1)
	agent := &nsAgent{ns: tp.host, config: config, env: append(baseEnv(t), "AWS_ENDPOINT_URL="+m.url)}
	agent.start(t)
	waitFor(t, 20*time.Second, "the agent on 169.254.169.254", func() bool {
		status, _ := getFrom(tp.host, imdsV4, "/latest/meta-data/iam/security-credentials/"+motoRole)
		return status == http.StatusOK
	})
	link, err := tp.host.Handle().LinkByName("imds0")
	if err != nil {
		t.Fatalf("imds0 not created: %v", err)
	}
	if link.Attrs().Alias != "imds-agent managed" {
		t.Errorf("imds0 alias = %q", link.Attrs().Alias)
	}
	addrs, _ := tp.host.Handle().AddrList(link, netlink.FAMILY_ALL)
	var got []string
	for _, a := range addrs {
		got = append(got, a.IPNet.String())
	}
	if !strings.Contains(strings.Join(got, " "), "169.254.169.254/32") || !strings.Contains(strings.Join(got, " "), "fd00:ec2::254/128") {
		t.Errorf("imds0 addresses = %v", got)
	}

	// SDKs in the host namespace, with no endpoint settings, on IPv4 and IPv6.
	for _, mode := range []string{"IPv4", "IPv6"} {
		env := clientEnv(t, "", false)
		env = withoutKey(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT")
		env = append(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE="+mode, "AWS_ENDPOINT_URL="+m.url)
		cmd := tp.host.Command(context.Background(), goclient)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "us-east-1 "+motoAssumedRole) {
			t.Errorf("aws-sdk-go-v2 over %s: %v\n%s", mode, err, out)
		}
		cli := tp.host.Command(context.Background(), "aws", "sts", "get-caller-identity", "--endpoint-url", m.url, "--query", "Arn", "--output", "text")
		cli.Env = append(env, "AWS_DEFAULT_REGION=us-east-1")
		out, err = cli.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != motoAssumedRole {
			t.Errorf("aws cli over %s: %v\n%s", mode, err, out)
		}
	}

	hop := func(ns *netnstest.NS) bool {
		_, err := tokenFrom(ns, imdsV4)
		return err == nil
	}
	// Hop limit 1: the container is one hop away, as on EC2.
	if hop(tp.container) {
		t.Error("hop limit 1: the container namespace got a token")
	}
	if !strings.Contains(agent.stderr.String(), "reason=hop-limit") {
		t.Error("the withheld token was not audited")
	}
	if status, _ := getFrom(tp.host, imdsV4, "/latest/meta-data/instance-id"); status != http.StatusOK {
		t.Errorf("host client after the container's attempt: %d", status)
	}
	reload := func(limit int) {
		writeConfig(limit)
		if err := agent.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the reload", func() bool {
			return strings.Count(agent.stderr.String(), "configuration reloaded") >= limit-1
		})
	}
	reload(2)
	if !hop(tp.container) {
		t.Error("hop limit 2: the container namespace got no token")
	}
	if status, body := getFrom(tp.container, imdsV4, "/latest/meta-data/iam/security-credentials/"+motoRole); status != http.StatusOK || !strings.Contains(body, `"Code":"Success"`) {
		t.Errorf("hop limit 2: container credentials %d %s", status, body)
	}
	if hop(tp.far) {
		t.Error("hop limit 2: a namespace two routed hops away got a token")
	}
	reload(3)
	if !hop(tp.far) {
		t.Error("hop limit 3: the namespace two hops away got no token")
	}

	// Restart and crash: the link is reused.
	agent.stop(t)
	agent.start(t)
	waitFor(t, 20*time.Second, "the restarted agent", func() bool {
		status, _ := getFrom(tp.host, imdsV4, "/latest/meta-data/instance-id")
		return status == http.StatusOK
	})
	if !strings.Contains(agent.stderr.String(), "created=false") {
		t.Errorf("restart did not reuse the link:\n%s", agent.stderr.String())
	}
	_ = agent.cmd.Process.Signal(syscall.SIGKILL)
	<-agent.done
	agent.start(t)
	waitFor(t, 20*time.Second, "the agent after SIGKILL", func() bool {
		status, _ := getFrom(tp.host, imdsV6, "/latest/meta-data/instance-id")
		return status == http.StatusOK
	})
	if l, err := tp.host.Handle().LinkByName("imds0"); err != nil || l.Attrs().Index != link.Attrs().Index {
		t.Errorf("the link was recreated after SIGKILL instead of reused: %v", err)
	}
}

// withoutKey drops KEY=… from env.
func withoutKey(env []string, key string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// TestNamespaceConflict: with 169.254.169.254 already on another link the
// agent refuses to start and names that link.
func TestNamespaceConflict(t *testing.T) {
	ns := netnstest.New(t)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "other0"}}
	if err := ns.Handle().LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("169.254.169.254/32")
	if err := ns.Handle().AddrAdd(br, addr); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf("version: 1\nadmin:\n  socket: %s\n", filepath.Join(dir, "admin.sock"))), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(context.Background(), binary, "run", "--config", config)
	cmd.Env = baseEnv(t)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the agent started despite the conflict:\n%s", out)
	}
	t.Logf("refused:\n%s", out)
	if !strings.Contains(string(out), "169.254.169.254") || !strings.Contains(string(out), "other0") {
		t.Errorf("the error does not name the address and the link:\n%s", out)
	}
	if _, err := ns.Handle().LinkByName("imds0"); err == nil {
		t.Error("imds0 was created despite the conflict")
	}
}

package agent

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/imds-agent/imds-agent/internal/access"
	"github.com/imds-agent/imds-agent/internal/audit"
	"github.com/imds-agent/imds-agent/internal/caller"
	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/imds"
	"github.com/imds-agent/imds-agent/internal/metrics"
	"github.com/imds-agent/imds-agent/internal/snapshot"
)

// newTestGate returns a gate for cfg serving on listening, without a
// resolver: each test request carries the caller it stands for.
func newTestGate(t *testing.T, cfg *config.Config, listening ...string) *gate {
	t.Helper()
	var aps []netip.AddrPort
	for _, l := range listening {
		aps = append(aps, netip.MustParseAddrPort(l))
	}
	rules, err := compileRules(cfg, aps, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{log: slog.New(slog.DiscardHandler), auditLog: slog.New(slog.DiscardHandler), metrics: metrics.New(metrics.Sources{
		Snapshot: func() *snapshot.Snapshot { return snapshot.None() }, Now: time.Now, Connections: func() int64 { return 0 }})}
	g.rules.Store(rules)
	return g
}

// loopbackPair returns the two ends of a TCP connection on 127.0.0.1,
// closed when the test ends.
func loopbackPair(tb testing.TB) (client, server net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { server.Close() })
	return client, server
}

// request builds a request to host whose connection's caller is already
// identified as c.
func request(method, path, host string, c access.Caller) *imds.Request {
	r := httptest.NewRequest(method, "http://169.254.169.254"+path, nil)
	r.Host = host // as sent, which need not make a valid URL
	ci := &connInfo{caller: c}
	ci.once.Do(func() {}) // identified already
	return &imds.Request{HTTP: r, Conn: ci, Time: time.Now()}
}

var (
	localRoot = access.Caller{Addr: netip.MustParseAddr("127.0.0.1"), Local: true, Identified: true, UID: 0}
	localWeb  = access.Caller{Addr: netip.MustParseAddr("127.0.0.1"), Local: true, Identified: true, UID: 33}
	unknown   = access.Caller{Addr: netip.MustParseAddr("127.0.0.1"), Local: true}
	container = access.Caller{Addr: netip.MustParseAddr("172.17.0.2")}
	// A local process that sent from the bridge's address and could not
	// be identified.
	bridgeUnknown = access.Caller{Addr: netip.MustParseAddr("172.17.0.1"), Local: true}
)

func TestGateAdmit(t *testing.T) {
	open := config.Default()
	strict := config.Default()
	strict.Access.Credentials.Deny = []string{"uid:33"}
	strict.Access.Credentials.Allow = []string{"uid:0", "cidr:172.17.0.0/16"}
	allowOnly := config.Default() // no deny rule about users to fail closed on
	allowOnly.Access.Credentials.Allow = strict.Access.Credentials.Allow
	for _, tc := range []struct {
		name     string
		cfg      *config.Config
		hopLimit int
		route    imds.Route
		path     string
		host     string
		caller   access.Caller
		status   int
		reason   imds.Reason
	}{
		{"own address", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "169.254.169.254", localRoot, 0, imds.ReasonNone},
		{"own address with port", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "169.254.169.254:80", localRoot, 0, imds.ReasonNone},
		{"own IPv6 address", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "[fd00:ec2::254]", localRoot, 0, imds.ReasonNone},
		{"instance-data", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "instance-data", localRoot, 0, imds.ReasonNone},
		{"DNS rebinding", open, 1, imds.RouteCredentials, "/latest/meta-data/iam/security-credentials/x", "evil.example", localRoot, 403, imds.ReasonBadHost},
		{"another port", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "169.254.169.254:8080", localRoot, 403, imds.ReasonBadHost},
		{"name in upper case", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "Instance-Data", localRoot, 0, imds.ReasonNone},
		{"name with port 80", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "instance-data:80", localRoot, 0, imds.ReasonNone},
		{"name with a trailing dot", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "instance-data.ec2.internal.", localRoot, 0, imds.ReasonNone},
		{"IPv6 address spelled out", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "[FD00:EC2:0:0:0:0:0:254]:80", localRoot, 0, imds.ReasonNone},
		{"port 80 with a leading zero", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "169.254.169.254:080", localRoot, 0, imds.ReasonNone},
		{"IPv6 without brackets", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "fd00:ec2::254", localRoot, 403, imds.ReasonBadHost},
		{"name on another port", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "instance-data:8080", localRoot, 403, imds.ReasonBadHost},
		{"rebinding name in upper case", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "EVIL.EXAMPLE", localRoot, 403, imds.ReasonBadHost},
		{"localhost, not listened on", open, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "localhost", localRoot, 403, imds.ReasonBadHost},
		{"token, local, hop 1", open, 1, imds.RouteToken, "/latest/api/token", "169.254.169.254", localRoot, 0, imds.ReasonNone},
		{"token, container, hop 1", open, 1, imds.RouteToken, "/latest/api/token", "169.254.169.254", container, imds.StatusDrop, imds.ReasonHopLimit},
		{"token, container, hop 2", open, 2, imds.RouteToken, "/latest/api/token", "169.254.169.254", container, 0, imds.ReasonNone},
		{"token, unidentified local, hop 1", open, 1, imds.RouteToken, "/latest/api/token", "169.254.169.254", unknown, 0, imds.ReasonNone},
		{"policy: denied user", strict, 1, imds.RouteCredentials, "/latest/meta-data/iam/security-credentials/x", "169.254.169.254", localWeb, 403, imds.ReasonAccessDenied},
		{"policy: allowed user", strict, 1, imds.RouteCredentials, "/latest/meta-data/iam/security-credentials/x", "169.254.169.254", localRoot, 0, imds.ReasonNone},
		{"policy: allowed network", strict, 2, imds.RouteCredentials, "/latest/meta-data/iam/security-credentials/x", "169.254.169.254", container, 0, imds.ReasonNone},
		{"policy: unidentified fails closed", strict, 1, imds.RouteCredentials, "/latest/meta-data/iam/security-credentials/x", "169.254.169.254", unknown, 403, imds.ReasonAccessDenied},
		{"policy: unidentified from an allowed network's address fails closed", allowOnly, 2, imds.RouteCredentials, "/latest/meta-data/iam/security-credentials/x", "169.254.169.254", bridgeUnknown, 403, imds.ReasonAccessDenied},
		{"policy: metadata still open", strict, 1, imds.RouteMetadata, "/latest/meta-data/ami-id", "169.254.169.254", localWeb, 0, imds.ReasonNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newTestGate(t, tc.cfg, "169.254.169.254:80", "[fd00:ec2::254]:80")
			method := http.MethodGet
			if tc.route == imds.RouteToken {
				method = http.MethodPut
			}
			req := request(method, tc.path, tc.host, tc.caller)
			req.Route, req.Token = tc.route, true
			status, reason := g.Admit(req, imds.Options{Enabled: true, TokensRequired: true, HopLimit: tc.hopLimit})
			if status != tc.status || reason != tc.reason {
				t.Errorf("Admit = %d %v, want %d %v", status, reason, tc.status, tc.reason)
			}
		})
	}
}

// TestCanonicalHost: each spelling of a host comes out in the one form
// allowedHosts lists; what is not a host is refused.
func TestCanonicalHost(t *testing.T) {
	for in, want := range map[string]string{
		"169.254.169.254":            "169.254.169.254",
		"169.254.169.254:80":         "169.254.169.254",
		"169.254.169.254:1338":       "169.254.169.254:1338",
		"[fd00:ec2::254]":            "[fd00:ec2::254]",
		"[FD00:0EC2:0::254]:80":      "[fd00:ec2::254]",
		"[::ffff:127.0.0.1]:1338":    "127.0.0.1:1338",
		"LocalHost:1338":             "localhost:1338",
		"instance-data.":             "instance-data",
		"Instance-Data.EC2.Internal": "instance-data.ec2.internal",
	} {
		if got, ok := canonicalHost(in); !ok || got != want {
			t.Errorf("canonicalHost(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"", ":80", "fd00:ec2::254", "[fd00:ec2::254", "[fd00:ec2::254]x", "[fe80::1%eth0]",
		"host:0", "host:65536", "host:http", "host:+80", "a:b:c", "[instance-data]", "[127.0.0.1]"} {
		if got, ok := canonicalHost(in); ok {
			t.Errorf("canonicalHost(%q) = %q, want a refusal", in, got)
		}
	}
}

// TestAllowedHostsLoopback: on a loopback address, localhost is the
// service too, with the port unless it is 80.
func TestAllowedHostsLoopback(t *testing.T) {
	for _, tc := range []struct {
		listen string
		host   string
		want   bool
	}{
		{"127.0.0.1:1338", "127.0.0.1:1338", true},
		{"127.0.0.1:1338", "localhost:1338", true},
		{"127.0.0.1:1338", "LOCALHOST:1338", true},
		{"127.0.0.1:1338", "localhost", false},
		{"127.0.0.1:1338", "127.0.0.1", false},
		{"127.0.0.1:80", "localhost", true},
		{"127.0.0.1:80", "localhost:80", true},
		{"[::1]:1338", "[::1]:1338", true},
		{"[::1]:1338", "[0:0:0:0:0:0:0:1]:1338", true},
	} {
		rules := &gateRules{hosts: allowedHosts([]netip.AddrPort{netip.MustParseAddrPort(tc.listen)})}
		if got := rules.hostAllowed(tc.host); got != tc.want {
			t.Errorf("listening on %s, Host %q allowed = %v, want %v", tc.listen, tc.host, got, tc.want)
		}
	}
}

// TestGateTTL: an answer to a container leaves with the hop limit minus
// the hop it already is away; a local caller's socket is left alone; an
// IMDSv1 request after a token on the same connection restores the default.
func TestGateTTL(t *testing.T) {
	g := newTestGate(t, config.Default(), "127.0.0.1:80")
	_, s := loopbackPair(t)
	ttlOf := func() int {
		raw, _ := s.(*net.TCPConn).SyscallConn()
		var v int
		_ = raw.Control(func(fd uintptr) { v, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL) })
		return v
	}
	def := ttlOf()
	for _, tc := range []struct {
		caller access.Caller
		hop    int
		want   int
	}{
		{localRoot, 1, def},
		{container, 3, 2},
	} {
		ci := &connInfo{conn: s, local: s.LocalAddr().(*net.TCPAddr).AddrPort(), caller: tc.caller}
		ci.once.Do(func() {})
		r := httptest.NewRequest(http.MethodPut, "http://127.0.0.1:80/latest/api/token", nil)
		if st, _ := g.Admit(&imds.Request{HTTP: r, Conn: ci, Route: imds.RouteToken}, imds.Options{Enabled: true, HopLimit: tc.hop}); st != 0 {
			t.Fatalf("token refused: %d", st)
		}
		if got := ttlOf(); got != tc.want {
			t.Errorf("caller %+v at hop limit %d: TTL %d, want %d", tc.caller, tc.hop, got, tc.want)
		}
		// An IMDSv1 GET on the same connection gets the default back.
		r2 := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:80/latest/meta-data/", nil)
		g.Admit(&imds.Request{HTTP: r2, Conn: ci, Route: imds.RouteMetaData}, imds.Options{Enabled: true, HopLimit: tc.hop})
		if got := ttlOf(); got != def {
			t.Errorf("after an IMDSv1 request: TTL %d, want the default %d", got, def)
		}
	}
}

// TestGateTTLFailsClosed: a token for a caller a hop away whose socket
// cannot take the hop limit (here, closed under it) gets no answer: sent
// with the default TTL, it would get past the limit.
func TestGateTTLFailsClosed(t *testing.T) {
	g := newTestGate(t, config.Default(), "127.0.0.1:80")
	_, s := loopbackPair(t)
	ci := &connInfo{conn: s, local: s.LocalAddr().(*net.TCPAddr).AddrPort(), caller: container}
	ci.once.Do(func() {})
	s.Close()
	put := httptest.NewRequest(http.MethodPut, "http://127.0.0.1:80/latest/api/token", nil)
	if st, reason := g.Admit(&imds.Request{HTTP: put, Conn: ci, Route: imds.RouteToken}, imds.Options{Enabled: true, HopLimit: 3}); st != imds.StatusDrop || reason != imds.ReasonHopLimit {
		t.Errorf("token with the hop limit not set: status %d, %v; want no answer", st, reason)
	}
}

// TestGateTTLKeptWhileUndelivered: an IMDSv1 request on a connection
// whose token answer has not been acknowledged (it did not reach a caller
// beyond the hop limit) keeps the lowered TTL: with the default, the
// kernel's retransmission of the token would get through. Here the answer
// stays queued because the client does not read and its window is full.
func TestGateTTLKeptWhileUndelivered(t *testing.T) {
	g := newTestGate(t, config.Default(), "127.0.0.1:80")
	_, s := loopbackPair(t) // the client never reads
	ci := &connInfo{conn: s, local: s.LocalAddr().(*net.TCPAddr).AddrPort(), caller: container}
	ci.once.Do(func() {})
	put := httptest.NewRequest(http.MethodPut, "http://127.0.0.1:80/latest/api/token", nil)
	opts := imds.Options{Enabled: true, HopLimit: 3}
	if st, _ := g.Admit(&imds.Request{HTTP: put, Conn: ci, Route: imds.RouteToken}, opts); st != 0 || ci.ttl != 2 {
		t.Fatalf("token: status %d, TTL %d; want 0 and 2", st, ci.ttl)
	}
	// The answer, and more, until the client's window is full.
	_ = s.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		if _, err := s.Write(make([]byte, 64<<10)); err != nil {
			break
		}
	}
	if g.delivered(ci) {
		t.Fatal("the send queue is empty although the client read nothing")
	}
	get := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:80/latest/meta-data/", nil)
	g.Admit(&imds.Request{HTTP: get, Conn: ci, Route: imds.RouteMetaData}, opts)
	if ci.ttl != 2 {
		t.Errorf("after an IMDSv1 request with the token answer undelivered: TTL %d, want 2 kept", ci.ttl)
	}
}

// appSnapshot is a snapshot serving the role "app" for an hour.
func appSnapshot() *snapshot.Snapshot {
	return snapshot.New(snapshot.Role{Name: "app"}, snapshot.Credentials{AccessKeyID: "ASIAEXAMPLEKEY000001",
		SecretAccessKey: "secret", SessionToken: "token", Expiration: time.Now().Add(time.Hour)}, time.Now())
}

// flushAudit writes out the audit records g has made: its writer, told
// to stop at once, writes what is waiting.
func flushAudit(t *testing.T, g *gate) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.audit.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestGateAuditNamesUserUnits: a unit under a user's own service manager
// is recorded as its cgroup path, so a user's "nginx.service" cannot pass
// for the system's in the audit trail; a system unit is recorded by name.
func TestGateAuditNamesUserUnits(t *testing.T) {
	g := newTestGate(t, config.Default(), "127.0.0.1:80")
	var out bytes.Buffer
	g.audit = audit.New(&out, "text", nil)
	snap := appSnapshot()
	for _, c := range []access.Caller{
		{Addr: netip.MustParseAddr("127.0.0.1"), Local: true, Identified: true, UID: 1000,
			Unit: "nginx.service", Cgroup: "/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service"},
		{Addr: netip.MustParseAddr("127.0.0.1"), Local: true, Identified: true, UID: 33,
			Unit: "nginx.service", Cgroup: "/system.slice/nginx.service"},
	} {
		req := request(http.MethodGet, "/latest/meta-data/iam/security-credentials/app", "127.0.0.1", c)
		req.Route, req.Snapshot = imds.RouteCredentials, snap
		g.Served(req, http.StatusOK)
	}
	flushAudit(t, g)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d audit records, want 2:\n%s", len(lines), out.String())
	}
	if !strings.Contains(lines[0], " uid=1000 cgroup=/user.slice/user-1000.slice/") || strings.Contains(lines[0], "unit=") {
		t.Errorf("a user's unit recorded as: %s", lines[0])
	}
	if !strings.Contains(lines[1], " uid=33 unit=nginx.service ") {
		t.Errorf("a system unit recorded as: %s", lines[1])
	}
}

// TestGateTokenBinding: with bind_tokens_to_uid, a token is bound to the
// local user who asked; one asked for by a local caller the kernel did not
// name is bound to no one, so neither that caller nor any user can use it;
// a container's is not bound (it has no local user).
func TestGateTokenBinding(t *testing.T) {
	cfg := config.Default()
	cfg.Access.BindTokensToUID = true
	g := newTestGate(t, cfg, "127.0.0.1:80")
	tokens, err := imds.NewTokens(time.Now)
	if err != nil {
		t.Fatal(err)
	}
	issued := func(c access.Caller) string {
		return tokens.Issue(60, g.TokenBinding(request(http.MethodPut, "/latest/api/token", "127.0.0.1", c)))
	}
	for _, tc := range []struct {
		name      string
		asker     access.Caller
		presenter access.Caller
		want      imds.TokenStatus
	}{
		{"own token", localWeb, localWeb, imds.TokenValid},
		{"another user's token", localRoot, localWeb, imds.TokenWrongUser},
		{"unidentified asker, same caller", unknown, unknown, imds.TokenWrongUser},
		{"unidentified asker, root presents it", unknown, localRoot, imds.TokenWrongUser},
		{"container", container, container, imds.TokenValid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.presenter
			if got := tokens.Verify(issued(tc.asker), p.UID, p.Identified); got != tc.want {
				t.Errorf("Verify = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestGateTokenBindingTurnedOn: rules with bind_tokens_to_uid swapped in,
// as a reload does, bind the tokens issued from then on; those issued
// before stay valid for anyone until they expire.
func TestGateTokenBindingTurnedOn(t *testing.T) {
	g := newTestGate(t, config.Default(), "127.0.0.1:80")
	tokens, err := imds.NewTokens(time.Now)
	if err != nil {
		t.Fatal(err)
	}
	issue := func() string {
		return tokens.Issue(60, g.TokenBinding(request(http.MethodPut, "/latest/api/token", "127.0.0.1", localRoot)))
	}
	before := issue()
	cfg := config.Default()
	cfg.Access.BindTokensToUID = true
	rules, err := compileRules(cfg, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:80")}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	g.rules.Store(rules)
	after := issue()
	if got := tokens.Verify(before, localWeb.UID, true); got != imds.TokenValid {
		t.Errorf("a token issued before, presented by another user: %v, want valid", got)
	}
	if got := tokens.Verify(after, localWeb.UID, true); got != imds.TokenWrongUser {
		t.Errorf("a token issued after, presented by another user: %v, want wrong user", got)
	}
	if got := tokens.Verify(after, localRoot.UID, true); got != imds.TokenValid {
		t.Errorf("a token issued after, presented by its user: %v, want valid", got)
	}
}

// TestGateRefusalRecordsAreLimited: refusals beyond the limit are counted,
// not recorded, and a notice says how many were left out (here the one the
// agent logs once its server has stopped); credential answers are recorded
// whatever the limit.
func TestGateRefusalRecordsAreLimited(t *testing.T) {
	g := newTestGate(t, config.Default(), "127.0.0.1:80")
	var out, logs bytes.Buffer
	g.audit = audit.New(&out, "text", nil)
	g.auditLog = slog.New(slog.NewTextHandler(&logs, nil))
	g.noticeAfter = time.Hour
	g.refusals = rate.NewLimiter(rate.Every(time.Hour), 2)
	snap := appSnapshot()
	refuse := func() {
		req := request(http.MethodGet, "/latest/meta-data/iam/security-credentials/app", "127.0.0.1", localWeb)
		req.Route, req.Reason = imds.RouteCredentials, imds.ReasonTokenMissing
		g.Served(req, http.StatusUnauthorized)
	}
	for range 5 {
		refuse()
	}
	req := request(http.MethodGet, "/latest/meta-data/iam/security-credentials/app", "127.0.0.1", localWeb)
	req.Route, req.Snapshot = imds.RouteCredentials, snap
	g.Served(req, http.StatusOK)
	flushAudit(t, g)
	if n := strings.Count(out.String(), "reason=token-missing"); n != 2 {
		t.Errorf("%d refusal records, want the 2 within the limit:\n%s", n, out.String())
	}
	if n := strings.Count(out.String(), `msg="credentials served"`); n != 1 {
		t.Errorf("%d credential records, want 1", n)
	}
	g.noticeSuppressed()
	if !strings.Contains(logs.String(), "not_recorded=3") {
		t.Errorf("the count of refusals left out is not logged:\n%s", logs.String())
	}
	g.noticeSuppressed()
	if n := strings.Count(logs.String(), "refusals not recorded"); n != 1 {
		t.Errorf("%d notices, want 1: a notice with nothing left out since the last:\n%s", n, logs.String())
	}
}

// TestGateDenialsHaveTheirOwnBudget: a flood of requests without a token,
// which anyone can send, spends the refusals' budget, not the policy's: a
// caller the policy refuses is still recorded, by name.
func TestGateDenialsHaveTheirOwnBudget(t *testing.T) {
	g := newTestGate(t, config.Default(), "127.0.0.1:80")
	var out bytes.Buffer
	g.audit = audit.New(&out, "text", nil)
	g.noticeAfter = time.Hour
	g.refusals = rate.NewLimiter(rate.Every(time.Hour), 2)
	g.denials = rate.NewLimiter(rate.Every(time.Hour), 2)
	for range 5 {
		req := request(http.MethodGet, "/latest/meta-data/iam/security-credentials/app", "127.0.0.1", localWeb)
		req.Route, req.Reason = imds.RouteCredentials, imds.ReasonTokenMissing
		g.Served(req, http.StatusUnauthorized)
	}
	for _, reason := range []imds.Reason{imds.ReasonAccessDenied, imds.ReasonTokenWrongUser} {
		req := request(http.MethodGet, "/latest/meta-data/iam/security-credentials/app", "127.0.0.1", localWeb)
		req.Route, req.Reason = imds.RouteCredentials, reason
		g.Served(req, http.StatusForbidden)
	}
	flushAudit(t, g)
	for _, want := range []string{"reason=access-denied", "reason=token-wrong-user"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("after a flood of requests without a token, no record with %s:\n%s", want, out.String())
		}
	}
}

// TestGateHeadIsNoCredentialAnswer: a HEAD of the credentials, answered
// without a body, is no credential answer in the audit trail; a GET is.
func TestGateHeadIsNoCredentialAnswer(t *testing.T) {
	g := newTestGate(t, config.Default(), "127.0.0.1:80")
	var out bytes.Buffer
	g.audit = audit.New(&out, "text", nil)
	snap := appSnapshot()
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		req := request(method, "/latest/meta-data/iam/security-credentials/app", "127.0.0.1", localWeb)
		req.Route, req.Snapshot = imds.RouteCredentials, snap
		g.Served(req, http.StatusOK)
	}
	flushAudit(t, g)
	if n := strings.Count(out.String(), `msg="credentials served"`); n != 1 {
		t.Errorf("%d credential records for a HEAD and a GET, want 1 (the GET's):\n%s", n, out.String())
	}
}

// TestGateRefusalNotice: the refusals left out of the audit trail are told
// in one notice a while (a second; here 20 ms) after the first of them,
// with all those left out by then, though no refusal comes after them; a
// flood gets one notice per interval, not one per refusal.
func TestGateRefusalNotice(t *testing.T) {
	g := newTestGate(t, config.Default(), "127.0.0.1:80")
	var mu sync.Mutex
	var logs bytes.Buffer
	g.audit = audit.New(io.Discard, "text", nil)
	g.auditLog = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	g.noticeAfter = 20 * time.Millisecond
	g.refusals = rate.NewLimiter(0, 0) // every refusal is left out
	refuse := func(n int) {
		for range n {
			req := request(http.MethodGet, "/latest/meta-data/iam/security-credentials/app", "127.0.0.1", localWeb)
			req.Route, req.Reason = imds.RouteCredentials, imds.ReasonTokenMissing
			g.Served(req, http.StatusUnauthorized)
		}
	}
	notices := func(want string) int {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			l := logs.String()
			mu.Unlock()
			if strings.Contains(l, want) || time.Now().After(deadline) {
				if !strings.Contains(l, want) {
					t.Fatalf("no notice with %s:\n%s", want, l)
				}
				return strings.Count(l, "refusals not recorded")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	refuse(100)
	if n := notices("not_recorded=100"); n != 1 {
		t.Errorf("%d notices for one burst, want 1", n)
	}
	refuse(7)
	if n := notices("not_recorded=7"); n != 2 {
		t.Errorf("%d notices after a second burst, want 2", n)
	}
}

// lockedWriter serialises writes to w with mu.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestGateNamesCgroupOffTheAcceptLoop: connValue, on the server's accept
// loop, finds the caller's socket but leaves naming a cgroup the resolver
// has not seen (a walk of the hierarchy) to the first hook that needs the
// caller, on the connection's goroutine.
func TestGateNamesCgroupOffTheAcceptLoop(t *testing.T) {
	g := newTestGate(t, config.Default(), "127.0.0.1:80")
	r, err := caller.NewResolver(caller.Options{Logger: g.log})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	g.resolver = r

	_, server := loopbackPair(t)
	ci := g.connValue(server).(*connInfo)
	if !ci.caller.Identified {
		t.Fatalf("the test's own connection was not identified: %+v", ci.caller)
	}
	if ci.cgroupID == 0 && ci.caller.Cgroup == "" {
		if os.Getenv("CI") != "" { // CI's kernel reports them
			t.Fatal("no cgroup id for the test's own socket")
		}
		t.Skip("no cgroup v2 hierarchy, or the kernel reports no cgroup id for sockets")
	}
	if ci.cgroupID == 0 || ci.caller.Cgroup != "" {
		t.Fatalf("connValue named the cgroup (%q, pending id %d); the walk is the connection's to make", ci.caller.Cgroup, ci.cgroupID)
	}
	req := &imds.Request{HTTP: httptest.NewRequest(http.MethodPut, "http://127.0.0.1/latest/api/token", nil), Conn: ci, Time: time.Now()}
	if _, known := g.CallerUID(req); !known {
		t.Error("the caller's UID is unknown")
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var want string
	for _, l := range strings.Split(string(self), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			want = p
		}
	}
	if ci.caller.Cgroup != want || ci.cgroupID != 0 {
		t.Errorf("after the first hook: cgroup %q (pending id %d), want %q (/proc/self/cgroup)", ci.caller.Cgroup, ci.cgroupID, want)
	}
}

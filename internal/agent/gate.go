package agent

import (
	"cmp"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/imds-agent/imds-agent/internal/access"
	"github.com/imds-agent/imds-agent/internal/audit"
	"github.com/imds-agent/imds-agent/internal/caller"
	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/imds"
	"github.com/imds-agent/imds-agent/internal/metrics"
)

// gate is the agent's imds.Hooks: it finds out who is calling (once per
// connection), applies the Host check, the hop limit, the access policy
// and the optional token rate limit, and feeds metrics and the audit trail.
type gate struct {
	resolver *caller.Resolver // nil: callers cannot be identified
	metrics  *metrics.Metrics
	audit    *audit.Logger // nil: audit off
	log      *slog.Logger
	probe    string        // the watchdog's own requests carry this header value
	probes   atomic.Uint64 // the watchdog's requests this gate has seen answered
	rules    atomic.Pointer[gateRules]
	warned   atomic.Bool

	// Refusals are recorded at up to refusalRecordRate a second (bursts of
	// refusalRecordBurst): anyone on the host can ask without a token as
	// fast as they like, and their records would push everything else out
	// of the journal. Credential answers are always recorded. The policy's
	// refusals (access denied, a token of another user, the hop limit),
	// which name who was refused, have a budget of their own, so that a
	// flood of requests without a token cannot keep them out.
	refusals    *rate.Limiter // nil: every refusal is recorded
	denials     *rate.Limiter // the policy's refusals; nil: every one is recorded
	suppressed  atomic.Uint64 // refusals not recorded since the last notice of them
	noticeAfter time.Duration // how long after the first of them the notice comes; 0: a second
	auditLog    *slog.Logger  // the notice's logger (component=audit)
}

const (
	refusalRecordRate  = 200
	refusalRecordBurst = 2000
)

func newRefusalLimiter() *rate.Limiter { return rate.NewLimiter(refusalRecordRate, refusalRecordBurst) }

// gateRules is the reloadable part of the gate.
type gateRules struct {
	policy     *access.Policy
	hosts      map[string]bool
	bindTokens bool
	limiter    *access.TokenLimiter // nil: unlimited
}

const probeHeader = "X-Imds-Agent-Probe"

// connInfo is what the agent knows about one client connection (the
// server hands it to the hooks as imds.Request.Conn). The Once identifies
// the caller exactly once, in connValue or, for a request that came without
// a connection record, at its first use. The requests of one connection
// come one after the other (HTTP/1.1), so the rest needs no lock.
type connInfo struct {
	conn          net.Conn
	local, remote netip.AddrPort
	once          sync.Once
	caller        access.Caller
	ttl           int          // the IP TTL / hop limit set on the socket; 0 = the system default
	audit         audit.Repeat // the connection's last audit record, formatted
	// cgroupID is the caller's cgroup while its path is still to be found
	// (by a walk of the hierarchy, on the connection's own goroutine); 0
	// once it is known, or when there is none to find.
	cgroupID uint64
}

// connValue is the server's hook for a new connection: it records the
// connection and identifies the caller. Every request needs the caller (the
// hop limit, token binding, the policy, the audit record), and the look-up
// is cheaper here than on the connection's goroutine: this runs on the
// server's accept loop, whose stack is grown once, while a new connection's
// goroutine starts with a small stack that the look-up's depth made it grow
// and copy once more than net/http alone does (about 2 µs a connection in
// the cold flow's profile, where the look-up itself costs 3.6 µs). A
// caller in a cgroup the resolver has not seen yet is named by the first
// hook that needs it, not here: walking the hierarchy takes milliseconds on
// a host with thousands of cgroups, and the accept loop must not wait.
func (g *gate) connValue(c net.Conn) any {
	ci := &connInfo{conn: c}
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ci.remote = a.AddrPort()
	}
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		ci.local = a.AddrPort()
	}
	ci.once.Do(func() { g.identify(ci) })
	return ci
}

// connOf returns the record of req's connection, without identifying the
// caller. A request that came without one gets one from its remote
// address, kept on the request for the hooks that follow.
func (g *gate) connOf(req *imds.Request) *connInfo {
	if ci, ok := req.Conn.(*connInfo); ok {
		return ci
	}
	ci := &connInfo{}
	if ap, err := netip.ParseAddrPort(req.HTTP.RemoteAddr); err == nil {
		ci.remote = ap
	}
	req.Conn = ci
	return ci
}

// callerOf returns req's connection with its caller identified (by
// connValue, or here for a request that came without a connection record)
// and its cgroup named.
func (g *gate) callerOf(req *imds.Request) *connInfo {
	ci := g.connOf(req)
	ci.once.Do(func() { g.identify(ci) })
	if ci.cgroupID != 0 {
		g.nameCgroup(ci)
	}
	return ci
}

func (g *gate) identify(ci *connInfo) {
	ci.caller.Addr = ci.remote.Addr().Unmap()
	if g.resolver != nil && ci.remote.IsValid() {
		info, err := g.resolver.LookupSocket(ci.local, ci.remote)
		if err == nil {
			ci.caller.Local, ci.caller.Identified = info.Local, info.Local
			ci.caller.UID, ci.caller.Unit, ci.caller.Cgroup = info.UID, info.Unit, info.Cgroup
			if info.Local && info.CgroupID != 0 && info.Cgroup == "" {
				ci.cgroupID = info.CgroupID
			}
			return
		}
		if g.warned.CompareAndSwap(false, true) {
			g.log.Warn("cannot identify a caller; it counts as local with an unknown user, and access rules fail closed against it", "error", err)
		}
	}
	// Without an answer, count the caller as local (refusing tokens to
	// everyone would be worse than not enforcing the hop limit), but not as
	// any particular user: the access policy then fails closed.
	ci.caller.Local = true
}

// nameCgroup finds the path and unit of the caller's cgroup, which
// identify left to the connection's goroutine. One attempt per
// connection: a cgroup the walk does not find stays unknown.
func (g *gate) nameCgroup(ci *connInfo) {
	ci.caller.Cgroup, ci.caller.Unit = g.resolver.CgroupOf(ci.cgroupID)
	ci.cgroupID = 0
}

// CallerUID implements imds.Hooks.
func (g *gate) CallerUID(req *imds.Request) (uint32, bool) {
	ci := g.callerOf(req)
	return ci.caller.UID, ci.caller.Identified
}

// TokenBinding implements imds.Hooks.
func (g *gate) TokenBinding(req *imds.Request) imds.Binding {
	if !g.rules.Load().bindTokens {
		return imds.Binding{}
	}
	ci := g.callerOf(req)
	if ci.caller.Local && !ci.caller.Identified {
		// A local user the kernel did not name: the token is bound to a
		// UID no process has, so that no caller can use it, rather than
		// left unbound for every user to use.
		return imds.Binding{Bound: true, UID: noUID}
	}
	return imds.Binding{Bound: ci.caller.Identified, UID: ci.caller.UID}
}

// noUID is (uid_t)-1, which the kernel never gives a process.
const noUID = ^uint32(0)

// Admit implements imds.Hooks.
func (g *gate) Admit(req *imds.Request, opts imds.Options) (int, imds.Reason) {
	r := req.HTTP
	rules := g.rules.Load()
	if r.Host != "" && !rules.hostAllowed(r.Host) {
		return http.StatusForbidden, imds.ReasonBadHost
	}
	if req.Route == imds.RouteToken {
		return g.admitToken(req, rules, opts)
	}
	if ci := g.connOf(req); !req.Token && ci.ttl != 0 && g.delivered(ci) {
		// An IMDSv1 request on a connection whose socket was set to the
		// hop limit for an earlier token answer: EC2 answers it normally.
		// Not while that answer is unacknowledged (it did not reach the
		// caller, beyond the limit): the kernel would send it again with
		// the default TTL, and the token would get through. (Should
		// this fail, the answer leaves with the token's hop limit: it
		// reaches the caller, or it does not, as the token did.)
		_ = g.setTTL(ci, 0)
	}
	if rules.policy.Open() {
		return 0, imds.ReasonNone
	}
	class := access.Metadata
	if req.Route.Credentials() {
		class = access.Credentials
	}
	if ok, _ := rules.policy.Decide(class, g.callerOf(req).caller); !ok {
		return http.StatusForbidden, imds.ReasonAccessDenied
	}
	return 0, imds.ReasonNone
}

// admitToken applies the hop limit with EC2's meaning. The token answer
// leaves with IP TTL (IPv6 hop limit) = http_put_response_hop_limit, so a
// client a routed hop away gets nothing. A caller whose socket is not in the
// agent's network namespace (a container) is one hop away, as it is from
// EC2's metadata service, even though its packets are delivered locally: at
// hop limit 1 it gets no answer, at 2 it does (and its answer leaves with a
// TTL one lower, so further routed hops count too).
func (g *gate) admitToken(req *imds.Request, rules *gateRules, opts imds.Options) (int, imds.Reason) {
	ci := g.callerOf(req)
	ttl := opts.HopLimit
	if !ci.caller.Local {
		ttl--
	}
	if ttl < 1 {
		return imds.StatusDrop, imds.ReasonHopLimit
	}
	if !rules.policy.Open() {
		if ok, _ := rules.policy.Decide(access.Metadata, ci.caller); !ok {
			return http.StatusForbidden, imds.ReasonAccessDenied
		}
	}
	if rules.limiter != nil && !rules.limiter.Allow(ci.caller, req.Time) {
		return http.StatusTooManyRequests, imds.ReasonRateLimited
	}
	// An answer to a caller in this namespace is delivered locally and
	// never loses TTL, so only answers that leave for another namespace
	// need the socket option (and its system call).
	if !ci.caller.Local && ci.ttl != ttl {
		if err := g.setTTL(ci, ttl); err != nil {
			// Sent with the default TTL, the token would get past the
			// hop limit: no answer, as for a caller beyond it.
			g.log.Warn("cannot set the hop limit on a connection; its token request gets no answer", "remote", req.HTTP.RemoteAddr, "error", err)
			return imds.StatusDrop, imds.ReasonHopLimit
		}
	}
	return 0, imds.ReasonNone
}

// delivered reports whether the peer has acknowledged everything sent on
// the connection (SIOCOUTQ: nothing unsent or unacknowledged). It reports
// false when it cannot tell.
func (g *gate) delivered(ci *connInfo) bool {
	sc, ok := ci.conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	queued, qerr := -1, error(nil)
	if err := raw.Control(func(fd uintptr) { queued, qerr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil || qerr != nil {
		return false
	}
	return queued == 0
}

// setTTL sets the socket's IP TTL (IPv6 unicast hop limit); 0 restores
// the system default. A connection that is no socket has none to set.
func (g *gate) setTTL(ci *connInfo, ttl int) error {
	sc, ok := ci.conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if errors.Is(err, errors.ErrUnsupported) {
		return nil
	}
	if err != nil {
		return err
	}
	v := ttl
	if v == 0 {
		v = -1 // the kernel's default
	}
	level, opt := syscall.IPPROTO_IP, syscall.IP_TTL
	if ci.local.Addr().Is6() && !ci.local.Addr().Is4In6() {
		level, opt = syscall.IPPROTO_IPV6, syscall.IPV6_UNICAST_HOPS
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), level, opt, v) }); err != nil || serr != nil {
		return cmp.Or(err, serr)
	}
	ci.ttl = ttl
	return nil
}

// Served implements imds.Hooks: metrics for every request, an audit record
// for every credential answer and every refusal.
func (g *gate) Served(req *imds.Request, status int) {
	// The watchdog's probe asks for "/" only; no other request pays for
	// looking for its header.
	if g.probe != "" && req.Route == imds.RouteVersions {
		if v := req.HTTP.Header[probeHeader]; len(v) == 1 && v[0] == g.probe {
			g.probes.Add(1)
			return
		}
	}
	g.metrics.Request(req.Route, status, req.Reason)
	if g.audit == nil {
		return
	}
	// A HEAD's answer has no body: no credentials were given.
	secret := req.Route.Secret() && status == http.StatusOK && req.HTTP.Method != http.MethodHead
	if !secret && !refusal(req.Reason) {
		return
	}
	limiter := g.refusals
	if policyRefusal(req.Reason) {
		limiter = g.denials
	}
	if !secret && limiter != nil && !limiter.Allow() {
		if g.suppressed.Add(1) == 1 {
			// The first left out since the last notice: the next one
			// comes a second from now, with all those left out by then,
			// so a flood gets one notice a second and its end is told.
			after := g.noticeAfter
			if after == 0 {
				after = time.Second
			}
			time.AfterFunc(after, g.noticeSuppressed)
		}
		return
	}
	ci := g.callerOf(req)
	rec := audit.Record{
		Time:     req.Time,
		Decision: "deny",
		Route:    req.Route.String(),
		Status:   status,
		Remote:   req.HTTP.RemoteAddr,
		Local:    ci.caller.Local,
		UID:      ci.caller.UID,
		UIDKnown: ci.caller.Identified,
		Unit:     ci.caller.SystemUnit(), // a user's own unit shows as its cgroup path
		Cgroup:   ci.caller.Cgroup,
	}
	if secret {
		rec.Decision = "allow"
	} else {
		rec.Reason = req.Reason.String()
	}
	if s := req.Snapshot; s != nil {
		rec.Role = s.Role.Name
		if secret {
			rec.KeySuffix = s.KeySuffix
		}
	}
	g.audit.RecordRepeat(rec, &ci.audit)
}

// noticeSuppressed logs how many refusals were left out of the audit trail
// since the last notice, if any were. The agent calls it once more when
// the server has stopped, for those its timer would tell too late.
func (g *gate) noticeSuppressed() {
	if n := g.suppressed.Swap(0); n > 0 {
		g.auditLog.Warn("refusals not recorded in the audit trail: more than the limit a second",
			"not_recorded", n, "limit_per_second", refusalRecordRate)
	}
}

// policyRefusal reports whether r is a decision of the access policy about
// an identified caller, rather than a malformed or unauthenticated request.
func policyRefusal(r imds.Reason) bool {
	return r == imds.ReasonAccessDenied || r == imds.ReasonTokenWrongUser || r == imds.ReasonHopLimit
}

// refusal reports whether a reason is a refusal worth auditing (as opposed
// to a missing path or a malformed request).
func refusal(r imds.Reason) bool {
	switch r {
	case imds.ReasonTokenMissing, imds.ReasonTokenInvalid, imds.ReasonTokenExpired, imds.ReasonTokenWrongUser,
		imds.ReasonHopLimit, imds.ReasonAccessDenied, imds.ReasonRateLimited, imds.ReasonBadHost,
		imds.ReasonForwarded, imds.ReasonEndpointDisabled:
		return true
	}
	return false
}

// compileRules builds the reloadable rules from a configuration and the
// addresses actually listened on.
func compileRules(cfg *config.Config, listening []netip.AddrPort, log *slog.Logger) (*gateRules, error) {
	p, err := access.Compile(cfg.Access, log)
	if err != nil {
		return nil, err
	}
	r := &gateRules{policy: p, hosts: allowedHosts(listening), bindTokens: cfg.Access.BindTokensToUID}
	if cfg.Access.TokenRateLimit > 0 {
		r.limiter = access.NewTokenLimiter(cfg.Access.TokenRateLimit)
	}
	return r, nil
}

// allowedHosts are the Host header values a legitimate client sends, in
// canonicalHost's form: the addresses served, with their port unless it is
// 80, localhost on the loopback ones, and EC2's instance-data names. A
// browser lured into a DNS-rebinding attack sends the attacker's host name
// instead.
func allowedHosts(listening []netip.AddrPort) map[string]bool {
	hosts := map[string]bool{"instance-data": true, "instance-data.ec2.internal": true}
	for _, ap := range listening {
		addr := ap.Addr().Unmap()
		hosts[joinHost(hostOfAddr(addr), ap.Port())] = true
		if addr.IsLoopback() {
			hosts[joinHost("localhost", ap.Port())] = true
		}
	}
	return hosts
}

// hostAllowed reports whether a request's Host header names the service.
// The SDKs send the forms allowedHosts lists; any other spelling of the
// same host (upper case, an explicit port 80, a trailing dot, another
// form of an IPv6 address) is put in that form first.
func (r *gateRules) hostAllowed(host string) bool {
	if r.hosts[host] {
		return true
	}
	c, ok := canonicalHost(host)
	return ok && r.hosts[c]
}

// canonicalHost returns a Host header value (RFC 9110: host, then an
// optional port) in one spelling: a name in lower case without a trailing
// dot, an IP address in its canonical form (IPv6 in brackets), then the
// port unless it is 80. It reports false for a value that is not a host.
func canonicalHost(hostport string) (string, bool) {
	host, port := hostport, ""
	bracketed := strings.HasPrefix(hostport, "[")
	if bracketed {
		end := strings.IndexByte(hostport, ']')
		if end < 0 {
			return "", false
		}
		host, port = hostport[1:end], hostport[end+1:]
		if port != "" && port[0] != ':' {
			return "", false
		}
		port = strings.TrimPrefix(port, ":")
	} else if i := strings.LastIndexByte(hostport, ':'); i >= 0 {
		host, port = hostport[:i], hostport[i+1:]
	}
	n := uint64(80)
	if port != "" {
		var err error
		if n, err = strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return "", false
		}
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		// Brackets hold an IPv6 address, and only they may.
		if addr.Zone() != "" || addr.Is6() != bracketed {
			return "", false
		}
		return joinHost(hostOfAddr(addr.Unmap()), uint16(n)), true
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" || bracketed || strings.ContainsAny(host, "[]:") {
		return "", false
	}
	return joinHost(host, uint16(n)), true
}

// hostOfAddr spells addr as a Host header does: IPv6 in brackets.
func hostOfAddr(addr netip.Addr) string {
	if addr.Is6() {
		return "[" + addr.String() + "]"
	}
	return addr.String()
}

// joinHost appends the port to host unless it is HTTP's default, 80.
func joinHost(host string, port uint16) string {
	if port == 80 {
		return host
	}
	return host + ":" + strconv.Itoa(int(port))
}

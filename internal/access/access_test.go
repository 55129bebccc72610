package access

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/imds-agent/imds-agent/internal/config"
)

func compileT(t testing.TB, c config.Access) *Policy {
	t.Helper()
	p, err := Compile(c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	root      = Caller{Identified: true, Addr: netip.MustParseAddr("127.0.0.1"), Local: true, UID: 0, Cgroup: "/system.slice/sshd.service", Unit: "sshd.service"}
	wwwData   = Caller{Identified: true, Addr: netip.MustParseAddr("169.254.169.254"), Local: true, UID: 33, Cgroup: "/system.slice/nginx.service", Unit: "nginx.service"}
	app       = Caller{Identified: true, Addr: netip.MustParseAddr("127.0.0.1"), Local: true, UID: 1000, Cgroup: "/system.slice/app.service", Unit: "app.service"}
	userScope = Caller{Identified: true, Addr: netip.MustParseAddr("127.0.0.1"), Local: true, UID: 1001, Cgroup: "/user.slice/user-1001.slice/user@1001.service/app.slice/app.service", Unit: "app.service"}
	container = Caller{Addr: netip.MustParseAddr("172.17.0.2"), Local: false}
	// unidentified: the kernel did not say who owns the socket.
	unidentified = Caller{Addr: netip.MustParseAddr("127.0.0.1"), Local: true}
	// newService: identified, but its cgroup is not known yet.
	newService = Caller{Addr: netip.MustParseAddr("127.0.0.1"), Local: true, Identified: true, UID: 1000}
)

func TestUnknownUserInDenyRule(t *testing.T) {
	_, err := Compile(config.Access{Credentials: config.Rules{Deny: []string{"user:no-such-user-here"}}}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "could not be enforced") {
		t.Errorf("err = %v", err)
	}
}

func TestDecide(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rules  config.Access
		class  Class
		caller Caller
		want   bool
		rule   string
	}{
		{"open policy", config.Access{}, Credentials, wwwData, true, ""},
		{"deny uid", config.Access{Credentials: config.Rules{Deny: []string{"uid:33"}}}, Credentials, wwwData, false, "deny uid:33"},
		{"deny uid other caller", config.Access{Credentials: config.Rules{Deny: []string{"uid:33"}}}, Credentials, app, true, ""},
		{"deny uid leaves metadata", config.Access{Credentials: config.Rules{Deny: []string{"uid:33"}}}, Metadata, wwwData, true, ""},
		{"deny user by name", config.Access{Credentials: config.Rules{Deny: []string{"user:root"}}}, Credentials, root, false, "deny user:root"},
		{"deny group by name", config.Access{Credentials: config.Rules{Deny: []string{"group:root"}}}, Credentials, root, false, "deny group:root"},
		{"deny gid", config.Access{Credentials: config.Rules{Deny: []string{"gid:0"}}}, Credentials, root, false, "deny gid:0"},
		{"deny unit", config.Access{Credentials: config.Rules{Deny: []string{"unit:nginx.service"}}}, Credentials, wwwData, false, "deny unit:nginx.service"},
		{"allow unit", config.Access{Credentials: config.Rules{Allow: []string{"unit:app.service"}}}, Credentials, app, true, "allow unit:app.service"},
		{"allow unit not listed", config.Access{Credentials: config.Rules{Allow: []string{"unit:app.service"}}}, Credentials, wwwData, false, "not in the allow list"},
		{"user scope cannot pose as a system unit", config.Access{Credentials: config.Rules{Allow: []string{"unit:app.service"}}}, Credentials, userScope, false, "not in the allow list"},
		{"cgroup prefix", config.Access{Credentials: config.Rules{Allow: []string{"cgroup:/system.slice/app.service"}}}, Credentials, app, true, "allow cgroup:/system.slice/app.service"},
		{"cgroup prefix is per component", config.Access{Credentials: config.Rules{Allow: []string{"cgroup:/system.slice/app"}}}, Credentials, app, false, "not in the allow list"},
		{"cidr allows container", config.Access{Credentials: config.Rules{Allow: []string{"cidr:172.17.0.0/16"}}}, Credentials, container, true, "allow cidr:172.17.0.0/16"},
		{"cidr never matches an identified local caller", config.Access{Credentials: config.Rules{Allow: []string{"uid:0", "cidr:172.17.0.0/16"}}}, Credentials, Caller{Identified: true, Local: true, UID: 33, Addr: netip.MustParseAddr("172.17.0.1")}, false, "not in the allow list"},
		{"user rule never matches a container", config.Access{Credentials: config.Rules{Deny: []string{"uid:0"}}}, Credentials, Caller{Addr: container.Addr, UID: 0}, true, ""},
		{"deny wins over allow", config.Access{Credentials: config.Rules{Allow: []string{"all"}, Deny: []string{"uid:33"}}}, Credentials, wwwData, false, "deny uid:33"},
		{"unknown user in an allow rule matches no one", config.Access{Credentials: config.Rules{Allow: []string{"user:no-such-user-here"}}}, Credentials, wwwData, false, "not in the allow list"},
		{"unidentified local caller: deny by user fails closed", config.Access{Credentials: config.Rules{Deny: []string{"uid:33"}}}, Credentials, unidentified, false, "deny uid:33"},
		{"unidentified local caller: allow by user does not match", config.Access{Credentials: config.Rules{Allow: []string{"uid:0"}}}, Credentials, unidentified, false, "not in the allow list"},
		{"unidentified local caller: allow by cidr does not match", config.Access{Credentials: config.Rules{Allow: []string{"cidr:127.0.0.0/8"}}}, Credentials, unidentified, false, "not in the allow list"},
		{"unidentified local caller: deny by cidr holds", config.Access{Credentials: config.Rules{Deny: []string{"cidr:127.0.0.0/8"}}}, Credentials, unidentified, false, "deny cidr:127.0.0.0/8"},
		{"unidentified local caller: deny by another cidr does not match", config.Access{Credentials: config.Rules{Deny: []string{"cidr:172.17.0.0/16"}}}, Credentials, unidentified, true, ""},
		{"unknown cgroup: deny by unit fails closed", config.Access{Credentials: config.Rules{Deny: []string{"unit:nginx.service"}}}, Credentials, newService, false, "deny unit:nginx.service"},
		{"unknown cgroup: allow by unit does not match", config.Access{Credentials: config.Rules{Allow: []string{"unit:app.service"}}}, Credentials, newService, false, "not in the allow list"},
		{"unknown cgroup: deny by user still decides", config.Access{Credentials: config.Rules{Deny: []string{"uid:33"}}}, Credentials, newService, true, ""},
		{"metadata rules", config.Access{Metadata: config.Rules{Deny: []string{"cidr:172.16.0.0/12"}}}, Metadata, container, false, "deny cidr:172.16.0.0/12"},
		{"the root cgroup is no unit's: deny", config.Access{Credentials: config.Rules{Deny: []string{"unit:nginx.service"}}}, Credentials, Caller{Identified: true, Local: true, UID: 33, Addr: netip.MustParseAddr("127.0.0.1"), Cgroup: "/"}, false, "deny unit:nginx.service"},
		{"the root cgroup is no unit's: allow", config.Access{Credentials: config.Rules{Allow: []string{"cgroup:/"}}}, Credentials, Caller{Identified: true, Local: true, UID: 33, Addr: netip.MustParseAddr("127.0.0.1"), Cgroup: "/"}, false, "not in the allow list"},
		{"cidr matches a link-local peer whatever its zone", config.Access{Credentials: config.Rules{Deny: []string{"cidr:fe80::/10"}}}, Credentials, Caller{Addr: netip.MustParseAddr("fe80::1%eth0")}, false, "deny cidr:fe80::/10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, rule := compileT(t, tc.rules).Decide(tc.class, tc.caller)
			if got != tc.want || rule != tc.rule {
				t.Errorf("Decide = %v %q, want %v %q", got, rule, tc.want, tc.rule)
			}
		})
	}
}

func TestGroupMembershipCached(t *testing.T) {
	p := compileT(t, config.Access{Credentials: config.Rules{Deny: []string{"gid:4242"}}})
	calls := 0
	now := time.Now()
	p.groups.lookup = func(uid uint32) ([]uint32, error) { calls++; return []uint32{100, 4242}, nil }
	p.groups.now = func() time.Time { return now }
	for i := 0; i < 10; i++ {
		if ok, _ := p.Decide(Credentials, app); ok {
			t.Fatal("member of gid 4242 allowed")
		}
	}
	if calls != 1 {
		t.Errorf("%d group look-ups for one user, want 1 (cached)", calls)
	}
	now = now.Add(2 * time.Minute)
	p.Decide(Credentials, app)
	if calls != 2 {
		t.Errorf("cache not refreshed after its TTL")
	}
}

func TestTokenLimiter(t *testing.T) {
	l := NewTokenLimiter(10)
	now := time.Now()
	allowed := 0
	for i := 0; i < 100; i++ {
		if l.Allow(app, now) {
			allowed++
		}
	}
	if allowed != 10 {
		t.Errorf("%d tokens allowed in a burst, want 10", allowed)
	}
	if !l.Allow(wwwData, now) {
		t.Error("another user shares the first one's limit")
	}
	if !l.Allow(app, now.Add(time.Second)) {
		t.Error("the limit did not refill")
	}
	// Callers elsewhere: per IPv4 address, per IPv6 /64.
	from := func(addr string) Caller { return Caller{Addr: netip.MustParseAddr(addr)} }
	l = NewTokenLimiter(1)
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"2001:db8:0:1::1", true},
		{"2001:db8:0:1::2", false}, // the same /64
		{"2001:db8:0:1:ffff::9", false},
		{"2001:db8:0:2::1", true}, // another /64
		{"192.0.2.1", true},
		{"192.0.2.2", true},
		{"::ffff:192.0.2.1", false}, // 192.0.2.1 again
	} {
		if got := l.Allow(from(tc.addr), now); got != tc.want {
			t.Errorf("a token for %s: %v, want %v", tc.addr, got, tc.want)
		}
	}
}

// FuzzDecide: any configured selectors and any caller: no panic, and a
// caller matched by a deny rule is never allowed.
func FuzzDecide(f *testing.F) {
	f.Add("uid:33", "all", uint32(33), true, "10.0.0.1", "/system.slice/a.service", "a.service")
	f.Add("cidr:10.0.0.0/8", "unit:a.service", uint32(0), false, "10.1.2.3", "", "")
	f.Add("cgroup:/user.slice", "group:root", uint32(1000), true, "::1", "/user.slice/user-1000.slice", "")
	f.Add("gid:0", "user:root", uint32(0), true, "127.0.0.1", "/", "")
	f.Fuzz(func(t *testing.T, deny, allow string, uid uint32, local bool, addr, cgroup, unit string) {
		a, _ := netip.ParseAddr(addr)
		c := Caller{Addr: a, Local: local, Identified: local && uid%2 == 0, UID: uid, Cgroup: cgroup, Unit: unit}
		rules := config.Access{Credentials: config.Rules{Deny: []string{deny}, Allow: []string{allow}}}
		p, err := Compile(rules, slog.New(slog.DiscardHandler))
		if err != nil {
			if config.CheckSelector(deny) == nil && config.CheckSelector(allow) == nil && !strings.Contains(err.Error(), "could not be enforced") {
				t.Fatalf("valid selectors failed to compile: %v", err)
			}
			return
		}
		ok, rule := p.Decide(Credentials, c)
		denyOnly := compileT(t, config.Access{Credentials: config.Rules{Deny: []string{deny}}})
		if denied, _ := denyOnly.Decide(Credentials, c); !denied && ok {
			t.Fatalf("caller %+v matched deny %q but was allowed (%s)", c, deny, rule)
		}
		if !ok && !strings.HasPrefix(rule, "deny ") && rule != "not in the allow list" {
			t.Fatalf("refusal without a reason: %q", rule)
		}
	})
}

// TestTokenLimiterBounded: however many callers come, at most maxTracked
// are remembered, the least recently seen going first, and a caller still
// being seen keeps its allowance.
func TestTokenLimiterBounded(t *testing.T) {
	l := NewTokenLimiter(1)
	now := time.Now()
	if !l.Allow(app, now) || l.Allow(app, now) {
		t.Fatal("one token a second: the second should be refused")
	}
	for uid := uint32(0); uid < 3*maxTracked; uid++ {
		l.Allow(Caller{Identified: true, Local: true, UID: 100000 + uid}, now)
		if uid%1000 == 0 {
			l.Allow(app, now) // app keeps being seen, and keeps being refused
		}
	}
	if len(l.callers) != maxTracked || l.order.Len() != maxTracked {
		t.Errorf("%d callers remembered, want %d", len(l.callers), maxTracked)
	}
	if l.Allow(app, now) {
		t.Error("a caller seen all along got a fresh allowance")
	}
}

// TestGroupsUnknown: a user whose groups cannot be read (not in the user
// database this static build reads) counts against group rules, as an
// unidentified caller does: a group deny rule matches it, a group allow
// rule does not.
func TestGroupsUnknown(t *testing.T) {
	caller := Caller{Identified: true, Local: true, UID: 5000, Addr: netip.MustParseAddr("127.0.0.1")}
	for _, tc := range []struct {
		rules config.Rules
		want  bool
		rule  string
	}{
		{config.Rules{Deny: []string{"gid:4242"}}, false, "deny gid:4242"},
		{config.Rules{Allow: []string{"gid:4242"}}, false, "not in the allow list"},
		{config.Rules{Deny: []string{"uid:33"}}, true, ""},
	} {
		p := compileT(t, config.Access{Credentials: tc.rules})
		p.groups.lookup = func(uint32) ([]uint32, error) { return nil, errors.New("user: unknown userid 5000") }
		if got, rule := p.Decide(Credentials, caller); got != tc.want || rule != tc.rule {
			t.Errorf("%+v: Decide = %v %q, want %v %q", tc.rules, got, rule, tc.want, tc.rule)
		}
	}
}

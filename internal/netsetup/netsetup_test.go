package netsetup

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	v4 = netip.MustParseAddr("169.254.169.254")
	v6 = netip.MustParseAddr("fd00:ec2::254")
)

// logBuf collects log lines for assertions.
type logBuf struct{ bytes.Buffer }

func (b *logBuf) count(substr string) int { return strings.Count(b.String(), substr) }

// ensureForced runs Ensure with o forced and checks that it succeeds,
// logging warning once.
func ensureForced(t *testing.T, h Netlink, o Options, logs *logBuf, warning string) Result {
	t.Helper()
	o.Force = true
	res, err := Ensure(h, o)
	if err != nil {
		t.Fatalf("forced Ensure: %v", err)
	}
	if n := logs.count(warning); n != 1 {
		t.Errorf("%d forced warnings, want 1:\n%s", n, logs)
	}
	return res
}

func testOptions(t *testing.T) (Options, *logBuf) {
	t.Helper()
	var buf logBuf
	return Options{
		Link:    "imds0",
		IPv4:    v4,
		IPv6:    v6,
		SysRoot: t.TempDir(), // no DMI files: not EC2
		Logger:  slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}, &buf
}

// ourLink adds a bridge named imds0 with the agent's alias.
func ourLink(f *fakeNetlink, up bool) {
	a := netlink.LinkAttrs{Name: "imds0", Alias: Alias}
	if up {
		a.Flags = net.FlagUp
	}
	f.addLink(&netlink.Bridge{LinkAttrs: a})
}

func TestEnsureCreates(t *testing.T) {
	tests := []struct {
		name     string
		noDummy  bool
		wantKind string
		wantAdd  []string
	}{
		{"dummy", false, KindDummy, []string{"LinkAdd dummy imds0"}},
		{"bridge where the kernel has no dummy", true, KindBridge, []string{"LinkAdd dummy imds0", "LinkAdd bridge imds0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			f.noDummy = tc.noDummy
			o, logs := testOptions(t)
			res, err := Ensure(f, o)
			if err != nil {
				t.Fatal(err)
			}
			want := Result{Link: "imds0", Kind: tc.wantKind, Addrs: []netip.Addr{v4, v6}, IPv6: true, Created: true, Changed: true}
			if d := cmp.Diff(want, res, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
				t.Errorf("result (-want +got):\n%s", d)
			}
			wantCalls := append(tc.wantAdd,
				"LinkSetAlias imds0 imds-agent managed",
				"LinkSetUp imds0",
				"AddrReplace 169.254.169.254/32 imds0",
				"AddrReplace fd00:ec2::254/128 imds0")
			if d := cmp.Diff(wantCalls, f.calls); d != "" {
				t.Errorf("calls (-want +got):\n%s", d)
			}
			l := f.link("imds0")
			if l.Type() != tc.wantKind || l.Attrs().Alias != Alias || l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("link = %s alias %q flags %v", l.Type(), l.Attrs().Alias, l.Attrs().Flags)
			}
			for _, a := range f.addrs {
				switch {
				case a.IP.Equal(v4.AsSlice()) && a.Scope != unix.RT_SCOPE_LINK:
					t.Errorf("%s: scope %d, want link scope", a.IPNet, a.Scope)
				case a.IP.Equal(v6.AsSlice()) && a.Flags&unix.IFA_F_NODAD == 0:
					t.Errorf("%s: flags %#x, want IFA_F_NODAD", a.IPNet, a.Flags)
				}
			}
			fallback := 0
			if tc.noDummy {
				fallback = 1
			}
			if n := logs.count("no dummy link type"); n != fallback {
				t.Errorf("%d fallback log lines, want %d:\n%s", n, fallback, logs)
			}
		})
	}
}

func TestEnsureIdempotent(t *testing.T) {
	f := newFake()
	f.noDummy = true
	o, logs := testOptions(t)
	first, err := Ensure(f, o)
	if err != nil {
		t.Fatal(err)
	}
	calls := len(f.calls)
	second, err := Ensure(f, o)
	if err != nil {
		t.Fatal(err)
	}
	if second.Changed || second.Created {
		t.Errorf("second Ensure: %+v, want nothing changed", second)
	}
	if len(f.calls) != calls {
		t.Errorf("second Ensure made calls: %v", f.calls[calls:])
	}
	if d := cmp.Diff(first.Addrs, second.Addrs, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" || second.Kind != KindBridge || !second.IPv6 {
		t.Errorf("second result %+v differs from first %+v", second, first)
	}
	if n := logs.count("no dummy link type"); n != 1 {
		t.Errorf("fallback logged %d times over two runs, want once (only when creating)", n)
	}
	checked, err := Check(f, o)
	if err != nil {
		t.Fatalf("Check after Ensure: %v", err)
	}
	second.Changed = false
	if d := cmp.Diff(second, checked, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("Check disagrees with Ensure (-ensure +check):\n%s", d)
	}
}

// A link left by an earlier run (restart, crash) is reused and corrected:
// brought up, given the asked addresses, rid of addresses no longer asked
// for; the kernel's IPv6 link-local address is left alone.
func TestEnsureReusesOurLink(t *testing.T) {
	f := newFake()
	ourLink(f, false)
	f.addAddr("imds0", "169.254.169.254/16")
	f.addAddr("imds0", "fd00:ec2::254/128")
	f.addAddr("imds0", "fe80::1/64")
	o, _ := testOptions(t)
	o.IPv6 = netip.Addr{} // IPv6 turned off since
	res, err := Ensure(f, o)
	if err != nil {
		t.Fatal(err)
	}
	want := Result{Link: "imds0", Kind: KindBridge, Addrs: []netip.Addr{v4}, Changed: true}
	if d := cmp.Diff(want, res, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("result (-want +got):\n%s", d)
	}
	wantCalls := []string{
		"LinkSetUp imds0",
		"AddrReplace 169.254.169.254/32 imds0",
		"AddrDel 169.254.169.254/16 imds0",
		"AddrDel fd00:ec2::254/128 imds0",
	}
	if d := cmp.Diff(wantCalls, f.calls); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
	var left []string
	for _, a := range f.addrs {
		left = append(left, a.IPNet.String())
	}
	if d := cmp.Diff([]string{"fe80::1/64", "169.254.169.254/32"}, left); d != "" {
		t.Errorf("addresses left (-want +got):\n%s", d)
	}
}

// Ensure returns only once the kernel has the local routes of the addresses
// it added, and warns (without failing) if they never come.
func TestEnsureWaitsForLocalRoutes(t *testing.T) {
	tests := []struct {
		name      string
		lag       int
		wantSleep int
		wantWarn  int
	}{
		{"routes at once", 0, 0, 0},
		{"routes after a few polls", 7, 3, 0}, // two listings (one per address) per round: the 7th is in round 4
		{"routes never come", -1, int(localRouteWait / localRoutePoll), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			f.localLag = tc.lag
			o, logs := testOptions(t)
			slept := 0
			o.sleep = func(d time.Duration) {
				if d != localRoutePoll {
					t.Errorf("slept %v", d)
				}
				slept++
			}
			res, err := Ensure(f, o)
			if err != nil || !res.IPv6 {
				t.Fatalf("Ensure = %+v, %v", res, err)
			}
			if slept != tc.wantSleep {
				t.Errorf("polled %d times, want %d", slept, tc.wantSleep)
			}
			if n := logs.count("has not installed the local route"); n != tc.wantWarn {
				t.Errorf("%d warnings, want %d:\n%s", n, tc.wantWarn, logs)
			}
		})
	}
}

func TestNotOurs(t *testing.T) {
	tests := []struct {
		name string
		link netlink.Link
		want string
	}{
		{"veth without alias", &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "imds0"}},
			`link not managed by imds-agent: link imds0 (type veth, alias "") exists and was not created by imds-agent`},
		{"bridge with another alias", &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "imds0", Alias: "docker"}},
			`link imds0 (type bridge, alias "docker") exists and was not created by imds-agent`},
		{"our alias on a veth", &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "imds0", Alias: Alias}},
			`link not managed by imds-agent: link imds0 has imds-agent's alias but is of type veth, and imds-agent only creates dummy and bridge links`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			f.addLink(tc.link)
			o, _ := testOptions(t)
			// Setting up asks for the name to be freed or changed; cleaning
			// up, which removes what is the agent's, leaves it alone.
			for name, call := range map[string]func() error{
				"Ensure":  func() error { _, err := Ensure(f, o); return err },
				"Check":   func() error { _, err := Check(f, o); return err },
				"Cleanup": func() error { return Cleanup(f, "imds0", o.Logger) },
			} {
				err := call()
				advice := map[string]string{"Cleanup": "; it is left alone"}[name]
				if advice == "" {
					advice = "; remove it or set listen.link to another name"
				}
				if !errors.Is(err, ErrNotOurs) || !strings.Contains(err.Error(), tc.want+advice) {
					t.Errorf("%s: err = %v\nwant %v containing %q", name, err, ErrNotOurs, tc.want+advice)
				}
			}
			if len(f.calls) != 0 || f.link("imds0") == nil {
				t.Errorf("the foreign link was touched: %v", f.calls)
			}
		})
	}
}

// localRoute adds a route of the local type on lo in table, as `ip route
// add local DST dev lo` does (protocol boot).
func localRoute(f *fakeNetlink, dst string, table int) {
	r := f.route(dst, "", "lo")
	r.Table, r.Type, r.Protocol = table, unix.RTN_LOCAL, unix.RTPROT_BOOT
	if dst == "default" {
		r.Scope = netlink.SCOPE_HOST
	}
}

func TestConflicts(t *testing.T) {
	tests := []struct {
		name  string
		setup func(f *fakeNetlink)
		noV6  bool
		force bool
		want  string // "" = no error
		warn  string // a warning that must be logged
	}{
		{name: "nothing else there", setup: func(f *fakeNetlink) {}},
		{name: "address on another link",
			setup: func(f *fakeNetlink) { f.addAddr("eth0", "169.254.169.254/32") },
			want:  "address conflict: 169.254.169.254 is already on link eth0 (type device); remove it there or choose another address"},
		{name: "address with another prefix on another link",
			setup: func(f *fakeNetlink) { f.addAddr("eth0", "169.254.169.254/16") },
			want:  "169.254.169.254 is already on link eth0"},
		{name: "IPv6 address on another link",
			setup: func(f *fakeNetlink) { f.addAddr("eth0", "fd00:ec2::254/64") },
			want:  "address conflict: fd00:ec2::254 is already on link eth0 (type device)"},
		{name: "address on another link, forced", force: true,
			setup: func(f *fakeNetlink) { f.addAddr("eth0", "169.254.169.254/32") },
			want:  "169.254.169.254 is already on link eth0"},
		{name: "host route via a gateway on another link",
			setup: func(f *fakeNetlink) { f.route("169.254.169.254/32", "10.0.0.1", "eth0") },
			want:  "address conflict: route 169.254.169.254/32 via 10.0.0.1 dev eth0 table main sends 169.254.169.254 elsewhere (a route more specific than 169.254.0.0/16 is aimed at the address); the host seems to reach a real metadata service this way: remove the route, or pass --force to claim the address anyway"},
		{name: "on-link host route",
			setup: func(f *fakeNetlink) { f.route("169.254.169.254/32", "", "eth0") },
			want:  "route 169.254.169.254/32 dev eth0 table main sends 169.254.169.254 elsewhere"},
		{name: "a /24 around the address",
			setup: func(f *fakeNetlink) { f.route("169.254.169.0/24", "", "eth0") },
			want:  "route 169.254.169.0/24 dev eth0 table main"},
		{name: "zeroconf /16 on-link is harmless",
			setup: func(f *fakeNetlink) { f.route("169.254.0.0/16", "", "eth0") }},
		{name: "/16 via a gateway",
			setup: func(f *fakeNetlink) { f.route("169.254.0.0/16", "10.0.0.1", "eth0") },
			want:  "route 169.254.0.0/16 via 10.0.0.1 dev eth0 table main sends 169.254.169.254 elsewhere (link-local addresses are never routed through a gateway unless on purpose)"},
		{name: "blackhole host route",
			setup: func(f *fakeNetlink) { f.route("169.254.169.254/32", "", "").Type = unix.RTN_BLACKHOLE },
			want:  "route blackhole 169.254.169.254/32 table main sends 169.254.169.254 elsewhere"},
		{name: "prohibit for the whole link-local range",
			setup: func(f *fakeNetlink) { f.route("169.254.0.0/16", "", "").Type = unix.RTN_PROHIBIT },
			want:  "(a prohibit route for the link-local range)"},
		{name: "default route is never a conflict",
			setup: func(f *fakeNetlink) { f.route("default", "10.0.0.1", "eth0") }},
		{name: "a VPN's half of the address space is too broad",
			setup: func(f *fakeNetlink) { f.route("128.0.0.0/1", "10.8.0.1", "eth0") }},
		{name: "unrelated route",
			setup: func(f *fakeNetlink) { f.route("10.0.0.0/8", "", "eth0") }},
		{name: "host route in another table",
			setup: func(f *fakeNetlink) { f.route("169.254.169.254/32", "10.0.0.1", "eth0").Table = 100 },
			want:  "route 169.254.169.254/32 via 10.0.0.1 dev eth0 table 100"},
		{name: "the kernel's local route for an address, on lo as for IPv6 before Linux 4.13",
			setup: func(f *fakeNetlink) {
				r := f.route("fd00:ec2::254/128", "", "lo")
				r.Table, r.Type, r.Protocol = unix.RT_TABLE_LOCAL, unix.RTN_LOCAL, unix.RTPROT_KERNEL
			}},
		{name: "the kernel's local route for the prefix of an address on lo",
			setup: func(f *fakeNetlink) {
				r := f.route("169.254.0.0/16", "", "lo")
				r.Table, r.Type, r.Protocol = unix.RT_TABLE_LOCAL, unix.RTN_LOCAL, unix.RTPROT_KERNEL
			},
			want: "route local 169.254.0.0/16 dev lo table local makes 169.254.169.254 local though no link has it (a local route claims the whole link-local range)"},
		{name: "a local route on lo claims the address",
			setup: func(f *fakeNetlink) { localRoute(f, "169.254.169.254/32", unix.RT_TABLE_LOCAL) },
			want:  "address conflict: route local 169.254.169.254/32 dev lo table local makes 169.254.169.254 local though no link has it (a /32 local route claims the address); another program on this host seems to serve the address this way: remove the route, or pass --force to claim the address anyway"},
		{name: "a local route for the link-local range",
			setup: func(f *fakeNetlink) { localRoute(f, "169.254.0.0/16", unix.RT_TABLE_LOCAL) },
			want:  "route local 169.254.0.0/16 dev lo table local makes 169.254.169.254 local though no link has it (a local route claims the whole link-local range)"},
		{name: "an IPv6 local route",
			setup: func(f *fakeNetlink) { localRoute(f, "fd00:ec2::254/128", unix.RT_TABLE_LOCAL) },
			want:  "route local fd00:ec2::254/128 dev lo table local makes fd00:ec2::254 local though no link has it (a /128 local route claims the address)"},
		{name: "a local route beside a forwarding one",
			setup: func(f *fakeNetlink) {
				f.route("169.254.169.254/32", "10.0.0.1", "eth0")
				localRoute(f, "fd00:ec2::254/128", unix.RT_TABLE_LOCAL)
			},
			want: "table main sends 169.254.169.254 elsewhere (a route more specific than 169.254.0.0/16 is aimed at the address); route local fd00:ec2::254/128 dev lo table local makes fd00:ec2::254 local though no link has it (a /128 local route claims the address); the host seems to reach a real metadata service this way"},
		{name: "a transparent proxy's local default route",
			setup: func(f *fakeNetlink) { localRoute(f, "default", 100) }},
		{name: "a local route, forced", force: true,
			setup: func(f *fakeNetlink) { localRoute(f, "169.254.169.254/32", unix.RT_TABLE_LOCAL) },
			warn:  `msg="claiming the metadata address despite a conflicting route (forced)" conflict="route local 169.254.169.254/32 dev lo table local makes 169.254.169.254 local`},
		{name: "multipath host route",
			setup: func(f *fakeNetlink) {
				r := f.route("169.254.169.254/32", "", "")
				r.MultiPath = []*netlink.NexthopInfo{
					{LinkIndex: f.index("eth0"), Gw: net.ParseIP("10.0.0.1")},
					{LinkIndex: f.index("eth0"), Gw: net.ParseIP("10.0.0.2")},
				}
			},
			want: "route 169.254.169.254/32 nexthop via 10.0.0.1 dev eth0 nexthop via 10.0.0.2 dev eth0 table main"},
		{name: "routes through our own link are ours",
			setup: func(f *fakeNetlink) {
				ourLink(f, true)
				f.route("169.254.169.254/32", "", "imds0")
				f.route("fd00:ec2::254/128", "", "imds0")
			}},
		{name: "IPv6 /64 route",
			setup: func(f *fakeNetlink) { f.route("fd00:ec2::/64", "", "eth0") },
			want:  "route fd00:ec2::/64 dev eth0 table main sends fd00:ec2::254 elsewhere (a /64 route is aimed at the address)"},
		{name: "IPv6 host route via a gateway",
			setup: func(f *fakeNetlink) { f.route("fd00:ec2::254/128", "fe80::1", "eth0") },
			want:  "route fd00:ec2::254/128 via fe80::1 dev eth0 table main"},
		{name: "IPv6 default route",
			setup: func(f *fakeNetlink) { f.route("default", "fe80::1", "eth0") }},
		{name: "IPv6 site route fd00::/8",
			setup: func(f *fakeNetlink) { f.route("fd00::/8", "fe80::1", "eth0") }},
		{name: "IPv6 route while IPv6 is not asked for", noV6: true,
			setup: func(f *fakeNetlink) { f.route("fd00:ec2::/64", "", "eth0") }},
		{name: "host route, forced", force: true,
			setup: func(f *fakeNetlink) { f.route("169.254.169.254/32", "10.0.0.1", "eth0") },
			warn:  `msg="claiming the metadata address despite a conflicting route (forced)" conflict="route 169.254.169.254/32 via 10.0.0.1 dev eth0 table main`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			f.noDummy = true
			tc.setup(f)
			o, logs := testOptions(t)
			o.Force = tc.force
			if tc.noV6 {
				o.IPv6 = netip.Addr{}
			}
			calls := len(f.calls)
			_, err := Ensure(f, o)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Ensure: %v", err)
				}
				if _, err := Check(f, o); err != nil {
					t.Errorf("Check after Ensure: %v", err)
				}
			} else {
				if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Ensure: err = %v\nwant ErrConflict containing %q", err, tc.want)
				}
				if len(f.calls) != calls {
					t.Errorf("changed the host before refusing: %v", f.calls[calls:])
				}
			}
			if tc.warn != "" && !strings.Contains(logs.String(), tc.warn) {
				t.Errorf("log lacks %q:\n%s", tc.warn, logs)
			}
		})
	}
}

func TestIPv6Degrades(t *testing.T) {
	tests := []struct {
		name  string
		setup func(f *fakeNetlink)
	}{
		{"kernel refuses the address (disabled on the link)", func(f *fakeNetlink) { f.v6AddErr = syscall.EACCES }},
		{"kernel without IPv6", func(f *fakeNetlink) {
			f.v6ListErr = syscall.EAFNOSUPPORT
			f.v6AddErr = syscall.EAFNOSUPPORT
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			tc.setup(f)
			o, logs := testOptions(t)
			res, err := Ensure(f, o)
			if err != nil {
				t.Fatalf("Ensure: %v", err)
			}
			if res.IPv6 || !cmp.Equal(res.Addrs, []netip.Addr{v4}, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
				t.Errorf("result %+v, want IPv4 only", res)
			}
			if n := logs.count("IPv6 is unavailable on this host; serving IPv4 only"); n != 1 {
				t.Errorf("%d warnings, want 1:\n%s", n, logs)
			}
			if n := logs.count("level=WARN"); n != 1 {
				t.Errorf("%d warnings in all, want 1:\n%s", n, logs)
			}
		})
	}
}

// Check, being read-only, learns that IPv6 is off from the sysctls or,
// where the sandbox hides them, from the links' addresses: none on lo, or
// not even a link-local one on the agent's link.
func TestCheckIPv6(t *testing.T) {
	const missing = "host network not set up: link imds0: fd00:ec2::254/128 is not on it (run imds-agent setup-link)"
	tests := []struct {
		name      string
		sysctl    map[string]string // files under proc/sys/net/ipv6; nil: proc/sys is hidden (ProcSubset=pid)
		loopback  bool              // ::1 is on lo
		linkLocal bool              // the link has its fe80:: address, as it does with IPv6 on
		want      string            // "" = degraded without error
	}{
		{"disabled on the link", map[string]string{"conf/imds0/disable_ipv6": "1\n", "conf/all/disable_ipv6": "0\n"}, true, false, ""},
		{"disabled everywhere", map[string]string{"conf/imds0/disable_ipv6": "0\n", "conf/all/disable_ipv6": "1\n"}, false, false, ""},
		{"no IPv6 in the kernel", map[string]string{}, false, false, ""},
		{"enabled, but the address is missing", map[string]string{"conf/imds0/disable_ipv6": "0\n"}, true, true, missing},
		{"sysctls hidden, enabled, the address missing", nil, true, true, missing},
		{"sysctls hidden, IPv6 off", nil, false, false, ""},
		{"sysctls hidden, IPv6 off on the link alone", nil, true, false, ""},
		{"sysctls hidden, no carrier to tell by", nil, true, false, missing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			ourLink(f, true)
			if !strings.Contains(tc.name, "no carrier") {
				f.links[len(f.links)-1].Attrs().Flags |= net.FlagRunning // a dummy link's carrier
			}
			f.addOurAddr("imds0", "169.254.169.254/32")
			if tc.loopback {
				f.addAddr("lo", "::1/128")
			}
			if tc.linkLocal {
				f.addAddr("imds0", "fe80::1/64")
			}
			o, logs := testOptions(t)
			if tc.sysctl != nil {
				os.MkdirAll(filepath.Join(o.SysRoot, "proc/sys/net"), 0o755)
			}
			for name, v := range tc.sysctl {
				p := filepath.Join(o.SysRoot, "proc/sys/net/ipv6", name)
				os.MkdirAll(filepath.Dir(p), 0o755)
				os.WriteFile(p, []byte(v), 0o644)
			}
			res, err := Check(f, o)
			if tc.want != "" {
				if !errors.Is(err, ErrNotReady) || err.Error() != tc.want {
					t.Fatalf("err = %v\nwant %s", err, tc.want)
				}
				return
			}
			if err != nil || res.IPv6 {
				t.Fatalf("Check = %+v, %v; want IPv4 only, no error", res, err)
			}
			if n := logs.count("IPv6 is unavailable"); n != 1 {
				t.Errorf("%d warnings, want 1:\n%s", n, logs)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name  string
		setup func(f *fakeNetlink)
		want  string
	}{
		{"no link", func(f *fakeNetlink) {},
			"host network not set up: link imds0 does not exist (run imds-agent setup-link)"},
		{"all there", func(f *fakeNetlink) {
			ourLink(f, true)
			f.addOurAddr("imds0", "169.254.169.254/32")
			f.addOurAddr("imds0", "fd00:ec2::254/128")
		}, ""},
		// Ensure would re-add it with link scope: the host could pick it
		// as the source of traffic leaving through another link.
		{"address with global scope", func(f *fakeNetlink) {
			ourLink(f, true)
			f.addAddr("imds0", "169.254.169.254/32")
			f.addOurAddr("imds0", "fd00:ec2::254/128")
		}, "host network not set up: link imds0: 169.254.169.254/32 has a scope the host could pick it by as a source address (run imds-agent setup-link)"},
		{"down, one address missing, one extra", func(f *fakeNetlink) {
			ourLink(f, false)
			f.addAddr("imds0", "fd00:ec2::254/128")
			f.addAddr("imds0", "192.0.2.1/24")
		}, "host network not set up: link imds0: the link is down; 169.254.169.254/32 is not on it; 192.0.2.1/24 is on it but not in the configuration (run imds-agent setup-link)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			tc.setup(f)
			o, _ := testOptions(t)
			res, err := Check(f, o)
			if tc.want == "" {
				if err != nil || !res.IPv6 || res.Changed {
					t.Fatalf("Check = %+v, %v", res, err)
				}
			} else if !errors.Is(err, ErrNotReady) || err.Error() != tc.want {
				t.Fatalf("err = %v\nwant %s", err, tc.want)
			}
			if len(f.calls) != 0 {
				t.Errorf("Check changed something: %v", f.calls)
			}
		})
	}
}

func TestCleanup(t *testing.T) {
	f := newFake()
	f.noDummy = true
	o, logs := testOptions(t)
	if err := Cleanup(f, "imds0", o.Logger); err != nil {
		t.Fatalf("Cleanup with no link: %v", err)
	}
	if _, err := Ensure(f, o); err != nil {
		t.Fatal(err)
	}
	calls := len(f.calls)
	if err := Cleanup(f, "imds0", o.Logger); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"LinkDel imds0"}, f.calls[calls:]); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
	if f.link("imds0") != nil || len(f.addrs) != 0 {
		t.Errorf("left behind: link %v, addresses %v", f.link("imds0"), f.addrs)
	}
	if err := Cleanup(f, "imds0", o.Logger); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
	if n := logs.count("link removed"); n != 1 {
		t.Errorf("%d removals logged, want 1", n)
	}
	if err := Cleanup(f, "", nil); err != nil {
		t.Errorf("Cleanup of no name: %v", err)
	}
	if err := Cleanup(f, "bad name", nil); err == nil {
		t.Error("Cleanup of a bad name: no error")
	}
}

// TestCleanupPastAForeignLink: the configured name now belongs to another
// program's link, and the agent's own is under an earlier listen.link: the
// agent's goes, the other is left alone and reported.
func TestCleanupPastAForeignLink(t *testing.T) {
	f := newFake()
	f.noDummy = true
	o, _ := testOptions(t)
	o.Link = "imdsold"
	if _, err := Ensure(f, o); err != nil {
		t.Fatal(err)
	}
	f.addLink(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "imds0"}})
	err := Cleanup(f, "imds0", o.Logger)
	if !errors.Is(err, ErrNotOurs) || !strings.Contains(err.Error(), "it is left alone") {
		t.Errorf("Cleanup = %v, want the other program's link reported as left alone", err)
	}
	if f.link("imdsold") != nil || f.link("imds0") == nil {
		t.Errorf("after cleanup: imdsold %v, imds0 %v; want the agent's gone and the other kept", f.link("imdsold"), f.link("imds0"))
	}
}

// TestLinkRenamed: after listen.link changes, setting up the new link
// meets the addresses on the old one, which it names as the agent's own;
// cleanup removes the old link too (but no link the agent did not mark),
// and the new one can then be set up.
func TestLinkRenamed(t *testing.T) {
	f := newFake()
	f.noDummy = true
	f.addLink(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-other", Alias: "someone else's"}})
	o, _ := testOptions(t)
	if _, err := Ensure(f, o); err != nil {
		t.Fatal(err)
	}
	o.Link = "imds1"
	_, err := Ensure(f, o)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "169.254.169.254 is already on link imds0 (type bridge), the agent's own from an earlier listen.link") {
		t.Fatalf("Ensure imds1 = %v, want a conflict naming imds0 as the agent's own", err)
	}
	if err := Cleanup(f, "imds1", o.Logger); err != nil {
		t.Fatal(err)
	}
	if f.link("imds0") != nil || f.link("br-other") == nil {
		t.Fatalf("after cleanup: imds0 %v, br-other %v; want imds0 gone and br-other kept", f.link("imds0"), f.link("br-other"))
	}
	if _, err := Ensure(f, o); err != nil {
		t.Errorf("Ensure imds1 after cleanup: %v", err)
	}
}

func TestOptionErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(o *Options)
		want string
	}{
		{"no link", func(o *Options) { o.Link = "" }, `netsetup: "" is not a link name`},
		{"long link", func(o *Options) { o.Link = "a-very-long-link-name" }, `netsetup: "a-very-long-link-name" is not a link name`},
		{"slash", func(o *Options) { o.Link = "a/b" }, `netsetup: "a/b" is not a link name`},
		{"no IPv4", func(o *Options) { o.IPv4 = netip.Addr{} }, `netsetup: the IPv4 address "invalid IP" is not an IPv4 address`},
		{"IPv6 as IPv4", func(o *Options) { o.IPv4 = v6 }, `netsetup: the IPv4 address "fd00:ec2::254" is not an IPv4 address`},
		{"IPv4 as IPv6", func(o *Options) { o.IPv6 = v4 }, `netsetup: the IPv6 address "169.254.169.254" is not an IPv6 address`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			o, _ := testOptions(t)
			tc.edit(&o)
			if _, err := Ensure(f, o); err == nil || err.Error() != tc.want {
				t.Errorf("Ensure: err = %v\nwant %s", err, tc.want)
			}
			if _, err := Check(f, o); err == nil || err.Error() != tc.want {
				t.Errorf("Check: err = %v\nwant %s", err, tc.want)
			}
		})
	}
}

func TestNetlinkErrors(t *testing.T) {
	tests := []struct {
		name   string
		fail   map[string]error
		want   string
		wantIs error
	}{
		{"unprivileged", map[string]error{"LinkAdd": syscall.EPERM},
			"netlink LinkAdd dummy imds0 (needs CAP_NET_ADMIN): operation not permitted", syscall.EPERM},
		{"lookup fails", map[string]error{"LinkByName": syscall.ENOBUFS},
			"netlink LinkByName imds0: no buffer space available", syscall.ENOBUFS},
		{"address refused", map[string]error{"AddrReplace": syscall.EINVAL},
			"netlink AddrReplace 169.254.169.254/32 on imds0: invalid argument", syscall.EINVAL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			f.fail = tc.fail
			o, _ := testOptions(t)
			_, err := Ensure(f, o)
			if err == nil || err.Error() != tc.want || !errors.Is(err, tc.wantIs) {
				t.Errorf("err = %v\nwant %s (wrapping %v)", err, tc.want, tc.wantIs)
			}
		})
	}
}

package netsetup

// Tests against the real kernel. Each runs in network namespaces it creates
// (netnstest), so nothing here touches the host's own network; they need
// root, and skip without it.

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/imds-agent/imds-agent/internal/netnstest"
)

// kernelOptions are testOptions with a SysRoot whose proc is the real
// /proc (for the IPv6 sysctls, read by the calling thread, so call Check in
// ns.Do) and which has no DMI files, so the EC2 guard stays quiet even on a
// CI runner that is an EC2 instance.
func kernelOptions(t *testing.T) (Options, *logBuf) {
	o, logs := testOptions(t)
	if err := os.Symlink("/proc", filepath.Join(o.SysRoot, "proc")); err != nil {
		t.Fatal(err)
	}
	return o, logs
}

// serve answers every connection on l with "hello from ADDR".
func serve(t *testing.T, l net.Listener) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello from "+c.LocalAddr().String()+"\n")
			c.Close()
		}
	}()
}

// greet dials address from inside ns and returns the greeting.
func greet(t *testing.T, ns *netnstest.NS, network, address string) string {
	t.Helper()
	c, err := ns.Dial(network, address)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", address, ns, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", address, err)
	}
	return strings.TrimSpace(line)
}

func listenBoth(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	for _, a := range []struct{ network, addr string }{{"tcp4", "169.254.169.254:80"}, {"tcp6", "[fd00:ec2::254]:80"}} {
		l, err := ns.Listen(a.network, a.addr)
		if err != nil {
			t.Fatalf("listen on %s in %s: %v", a.addr, ns, err)
		}
		serve(t, l)
	}
}

func TestKernelEnsureServeCheckCleanup(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Handle()
	o, logs := kernelOptions(t)

	res, err := Ensure(h, o)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	t.Logf("kernel gave a %s link; result %+v", res.Kind, res)
	if logs.count("waited for the kernel's local routes") > 0 {
		t.Log("Ensure waited for the kernel to install a local route")
	}
	if !res.Created || !res.Changed || !res.IPv6 || (res.Kind != KindDummy && res.Kind != KindBridge) ||
		len(res.Addrs) != 2 || res.Addrs[0] != v4 || res.Addrs[1] != v6 {
		t.Fatalf("result %+v", res)
	}
	if fallback := logs.count("no dummy link type"); (res.Kind == KindBridge) != (fallback == 1) {
		t.Errorf("kind %s with %d fallback log lines", res.Kind, fallback)
	}
	l, err := h.LinkByName("imds0")
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().Alias != Alias || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("link alias %q flags %v", l.Attrs().Alias, l.Attrs().Flags)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 && !a.IP.IsLinkLocalUnicast() {
			t.Errorf("%s is not usable yet: flags %#x", a.IPNet, a.Flags)
		}
	}

	// Served inside the namespace; this traffic never leaves it.
	listenBoth(t, ns)
	if got := greet(t, ns, "tcp4", "169.254.169.254:80"); got != "hello from 169.254.169.254:80" {
		t.Errorf("IPv4: %q", got)
	}
	if got := greet(t, ns, "tcp6", "[fd00:ec2::254]:80"); got != "hello from [fd00:ec2::254]:80" {
		t.Errorf("IPv6: %q", got)
	}

	again, err := Ensure(h, o)
	if err != nil || again.Changed || again.Created {
		t.Errorf("second Ensure = %+v, %v; want nothing changed", again, err)
	}
	var checked Result
	if err := ns.Do(func() error { checked, err = Check(h, o); return err }); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if checked.Kind != res.Kind || !checked.IPv6 || len(checked.Addrs) != 2 {
		t.Errorf("Check = %+v, Ensure said %+v", checked, res)
	}

	// A restart after someone took the link down: the link is reused and
	// put right. (The kernel drops a link's IPv6 addresses when it goes
	// down, unless keep_addr_on_down is set.)
	if err := h.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(func() error { _, err := Check(h, o); return err }); !errors.Is(err, ErrNotReady) ||
		!strings.Contains(err.Error(), "the link is down; fd00:ec2::254/128 is not on it") {
		t.Errorf("Check of a damaged link: %v", err)
	}
	fixed, err := Ensure(h, o)
	if err != nil || fixed.Created || !fixed.Changed || !fixed.IPv6 {
		t.Errorf("Ensure after a crash = %+v, %v", fixed, err)
	}
	if got := greet(t, ns, "tcp6", "[fd00:ec2::254]:80"); got != "hello from [fd00:ec2::254]:80" {
		t.Errorf("IPv6 after repair: %q", got)
	}

	if err := Cleanup(h, "imds0", o.Logger); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if _, err := h.LinkByName("imds0"); !errors.As(err, new(netlink.LinkNotFoundError)) {
		t.Errorf("link still there after Cleanup: %v", err)
	}
	all, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range all {
		if a.IP.Equal(v4.AsSlice()) || a.IP.Equal(v6.AsSlice()) {
			t.Errorf("address %s left after Cleanup", a.IPNet)
		}
	}
	if err := Cleanup(h, "imds0", o.Logger); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
}

// A reused link whose 169.254.169.254 has global scope (added by hand, or
// by something else) gets it back with link scope, so the host never picks
// it as the source of traffic leaving through another link.
func TestKernelAddressScopeCorrected(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Handle()
	l := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "imds0", Alias: Alias}}
	if err := h.LinkAdd(l); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetAlias(l, Alias); err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(v4, 32)), Scope: unix.RT_SCOPE_UNIVERSE}); err != nil {
		t.Fatal(err)
	}
	o, _ := kernelOptions(t)
	if err := ns.Do(func() error { _, err := Check(h, o); return err }); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "169.254.169.254/32 has a scope") {
		t.Errorf("Check before Ensure: %v, want ErrNotReady naming the address's scope", err)
	}
	if err := ns.Do(func() error { _, err := Ensure(h, o); return err }); err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(func() error { _, err := Check(h, o); return err }); err != nil {
		t.Errorf("Check after Ensure: %v", err)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].Scope != unix.RT_SCOPE_LINK {
		t.Errorf("after Ensure: %+v, want one address with link scope", addrs)
	}
}

func TestKernelAddressOnAnotherLink(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Handle()
	other := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "other0"}}
	if err := h.LinkAdd(other); err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(other, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(v4, 32))}); err != nil {
		t.Fatal(err)
	}
	o, _ := kernelOptions(t)
	_, err := Ensure(h, o)
	want := "address conflict: 169.254.169.254 is already on link other0 (type bridge); remove it there or choose another address"
	if !errors.Is(err, ErrConflict) || err.Error() != want {
		t.Fatalf("Ensure: err = %v\nwant %s", err, want)
	}
	if _, err := h.LinkByName("imds0"); err == nil {
		t.Error("imds0 was created before the conflict was found")
	}
}

// A host route to the address through another link is refused; --force
// claims it anyway, and then local delivery wins over the route.
func TestKernelRouteConflict(t *testing.T) {
	host, lan := netnstest.New(t), netnstest.New(t)
	vethName, _ := netnstest.Link(t, host, lan, netip.MustParsePrefix("10.9.0.1/24"), netip.MustParsePrefix("10.9.0.2/24"))
	h := host.Handle()
	veth, err := h.LinkByName(vethName)
	if err != nil {
		t.Fatal(err)
	}
	// The zeroconf route many distributions install: harmless.
	if err := h.RouteAdd(&netlink.Route{LinkIndex: veth.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("169.254.0.0/16")), Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	host.Route(netip.MustParsePrefix("169.254.169.254/32"), netip.MustParseAddr("10.9.0.2"))

	o, logs := kernelOptions(t)
	_, err = Ensure(h, o)
	want := "address conflict: route 169.254.169.254/32 via 10.9.0.2 dev " + vethName + " table main sends 169.254.169.254 elsewhere"
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "169.254.0.0/16 dev") {
		t.Fatalf("Ensure: err = %v\nwant one containing %q and not the zeroconf route", err, want)
	}

	ensureForced(t, h, o, logs, "despite a conflicting route (forced)")
	listenBoth(t, host)
	if got := greet(t, host, "tcp4", "169.254.169.254:80"); got != "hello from 169.254.169.254:80" {
		t.Errorf("local client with the route in place: %q", got)
	}
}

// TestKernelLocalRouteConflict: a local route for the address though no
// link has it (`ip route add local 169.254.169.254 dev lo`, another
// program's way of serving it; an address with a prefix on lo) is refused
// unless forced, while the kernel's own local routes for a link-local
// address of the host's are not taken for one.
func TestKernelLocalRouteConflict(t *testing.T) {
	host, lan := netnstest.New(t), netnstest.New(t)
	vethName, _ := netnstest.Link(t, host, lan, netip.MustParsePrefix("169.254.1.1/16"), netip.MustParsePrefix("169.254.1.2/16"))
	host.LoopbackUp()
	h := host.Handle()
	o, logs := kernelOptions(t)
	o.IPv6 = netip.Addr{}
	if _, err := Check(h, o); !errors.Is(err, ErrNotReady) {
		t.Fatalf("Check with %s holding 169.254.1.1/16: %v, want only ErrNotReady", vethName, err)
	}

	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("169.254.169.254/32")),
		Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}); err != nil {
		t.Fatal(err)
	}
	_, err = Ensure(h, o)
	want := "address conflict: route local 169.254.169.254/32 dev lo table local makes 169.254.169.254 local though no link has it"
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Ensure: err = %v\nwant one containing %q", err, want)
	}
	ensureForced(t, h, o, logs, "despite a conflicting route (forced)")

	// An address on lo makes its whole prefix local, by a route the
	// kernel adds.
	other := netnstest.New(t)
	other.LoopbackUp()
	oh := other.Handle()
	if lo, err = oh.LinkByName("lo"); err != nil {
		t.Fatal(err)
	}
	if err := oh.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("169.254.0.1/16"))}); err != nil {
		t.Fatal(err)
	}
	_, err = Ensure(oh, o)
	want = "address conflict: route local 169.254.0.0/16 dev lo table local makes 169.254.169.254 local though no link has it (a local route claims the whole link-local range)"
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Ensure with 169.254.0.1/16 on lo: err = %v\nwant one containing %q", err, want)
	}
}

// A client in another namespace, routed to the host as a container is,
// reaches both addresses.
func TestKernelClientInAnotherNamespace(t *testing.T) {
	host, container := netnstest.New(t), netnstest.New(t)
	hostEnd, ctrEnd := netnstest.Link(t, host, container, netip.MustParsePrefix("10.10.0.1/24"), netip.MustParsePrefix("10.10.0.2/24"))
	for _, end := range []struct {
		ns   *netnstest.NS
		name string
		addr string
	}{{host, hostEnd, "fd10::1/64"}, {container, ctrEnd, "fd10::2/64"}} {
		l, err := end.ns.Handle().LinkByName(end.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := end.ns.Handle().AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(end.addr)), Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatal(err)
		}
	}
	o, _ := kernelOptions(t)
	if _, err := Ensure(host.Handle(), o); err != nil {
		t.Fatal(err)
	}
	container.Route(netip.PrefixFrom(v4, 32), netip.MustParseAddr("10.10.0.1"))
	container.Route(netip.PrefixFrom(v6, 128), netip.MustParseAddr("fd10::1"))
	listenBoth(t, host)
	if got := greet(t, container, "tcp4", "169.254.169.254:80"); got != "hello from 169.254.169.254:80" {
		t.Errorf("IPv4 from the container: %q", got)
	}
	if got := greet(t, container, "tcp6", "[fd00:ec2::254]:80"); got != "hello from [fd00:ec2::254]:80" {
		t.Errorf("IPv6 from the container: %q", got)
	}
}

func TestKernelIPv6Disabled(t *testing.T) {
	ns := netnstest.New(t)
	ns.SetSysctl("net.ipv6.conf.default.disable_ipv6", "1") // the new link inherits it
	o, logs := kernelOptions(t)
	res, err := Ensure(ns.Handle(), o)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if res.IPv6 || len(res.Addrs) != 1 || res.Addrs[0] != v4 {
		t.Errorf("result %+v, want IPv4 only", res)
	}
	if n := logs.count("level=WARN"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, logs)
	}
	var checked Result
	if err := ns.Do(func() error { checked, err = Check(ns.Handle(), o); return err }); err != nil || checked.IPv6 {
		t.Errorf("Check = %+v, %v; want IPv4 only, no error", checked, err)
	}
	if n := logs.count("level=WARN"); n != 2 {
		t.Errorf("%d warnings after Check, want 2:\n%s", n, logs)
	}
	again, err := Ensure(ns.Handle(), o)
	if err != nil || again.Changed {
		t.Errorf("second Ensure = %+v, %v", again, err)
	}
}

func TestKernelForeignLink(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Handle()
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "imds0"}}); err != nil {
		t.Fatal(err)
	}
	o, _ := kernelOptions(t)
	want := `link not managed by imds-agent: link imds0 (type bridge, alias "") exists and was not created by imds-agent`
	if _, err := Ensure(h, o); !errors.Is(err, ErrNotOurs) || !strings.Contains(err.Error(), want) {
		t.Errorf("Ensure: %v", err)
	}
	if err := Cleanup(h, "imds0", o.Logger); !errors.Is(err, ErrNotOurs) {
		t.Errorf("Cleanup: %v", err)
	}
	if _, err := h.LinkByName("imds0"); err != nil {
		t.Errorf("the foreign link is gone: %v", err)
	}
}

// TestLinkLocalTellsIPv6 checks what ipv6Off relies on where the sandbox
// hides the sysctls: a link with a carrier has a link-local address when
// IPv6 is on for it, and no IPv6 address at all when it was made with IPv6
// off (net.ipv6.conf.default.disable_ipv6=1, as hardening guides set).
func TestLinkLocalTellsIPv6(t *testing.T) {
	for _, off := range []bool{false, true} {
		a, b := netnstest.New(t), netnstest.New(t)
		if off {
			a.SetSysctl("net.ipv6.conf.default.disable_ipv6", "1")
		}
		name, _ := netnstest.Link(t, a, b, netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("192.0.2.2/24"))
		var got []netlink.Addr
		deadline := time.Now().Add(5 * time.Second)
		for {
			l, err := a.Handle().LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if l.Attrs().Flags&net.FlagRunning == 0 {
				t.Fatalf("%s has no carrier: flags %v", name, l.Attrs().Flags)
			}
			got, err = a.Handle().AddrList(l, netlink.FAMILY_V6)
			if err != nil && !ipv6Unavailable(err) {
				t.Fatal(err)
			}
			if off || len(got) > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		switch {
		case off && len(got) != 0:
			t.Errorf("a link made with IPv6 off has IPv6 addresses: %v", got)
		case !off && (len(got) == 0 || !got[0].IP.IsLinkLocalUnicast()):
			t.Errorf("a link with IPv6 on and a carrier has no link-local address: %v", got)
		}
	}
}

// TestKernelTentativeIPv6: fd00:ec2::254 already on the agent's link but
// added without nodad (by hand, or by another tool) stays tentative where
// duplicate address detection does not finish (a bridge without a
// carrier), and cannot be bound. Check says so, and Ensure puts it back in
// the agent's form, which can.
func TestKernelTentativeIPv6(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Handle()
	o, _ := kernelOptions(t)
	if _, err := Ensure(h, o); err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName("imds0")
	if err != nil {
		t.Fatal(err)
	}
	v6net := &net.IPNet{IP: net.IP(v6.AsSlice()), Mask: net.CIDRMask(128, 128)}
	if err := h.AddrDel(l, &netlink.Addr{IPNet: v6net}); err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: v6net}); err != nil { // as `ip address add` without nodad
		t.Fatal(err)
	}
	flags := func() int {
		addrs, err := h.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if a.IP.Equal(v6net.IP) {
				return a.Flags
			}
		}
		t.Fatal("fd00:ec2::254 is gone")
		return 0
	}
	if flags()&unix.IFA_F_TENTATIVE != 0 {
		var cerr error
		if err := ns.Do(func() error { _, cerr = Check(h, o); return nil }); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(cerr, ErrNotReady) || !strings.Contains(cerr.Error(), "is tentative") {
			t.Errorf("Check with the address tentative = %v, want it reported", cerr)
		}
	}
	if _, err := Ensure(h, o); err != nil {
		t.Fatal(err)
	}
	if f := flags(); f&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
		t.Errorf("after Ensure the address has flags %#x", f)
	}
	ln, err := ns.Listen("tcp6", "[fd00:ec2::254]:80")
	if err != nil {
		t.Fatalf("after Ensure, binding fd00:ec2::254: %v", err)
	}
	ln.Close()
}

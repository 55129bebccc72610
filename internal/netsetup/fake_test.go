package netsetup

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fakeNetlink is a kernel in miniature: links, addresses and routes, and the
// kernel's behaviours this package relies on (no dummy type on some hosts,
// aliases ignored by LinkAdd, EACCES for IPv6 on a link with IPv6 disabled).
type fakeNetlink struct {
	links   []netlink.Link
	addrs   []netlink.Addr
	routes  []netlink.Route
	nextIdx int

	noDummy bool // LinkAdd of a dummy fails as on a kernel without the type
	// localLag is how many listings of the local table go by before the
	// local route of an added address appears (the kernel adds IPv6 ones
	// asynchronously); -1: never.
	localLag  int
	pending   []netlink.Route // local routes still to appear
	lagLeft   int
	v6AddErr  error // AddrReplace of an IPv6 address fails with this
	v6ListErr error // AddrList of IPv6 fails with this
	fail      map[string]error

	calls []string // the calls that change something, in order
}

func newFake() *fakeNetlink {
	f := &fakeNetlink{nextIdx: 1}
	f.addLink(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo", Flags: net.FlagUp | net.FlagLoopback}})
	f.addLink(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Flags: net.FlagUp}})
	return f
}

// addLink adds a link as it is, alias included, and returns its index.
func (f *fakeNetlink) addLink(l netlink.Link) int {
	l.Attrs().Index = f.nextIdx
	f.nextIdx++
	f.links = append(f.links, l)
	return l.Attrs().Index
}

func (f *fakeNetlink) index(name string) int {
	for _, l := range f.links {
		if l.Attrs().Name == name {
			return l.Attrs().Index
		}
	}
	panic("no link " + name)
}

// addAddr adds an address with the kernel's default scope (global), as
// `ip address add` would.
func (f *fakeNetlink) addAddr(link, prefix string) {
	f.addAddrScope(link, prefix, unix.RT_SCOPE_UNIVERSE)
}

// addOurAddr adds an address as Ensure adds it: an IPv4 one with link
// scope.
func (f *fakeNetlink) addOurAddr(link, prefix string) {
	f.addAddrScope(link, prefix, unix.RT_SCOPE_LINK)
}

func (f *fakeNetlink) addAddrScope(link, prefix string, scope int) {
	p := netip.MustParsePrefix(prefix)
	if p.Addr().Is6() {
		scope = unix.RT_SCOPE_UNIVERSE // the kernel's for any IPv6 address but fe80::/10
	}
	f.addrs = append(f.addrs, netlink.Addr{IPNet: ipNet(p), LinkIndex: f.index(link), Scope: scope})
}

// route adds a main-table unicast route "dst [via gw] [dev link]".
func (f *fakeNetlink) route(dst, gw, link string) *netlink.Route {
	r := netlink.Route{Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST, Family: netlink.FAMILY_V4}
	if dst != "default" {
		p := netip.MustParsePrefix(dst)
		r.Dst = ipNet(p)
		if p.Addr().Is6() {
			r.Family = netlink.FAMILY_V6
		}
	}
	if gw != "" {
		a := netip.MustParseAddr(gw)
		r.Gw = net.IP(a.AsSlice())
		if a.Is6() {
			r.Family = netlink.FAMILY_V6
		}
	}
	if link != "" {
		r.LinkIndex = f.index(link)
	}
	f.routes = append(f.routes, r)
	return &f.routes[len(f.routes)-1]
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (f *fakeNetlink) link(name string) netlink.Link {
	for _, l := range f.links {
		if l.Attrs().Name == name {
			return l
		}
	}
	return nil
}

func (f *fakeNetlink) mutated(call string) error {
	f.calls = append(f.calls, call)
	return f.fail[strings.Fields(call)[0]]
}

func (f *fakeNetlink) LinkByName(name string) (netlink.Link, error) {
	if err := f.fail["LinkByName"]; err != nil {
		return nil, err
	}
	if l := f.link(name); l != nil {
		return clone(l), nil
	}
	return nil, netlink.LinkNotFoundError{}
}

func (f *fakeNetlink) LinkList() ([]netlink.Link, error) {
	var out []netlink.Link
	for _, l := range f.links {
		out = append(out, clone(l))
	}
	return out, nil
}

func (f *fakeNetlink) LinkByIndex(index int) (netlink.Link, error) {
	for _, l := range f.links {
		if l.Attrs().Index == index {
			return clone(l), nil
		}
	}
	return nil, netlink.LinkNotFoundError{}
}

// clone returns a copy, as the kernel answers with a fresh message each time.
func clone(l netlink.Link) netlink.Link {
	switch v := l.(type) {
	case *netlink.Dummy:
		c := *v
		return &c
	case *netlink.Bridge:
		c := *v
		return &c
	case *netlink.Veth:
		c := *v
		return &c
	case *netlink.Device:
		c := *v
		return &c
	}
	panic(fmt.Sprintf("clone %T", l))
}

func (f *fakeNetlink) LinkAdd(l netlink.Link) error {
	if err := f.mutated("LinkAdd " + l.Type() + " " + l.Attrs().Name); err != nil {
		return err
	}
	if _, ok := l.(*netlink.Dummy); ok && f.noDummy {
		return syscall.EOPNOTSUPP
	}
	if f.link(l.Attrs().Name) != nil {
		return syscall.EEXIST
	}
	c := clone(l)
	c.Attrs().Alias = "" // the kernel ignores IFLA_IFALIAS on creation
	f.addLink(c)
	return nil
}

func (f *fakeNetlink) LinkDel(l netlink.Link) error {
	if err := f.mutated("LinkDel " + l.Attrs().Name); err != nil {
		return err
	}
	idx := l.Attrs().Index
	f.links = slices.DeleteFunc(f.links, func(x netlink.Link) bool { return x.Attrs().Index == idx })
	f.addrs = slices.DeleteFunc(f.addrs, func(a netlink.Addr) bool { return a.LinkIndex == idx })
	f.routes = slices.DeleteFunc(f.routes, func(r netlink.Route) bool { return r.LinkIndex == idx })
	return nil
}

func (f *fakeNetlink) LinkSetUp(l netlink.Link) error {
	if err := f.mutated("LinkSetUp " + l.Attrs().Name); err != nil {
		return err
	}
	f.link(l.Attrs().Name).Attrs().Flags |= net.FlagUp
	return nil
}

func (f *fakeNetlink) LinkSetAlias(l netlink.Link, alias string) error {
	if err := f.mutated("LinkSetAlias " + l.Attrs().Name + " " + alias); err != nil {
		return err
	}
	f.link(l.Attrs().Name).Attrs().Alias = alias
	return nil
}

func (f *fakeNetlink) AddrList(l netlink.Link, family int) ([]netlink.Addr, error) {
	if family == netlink.FAMILY_V6 && f.v6ListErr != nil {
		return nil, f.v6ListErr
	}
	var out []netlink.Addr
	for _, a := range f.addrs {
		is4 := a.IP.To4() != nil
		if (l != nil && a.LinkIndex != l.Attrs().Index) ||
			(family == netlink.FAMILY_V4 && !is4) || (family == netlink.FAMILY_V6 && is4) {
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

func (f *fakeNetlink) AddrReplace(l netlink.Link, a *netlink.Addr) error {
	if err := f.mutated("AddrReplace " + a.IPNet.String() + " " + l.Attrs().Name); err != nil {
		return err
	}
	if a.IP.To4() == nil && f.v6AddErr != nil {
		return f.v6AddErr
	}
	c := *a
	c.LinkIndex = l.Attrs().Index
	for i, x := range f.addrs {
		if x.LinkIndex == c.LinkIndex && x.IPNet.String() == c.IPNet.String() {
			f.addrs[i] = c
			return nil
		}
	}
	f.addrs = append(f.addrs, c)
	bits := 8 * len(c.IP.To16())
	if c.IP.To4() != nil {
		bits = 32
	}
	local := netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL, Protocol: unix.RTPROT_KERNEL, LinkIndex: c.LinkIndex,
		Dst: &net.IPNet{IP: c.IP, Mask: net.CIDRMask(bits, bits)}, Family: netlink.FAMILY_V4}
	if bits == 128 {
		local.Family = netlink.FAMILY_V6
	}
	if f.localLag == 0 {
		f.routes = append(f.routes, local)
	} else {
		f.pending = append(f.pending, local)
		f.lagLeft = f.localLag
	}
	return nil
}

func (f *fakeNetlink) AddrDel(l netlink.Link, a *netlink.Addr) error {
	if err := f.mutated("AddrDel " + a.IPNet.String() + " " + l.Attrs().Name); err != nil {
		return err
	}
	n := len(f.addrs)
	f.addrs = slices.DeleteFunc(f.addrs, func(x netlink.Addr) bool {
		return x.LinkIndex == l.Attrs().Index && x.IPNet.String() == a.IPNet.String()
	})
	if len(f.addrs) == n {
		return syscall.EADDRNOTAVAIL
	}
	f.routes = slices.DeleteFunc(f.routes, func(r netlink.Route) bool {
		return r.Table == unix.RT_TABLE_LOCAL && r.LinkIndex == l.Attrs().Index && r.Dst.IP.Equal(a.IP)
	})
	return nil
}

func (f *fakeNetlink) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	if mask != netlink.RT_FILTER_TABLE || (filter.Table != unix.RT_TABLE_UNSPEC && filter.Table != unix.RT_TABLE_LOCAL) {
		return nil, fmt.Errorf("fake: only listings of all tables or the local table are implemented")
	}
	if filter.Table == unix.RT_TABLE_LOCAL && len(f.pending) > 0 && f.localLag > 0 {
		if f.lagLeft--; f.lagLeft <= 0 {
			f.routes = append(f.routes, f.pending...)
			f.pending = nil
		}
	}
	var out []netlink.Route
	for _, r := range f.routes {
		if r.Family == family && (filter.Table == unix.RT_TABLE_UNSPEC || r.Table == filter.Table) {
			out = append(out, r)
		}
	}
	return out, nil
}

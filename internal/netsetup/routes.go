package netsetup

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

type routeVerdict int

const (
	routeUnrelated     routeVerdict = iota // does not cover the address, or leads to our link
	routeHarmless                          // covers it, but is not aimed at it
	routeConflict                          // aimed at it: refuse unless forced
	routeLocalConflict                     // claims it as local: refuse unless forced
)

var linkLocal4 = netip.MustParsePrefix("169.254.0.0/16")

// Prefix lengths from which a route covering the address counts as aimed at
// it: longer than the IPv4 link-local /16; /64 or longer for IPv6.
const (
	specific4 = 17
	specific6 = 64
)

// classifyRoute decides whether route r stands in the way of claiming target.
//
// Once the address is on a local link the kernel delivers traffic for it
// locally whatever the routing tables say (the local table is consulted
// first), so no route is a technical obstacle. A route aimed at the address
// is evidence instead: something on this host reaches a real metadata
// service through it (some clouds install a host route to 169.254.169.254
// for their own service, used by cloud-init and the cloud's agents), and
// claiming the address would silently cut that off. The rule:
//
//   - Routes that do not cover target, the other routes in the local table
//     (they mirror addresses, which the address check covers), routes of
//     the broadcast, multicast and anycast types, and routes that lead
//     only to our own link (such as the kernel's route for our IPv6 /128)
//     are unrelated.
//   - A route of the local type is judged by classifyLocal: the kernel's
//     own for a single address is unrelated, another aimed at the address
//     is a conflict.
//   - A default route is never a conflict.
//   - IPv4: a route covering target with a prefix longer than /16 (a /32
//     host route, a /24) is a conflict, on-link or via a gateway, of any
//     type (a blackhole or prohibit route is someone's policy for the
//     address too). The 169.254.0.0/16 route is a conflict when it goes
//     through a gateway (link-local addresses are never routed, RFC 3927,
//     so one that is routed goes somewhere on purpose) or is not a plain
//     unicast route; the plain on-link 169.254.0.0/16 route that zeroconf
//     and many distributions install is harmless. Shorter prefixes (a VPN's
//     128.0.0.0/1) are general routes, not aimed at the address: harmless.
//   - IPv6: a route covering target with a prefix of /64 or longer is a
//     conflict; shorter ones (fc00::/7, fd00::/8 site routes) are harmless.
//
// The reason returned says which clause applied.
func classifyRoute(r netlink.Route, target netip.Addr, ourIndex int) (routeVerdict, string) {
	if r.Type == unix.RTN_LOCAL {
		return classifyLocal(r, target, ourIndex)
	}
	if r.Table == unix.RT_TABLE_LOCAL {
		return routeUnrelated, "local table"
	}
	switch r.Type {
	case unix.RTN_BROADCAST, unix.RTN_MULTICAST, unix.RTN_ANYCAST:
		return routeUnrelated, "not a forwarding route"
	}
	dst, v, why := covers(r, target, ourIndex)
	if v == routeUnrelated {
		return v, why
	}
	bits := dst.Bits()
	switch {
	case bits == 0:
		return routeHarmless, "a default route is never a conflict"
	case target.Is6() && bits >= specific6:
		return routeConflict, fmt.Sprintf("a /%d route is aimed at the address", bits)
	case target.Is6():
		return routeHarmless, fmt.Sprintf("a /%d route is too broad to be aimed at the address", bits)
	case bits >= specific4:
		return routeConflict, fmt.Sprintf("a route more specific than %s is aimed at the address", linkLocal4)
	case dst == linkLocal4 && hasGateway(r):
		return routeConflict, "link-local addresses are never routed through a gateway unless on purpose"
	case dst == linkLocal4 && r.Type != unix.RTN_UNICAST:
		return routeConflict, "a " + routeType(r.Type) + " route for the link-local range"
	case dst == linkLocal4:
		return routeHarmless, "the on-link zeroconf route; the local address takes precedence"
	default:
		return routeHarmless, fmt.Sprintf("a /%d route is too broad to be aimed at the address", bits)
	}
}

// classifyLocal decides about a route of the local type, which makes the
// host take the addresses it covers as its own. The kernel adds one for
// every address, for that address alone (protocol kernel; on the address's
// link, or on lo for IPv6 before Linux 4.13), which the address check
// covers. Any other is a claim on the address though no link has it: `ip
// route add local 169.254.169.254 dev lo` (a program serving it that way),
// or the kernel's route for a whole prefix of an address on a loopback
// link (169.254.0.1/16 on lo makes all of 169.254.0.0/16 local). Aimed at
// the address by the same prefix rule as a forwarding route, it is a
// conflict; a broad one (a transparent proxy's local default route in a
// table of its own) is not.
func classifyLocal(r netlink.Route, target netip.Addr, ourIndex int) (routeVerdict, string) {
	dst, v, why := covers(r, target, ourIndex)
	if v == routeUnrelated {
		return v, why
	}
	if r.Protocol == unix.RTPROT_KERNEL && dst.IsSingleIP() {
		return routeUnrelated, "the kernel's route for an address"
	}
	bits := dst.Bits()
	switch {
	case target.Is6() && bits >= specific6, target.Is4() && bits >= specific4:
		return routeLocalConflict, fmt.Sprintf("a /%d local route claims the address", bits)
	case dst == linkLocal4:
		return routeLocalConflict, "a local route claims the whole link-local range"
	default:
		return routeHarmless, fmt.Sprintf("a /%d local route is too broad to be aimed at the address", bits)
	}
}

// covers returns r's destination when it covers target by a route that
// does not lead only to our link, and says why r is unrelated otherwise.
func covers(r netlink.Route, target netip.Addr, ourIndex int) (netip.Prefix, routeVerdict, string) {
	dst := routeDst(r, target)
	if !dst.IsValid() || !dst.Contains(target) {
		return dst, routeUnrelated, "does not cover the address"
	}
	if ourIndex != 0 && onlyVia(r, ourIndex) {
		return dst, routeUnrelated, "leads to our link"
	}
	return dst, routeHarmless, ""
}

// routeDst is the route's destination; a route without one is a default
// route of target's family.
func routeDst(r netlink.Route, target netip.Addr) netip.Prefix {
	if r.Dst == nil {
		if target.Is4() {
			return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		}
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	ip, ok := netip.AddrFromSlice(r.Dst.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, size := r.Dst.Mask.Size()
	ip = ip.Unmap()
	if size != ip.BitLen() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(ip, ones).Masked()
}

// onlyVia says whether every next hop of r uses the link ourIndex.
func onlyVia(r netlink.Route, ourIndex int) bool {
	if len(r.MultiPath) == 0 {
		return r.LinkIndex == ourIndex
	}
	for _, nh := range r.MultiPath {
		if nh.LinkIndex != ourIndex {
			return false
		}
	}
	return true
}

func hasGateway(r netlink.Route) bool {
	if len(r.Gw) > 0 || r.Via != nil {
		return true
	}
	for _, nh := range r.MultiPath {
		if len(nh.Gw) > 0 || nh.Via != nil {
			return true
		}
	}
	return false
}

// describeRoute writes a route as `ip route` would, enough to find it:
// "169.254.169.254/32 via 10.0.0.1 dev eth0 table main".
func describeRoute(h Netlink, r netlink.Route) string {
	var b strings.Builder
	if r.Type != unix.RTN_UNICAST {
		b.WriteString(routeType(r.Type) + " ")
	}
	if r.Dst == nil {
		b.WriteString("default")
	} else {
		b.WriteString(r.Dst.String())
	}
	hop := func(gw net.IP, index int) {
		if len(gw) > 0 {
			fmt.Fprintf(&b, " via %s", gw)
		}
		if index > 0 {
			fmt.Fprintf(&b, " dev %s", linkNameOnly(h, index))
		}
	}
	hop(r.Gw, r.LinkIndex)
	for _, nh := range r.MultiPath {
		b.WriteString(" nexthop")
		hop(nh.Gw, nh.LinkIndex)
	}
	b.WriteString(" table " + tableName(r.Table))
	return b.String()
}

func linkNameOnly(h Netlink, index int) string {
	l, err := h.LinkByIndex(index)
	if err != nil {
		return fmt.Sprintf("index %d", index)
	}
	return l.Attrs().Name
}

func tableName(t int) string {
	switch t {
	case unix.RT_TABLE_MAIN:
		return "main"
	case unix.RT_TABLE_DEFAULT:
		return "default"
	case unix.RT_TABLE_LOCAL:
		return "local"
	}
	return fmt.Sprint(t)
}

func routeType(t int) string {
	switch t {
	case unix.RTN_UNICAST:
		return "unicast"
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	case unix.RTN_THROW:
		return "throw"
	case unix.RTN_NAT:
		return "nat"
	}
	return fmt.Sprintf("type-%d", t)
}

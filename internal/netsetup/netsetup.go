// Package netsetup owns the host side of the metadata address: the link the
// agent manages (a dummy link, or a bridge with no ports where the kernel has
// no dummy type), marked as the agent's by its alias, and the addresses on it
// (169.254.169.254/32 and, when asked, fd00:ec2::254/128). Before it changes
// anything it checks that it takes the address from nobody: not from another
// link, not from a route that leads to a real metadata service, and not on a
// real EC2 instance (detected from DMI and hypervisor files, never by asking
// the network). Every change goes through netlink, through the narrow Netlink
// interface.
//
// When the agent stops or restarts, the link and its addresses stay. While
// the address is on a local link, a local client whose agent is down gets
// "connection refused" at once; without it, the client's packets would follow
// the routing table off the host to whatever answers 169.254.169.254 on the
// network, and could be handed another machine's credentials. Only Cleanup
// (`imds-agent cleanup`, which the package's pre-removal script runs) removes
// them.
package netsetup

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Alias marks a link as the agent's. A link of the configured name without
// it is never changed or removed.
const Alias = "imds-agent managed"

// Link kinds the agent creates, in order of preference.
const (
	KindDummy  = "dummy"
	KindBridge = "bridge"
)

var (
	// ErrConflict: the address is already on another link, or a route sends
	// it elsewhere.
	ErrConflict = errors.New("address conflict")
	// ErrEC2: the host looks like a real EC2 instance, whose own metadata
	// service the agent would hide.
	ErrEC2 = errors.New("this host looks like a real EC2 instance")
	// ErrOtherCloud: the host runs on another cloud whose own metadata
	// service answers at 169.254.169.254.
	ErrOtherCloud = errors.New("this host runs on a cloud with its own metadata service at 169.254.169.254")
	// ErrNotOurs: a link of the configured name exists and is not the
	// agent's.
	ErrNotOurs = errors.New("link not managed by imds-agent")
	// ErrNotReady (from Check only): the link or an address is missing or
	// differs from what Ensure would make.
	ErrNotReady = errors.New("host network not set up")
)

// Netlink lists the netlink calls this package makes; *netlink.Handle
// implements it, and tests use a fake.
type Netlink interface {
	LinkByName(name string) (netlink.Link, error)
	LinkByIndex(index int) (netlink.Link, error)
	LinkList() ([]netlink.Link, error)
	LinkAdd(link netlink.Link) error
	LinkDel(link netlink.Link) error
	LinkSetUp(link netlink.Link) error
	LinkSetAlias(link netlink.Link, alias string) error
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	AddrReplace(link netlink.Link, addr *netlink.Addr) error
	AddrDel(link netlink.Link, addr *netlink.Addr) error
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
}

var _ Netlink = (*netlink.Handle)(nil)

// Options say which link and addresses to claim.
type Options struct {
	Link string     // e.g. "imds0"
	IPv4 netip.Addr // 169.254.169.254
	IPv6 netip.Addr // fd00:ec2::254; the zero Addr = do not claim IPv6
	// Force claims the address even on what looks like a real EC2 instance
	// and despite conflicting routes (each with a warning). An address
	// already on another link is refused even so.
	Force bool
	// SysRoot is where the DMI and hypervisor files of the EC2 guard, and
	// the IPv6 sysctls Check reads, are found: "" means "/". Tests point it
	// at a temporary directory.
	SysRoot string
	Logger  *slog.Logger

	sleep func(time.Duration) // tests shorten the wait for local routes
}

// Ensure waits this long, polling, for the kernel to install the local
// route of an address it added. The kernel adds an IPv6 address's local
// route asynchronously, even with IFA_F_NODAD; until it does, a local
// client's packets follow the link's prefix route out of the link and fail
// with "no route to host" after neighbour discovery gives up.
const (
	localRouteWait = 2 * time.Second
	localRoutePoll = 5 * time.Millisecond
)

// Result describes the link after Ensure or Check.
type Result struct {
	Link string
	Kind string // KindDummy or KindBridge
	// Addrs are the addresses now on the link, without the IPv6 link-local
	// address the kernel may give it.
	Addrs []netip.Addr
	// IPv6 is true when fd00:ec2::254 is on the link; false when IPv6 was not
	// asked for or is unavailable (then one warning says why).
	IPv6    bool
	Created bool // the link did not exist before
	Changed bool // anything at all was changed
}

// Ensure makes the link exist, be up, be marked as the agent's and hold
// exactly the asked addresses. It checks everything before it changes
// anything, and changes nothing when all is already right, so it is safe to
// call on every start. When it added an address it returns once the kernel
// delivers to it locally (at most localRouteWait later).
func Ensure(h Netlink, o Options) (Result, error) {
	o, log, res, st, err := prepare(h, o)
	if err != nil {
		return res, err
	}

	link := st.link
	if link == nil {
		if link, err = create(h, o.Link, log); err != nil {
			return res, err
		}
		res.Created, res.Changed = true, true
	}
	res.Kind = link.Type()
	if link.Attrs().Alias != Alias {
		if err := h.LinkSetAlias(link, Alias); err != nil {
			return res, netlinkErr("LinkSetAlias", o.Link, err)
		}
		res.Changed = true
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return res, netlinkErr("LinkSetUp", o.Link, err)
		}
		res.Changed = true
		log.Info("link up", "link", o.Link, "kind", res.Kind)
	}

	have := st.addrs
	wantV6 := o.IPv6.IsValid() && st.ipv6
	var added []netip.Addr
	for _, want := range st.wanted(o) {
		if i := slices.IndexFunc(have, want.equal); i >= 0 {
			why := have[i].unfit()
			if why == "" {
				continue
			}
			// There, but not in the agent's form: a replace keeps the
			// scope and the flags, so it goes and comes back.
			if err := h.AddrDel(link, have[i].nl); err != nil {
				return res, netlinkErr("AddrDel", have[i].String()+" on "+o.Link, err)
			}
			log.Info("address re-added in the agent's form", "link", o.Link, "address", want.prefix(), "reason", why)
		}
		err := h.AddrReplace(link, want.netlinkAddr())
		if err != nil && want.addr.Is6() && ipv6Unavailable(err) {
			log.Warn("IPv6 is unavailable on this host; serving IPv4 only",
				"link", o.Link, "address", want.addr, "reason", err)
			wantV6 = false
			continue
		}
		if err != nil {
			return res, netlinkErr("AddrReplace", want.String()+" on "+o.Link, err)
		}
		res.Changed = true
		added = append(added, want.addr)
		log.Info("address added", "link", o.Link, "address", want.prefix())
	}
	if err := waitLocalRoutes(h, link, added, o.sleep, log); err != nil {
		return res, err
	}
	for _, a := range have {
		if a.keep(o, wantV6) {
			continue
		}
		// The link is ours, so an address on it that the configuration no
		// longer asks for (IPv6 turned off, an old prefix) goes.
		if err := h.AddrDel(link, a.nl); err != nil {
			return res, netlinkErr("AddrDel", a.String()+" on "+o.Link, err)
		}
		res.Changed = true
		log.Info("address removed", "link", o.Link, "address", a.prefix(), "why", "not in the configuration")
	}

	addrs, err := listAddrs(h, link, netlink.FAMILY_ALL)
	if err != nil {
		return res, netlinkErr("AddrList", o.Link, err)
	}
	res.Addrs = managedAddrs(addrs)
	res.IPv6 = wantV6 && slices.Contains(res.Addrs, o.IPv6)
	return res, nil
}

// Check reports whether everything is already as Ensure would make it,
// without changing anything; it needs no privilege. It applies the same EC2
// guard and conflict checks as Ensure. ErrNotReady says what is missing.
// When the IPv6 address is missing because IPv6 is disabled (read from
// SysRoot/proc/sys/net/ipv6, which shows the calling thread's network
// namespace) Check degrades to IPv4 with a warning, as Ensure does.
func Check(h Netlink, o Options) (Result, error) {
	o, log, res, st, err := prepare(h, o)
	if err != nil {
		return res, err
	}
	if st.link == nil {
		return res, fmt.Errorf("%w: link %s does not exist (run imds-agent setup-link)", ErrNotReady, o.Link)
	}
	res.Kind = st.link.Type()
	res.Addrs = managedAddrs(st.addrs)

	var missing []string
	if st.link.Attrs().Flags&net.FlagUp == 0 {
		missing = append(missing, "the link is down")
	}
	wantV6 := o.IPv6.IsValid() && st.ipv6
	for _, want := range st.wanted(o) {
		if i := slices.IndexFunc(st.addrs, want.equal); i >= 0 {
			if why := st.addrs[i].unfit(); why != "" {
				// Ensure would put it back in the agent's form.
				missing = append(missing, want.String()+" "+why)
			}
			continue
		}
		if want.addr.Is6() {
			if why := ipv6Off(h, o.SysRoot, o.Link); why != "" {
				log.Warn("IPv6 is unavailable on this host; serving IPv4 only",
					"link", o.Link, "address", want.addr, "reason", why)
				wantV6 = false
				continue
			}
		}
		missing = append(missing, want.String()+" is not on it")
	}
	for _, a := range st.addrs {
		if !a.keep(o, wantV6) {
			missing = append(missing, a.String()+" is on it but not in the configuration")
		}
	}
	if len(missing) > 0 {
		return res, fmt.Errorf("%w: link %s: %s (run imds-agent setup-link)", ErrNotReady, o.Link, strings.Join(missing, "; "))
	}
	res.IPv6 = wantV6
	return res, nil
}

// Cleanup removes the agent's link and with it its addresses, and any
// other link the agent marked as its own (one an earlier listen.link
// named). link "" names none: only marked links go. A missing link is not
// an error; a link of that name that is not the agent's is left alone and
// reported with ErrNotOurs, once the agent's own links are gone.
func Cleanup(h Netlink, link string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var foreign error
	if link != "" {
		if err := validLinkName(link); err != nil {
			return err
		}
		l, err := lookupLink(h, link)
		if err != nil {
			return err
		}
		if l == nil {
			log.Info("link already absent; nothing to remove", "link", link)
		} else if err := ours(l); err != nil {
			// Not "remove it": it is another program's.
			foreign = fmt.Errorf("%w; it is left alone", err)
		} else {
			if err := h.LinkDel(l); err != nil {
				return netlinkErr("LinkDel", link, err)
			}
			log.Info("link removed with its addresses", "link", link, "kind", l.Type())
		}
	}
	links, err := h.LinkList()
	if err != nil {
		return netlinkErr("LinkList", "", err)
	}
	for _, l := range links {
		if l.Attrs().Name == link || ours(l) != nil {
			continue
		}
		if err := h.LinkDel(l); err != nil {
			return netlinkErr("LinkDel", l.Attrs().Name, err)
		}
		log.Info("link removed with its addresses: the agent's, from an earlier listen.link", "link", l.Attrs().Name, "kind", l.Type())
	}
	return foreign
}

// prepare is what Ensure and Check do first: normalise the options, apply
// the EC2 guard and read the link's state (changing nothing).
func prepare(h Netlink, o Options) (Options, *slog.Logger, Result, state, error) {
	o, log, err := o.normalize()
	res := Result{Link: o.Link}
	if err != nil {
		return o, log, res, state{}, err
	}
	if err := guardEC2(o, log); err != nil {
		return o, log, res, state{}, err
	}
	st, err := inspect(h, o, log)
	return o, log, res, st, err
}

func (o Options) normalize() (Options, *slog.Logger, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.SysRoot == "" {
		o.SysRoot = "/"
	}
	if o.sleep == nil {
		o.sleep = time.Sleep
	}
	if err := validLinkName(o.Link); err != nil {
		return o, log, err
	}
	o.IPv4 = o.IPv4.Unmap()
	if !o.IPv4.Is4() {
		return o, log, fmt.Errorf("netsetup: the IPv4 address %q is not an IPv4 address", o.IPv4)
	}
	if o.IPv6.IsValid() && (!o.IPv6.Is6() || o.IPv6.Is4In6()) {
		return o, log, fmt.Errorf("netsetup: the IPv6 address %q is not an IPv6 address", o.IPv6)
	}
	o.IPv6 = o.IPv6.WithZone("")
	return o, log, nil
}

// validLinkName applies the kernel's rules (dev_valid_name).
func validLinkName(name string) error {
	if name == "" || len(name) > unix.IFNAMSIZ-1 || name == "." || name == ".." ||
		strings.ContainsFunc(name, func(r rune) bool { return r == '/' || r == ':' || r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("netsetup: %q is not a link name", name)
	}
	return nil
}

func guardEC2(o Options, log *slog.Logger) error {
	isEC2, evidence := DetectEC2(o.SysRoot)
	if !isEC2 {
		return guardOtherCloud(o, log)
	}
	if o.Force {
		log.Warn("this host looks like a real EC2 instance; claiming the metadata address anyway (forced)",
			"evidence", evidence, "address", o.IPv4)
		return nil
	}
	var hidden []string
	for _, a := range []netip.Addr{o.IPv4, o.IPv6} {
		if a == ec2IPv4 || a == ec2IPv6 {
			hidden = append(hidden, a.String())
		}
	}
	if len(hidden) > 0 {
		return fmt.Errorf("%w (%s): claiming %s would hide its own metadata service; pass --force to claim it anyway",
			ErrEC2, evidence, strings.Join(hidden, " and "))
	}
	return fmt.Errorf("%w (%s), which has a metadata service of its own at %s and services of its own in the link-local range "+
		"(DNS, time, the ECS agent's credentials); pass --force to claim %s anyway",
		ErrEC2, evidence, ec2IPv4, o.IPv4)
}

// The addresses of EC2's instance metadata service.
var (
	ec2IPv4 = netip.MustParseAddr("169.254.169.254")
	ec2IPv6 = netip.MustParseAddr("fd00:ec2::254")
)

// guardOtherCloud refuses, unless forced, to claim 169.254.169.254 on a
// cloud whose own metadata service answers there: the cloud's guest agents
// and cloud-init would be answered by the agent instead.
func guardOtherCloud(o Options, log *slog.Logger) error {
	if o.IPv4 != ec2IPv4 {
		return nil
	}
	cloud, evidence := DetectOtherCloud(o.SysRoot)
	if cloud == "" {
		return nil
	}
	if o.Force {
		log.Warn("this host runs on a cloud with its own metadata service at the address; claiming it anyway (forced)",
			"cloud", cloud, "evidence", evidence, "address", o.IPv4)
		return nil
	}
	return fmt.Errorf("%w: %s (%s); claiming %s would hide its metadata service from cloud-init and the cloud's agents; "+
		"serve another address (listen.addresses, with listen.link: \"\") and point the SDKs at it with AWS_EC2_METADATA_SERVICE_ENDPOINT, "+
		"or pass --force to claim it anyway",
		ErrOtherCloud, cloud, evidence, o.IPv4)
}

// state is what inspect read: the link (nil when missing) and its addresses.
type state struct {
	link  netlink.Link
	addrs []addr
	ipv6  bool // IPv6 can be used, as far as reading can tell
}

// inspect reads the link and checks, without changing anything, that the
// link (if it exists) is ours and that nothing else holds or routes the
// addresses.
func inspect(h Netlink, o Options, log *slog.Logger) (state, error) {
	var st state
	l, err := lookupLink(h, o.Link)
	if err != nil {
		return st, err
	}
	ourIndex := 0
	if l != nil {
		if err := ours(l); err != nil {
			return st, fmt.Errorf("%w; remove it or set listen.link to another name", err)
		}
		st.link, ourIndex = l, l.Attrs().Index
	}

	all4, err := listAddrs(h, nil, netlink.FAMILY_V4)
	if err != nil {
		return st, netlinkErr("AddrList", "IPv4", err)
	}
	all := all4
	st.ipv6 = true
	all6, err := listAddrs(h, nil, netlink.FAMILY_V6)
	switch {
	case err != nil && ipv6Unavailable(err):
		st.ipv6 = false
		if o.IPv6.IsValid() {
			log.Warn("IPv6 is unavailable on this host; serving IPv4 only", "link", o.Link, "reason", err)
		}
	case err != nil:
		return st, netlinkErr("AddrList", "IPv6", err)
	default:
		all = append(all, all6...)
	}
	for _, a := range all {
		if ourIndex != 0 && a.link == ourIndex {
			st.addrs = append(st.addrs, a)
		}
	}

	targets := []netip.Addr{o.IPv4}
	if o.IPv6.IsValid() && st.ipv6 {
		targets = append(targets, o.IPv6)
	}
	var conflicts []string
	for _, target := range targets {
		for _, a := range all {
			if a.addr == target && (ourIndex == 0 || a.link != ourIndex) {
				c := fmt.Sprintf("%s is already on link %s", target, linkName(h, a.link))
				if l, err := h.LinkByIndex(a.link); err == nil && ours(l) == nil {
					c += ", the agent's own from an earlier listen.link (`imds-agent cleanup` removes it)"
				}
				conflicts = append(conflicts, c)
			}
		}
	}
	if len(conflicts) > 0 {
		return st, fmt.Errorf("%w: %s; remove it there or choose another address", ErrConflict, strings.Join(conflicts, "; "))
	}

	var routed, claimed []string
	for _, target := range targets {
		family := netlink.FAMILY_V4
		if target.Is6() {
			family = netlink.FAMILY_V6
		}
		routes, err := listRoutes(h, family)
		if err != nil {
			return st, netlinkErr("RouteListFiltered", familyName(family), err)
		}
		for _, r := range routes {
			v, why := classifyRoute(r, target, ourIndex)
			switch v {
			case routeConflict:
				routed = append(routed, fmt.Sprintf("route %s sends %s elsewhere (%s)", describeRoute(h, r), target, why))
			case routeLocalConflict:
				claimed = append(claimed, fmt.Sprintf("route %s makes %s local though no link has it (%s)", describeRoute(h, r), target, why))
			case routeHarmless:
				log.Debug("route covers the metadata address; not a conflict", "route", describeRoute(h, r), "why", why)
			}
		}
	}
	if len(routed)+len(claimed) > 0 {
		msg := strings.Join(append(routed, claimed...), "; ")
		if !o.Force {
			how := "the host seems to reach a real metadata service this way"
			if len(routed) == 0 {
				how = "another program on this host seems to serve the address this way"
			}
			return st, fmt.Errorf("%w: %s; %s: remove the route, or pass --force to claim the address anyway",
				ErrConflict, msg, how)
		}
		log.Warn("claiming the metadata address despite a conflicting route (forced)", "conflict", msg)
	}
	return st, nil
}

func lookupLink(h Netlink, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		return nil, nil
	case err != nil:
		return nil, netlinkErr("LinkByName", name, err)
	}
	return l, nil
}

// ours refuses a link the agent did not create: the alias marks it, and the
// agent only ever creates dummy and bridge links.
func ours(l netlink.Link) error {
	a := l.Attrs()
	if a.Alias != Alias {
		return fmt.Errorf("%w: link %s (type %s, alias %q) exists and was not created by imds-agent",
			ErrNotOurs, a.Name, l.Type(), a.Alias)
	}
	if t := l.Type(); t != KindDummy && t != KindBridge {
		return fmt.Errorf("%w: link %s has imds-agent's alias but is of type %s, and imds-agent only creates dummy and bridge links",
			ErrNotOurs, a.Name, t)
	}
	return nil
}

// create adds the link: a dummy where the kernel has that type, otherwise a
// bridge with no ports, which holds local addresses just as well.
func create(h Netlink, name string, log *slog.Logger) (netlink.Link, error) {
	err := h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}})
	kind := KindDummy
	if errors.Is(err, unix.EOPNOTSUPP) {
		log.Info("the kernel has no dummy link type; using a bridge with no ports instead", "link", name)
		kind = KindBridge
		err = h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
	}
	if err != nil {
		return nil, netlinkErr("LinkAdd", kind+" "+name, err)
	}
	log.Info("link created", "link", name, "kind", kind)
	// Read it back for its index and flags.
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, netlinkErr("LinkByName", name, err)
	}
	return l, nil
}

// addr is an address as this package compares it: the IP, the prefix length,
// and the netlink form it came in.
type addr struct {
	addr netip.Addr
	bits int
	link int // index of the link holding it
	nl   *netlink.Addr
}

func newAddr(a netlink.Addr) addr {
	ip, _ := netip.AddrFromSlice(a.IP)
	ones, _ := a.Mask.Size()
	return addr{addr: ip.Unmap(), bits: ones, link: a.LinkIndex, nl: &a}
}

func (a addr) prefix() netip.Prefix { return netip.PrefixFrom(a.addr, a.bits) }
func (a addr) String() string       { return a.prefix().String() }
func (a addr) equal(b addr) bool    { return a.addr == b.addr && a.bits == b.bits }

// scoped reports whether an address has the scope Ensure gives it: link
// scope for IPv4 (see netlinkAddr).
// unfit says what keeps an address the agent wants, found on its link,
// from serving as the agent's ("" when nothing does): an IPv4 one with a
// scope the host could pick it by as a source address; an IPv6 one still
// tentative (added without nodad, on a link where duplicate address
// detection may never finish, such as a bridge without a carrier) or that
// failed detection: neither can be bound.
func (a addr) unfit() string {
	switch {
	case a.nl == nil:
		return ""
	case a.addr.Is4() && a.nl.Scope != unix.RT_SCOPE_LINK:
		return "has a scope the host could pick it by as a source address"
	case a.addr.Is6() && a.nl.Flags&unix.IFA_F_DADFAILED != 0:
		return "failed duplicate address detection, and cannot be bound"
	case a.addr.Is6() && a.nl.Flags&unix.IFA_F_TENTATIVE != 0:
		return "is tentative (duplicate address detection has not finished), and cannot be bound"
	}
	return ""
}

// linkLocal6 addresses are the kernel's own on an IPv6 link; they are left
// alone and not reported.
func (a addr) linkLocal6() bool { return a.addr.Is6() && a.addr.IsLinkLocalUnicast() }

// keep says whether an address found on our link belongs there.
func (a addr) keep(o Options, wantV6 bool) bool {
	switch {
	case a.linkLocal6():
		return true
	case a.addr == o.IPv4 && a.bits == 32:
		return true
	case wantV6 && a.addr == o.IPv6 && a.bits == 128:
		return true
	}
	return false
}

// netlinkAddr is the form Ensure adds: IPv4 with link scope, so the kernel
// never picks 169.254.169.254 as the source of traffic leaving through
// another link; IPv6 with IFA_F_NODAD, else the address stays tentative for
// about 2 s and binding to it fails with EADDRNOTAVAIL.
func (a addr) netlinkAddr() *netlink.Addr {
	n := &netlink.Addr{IPNet: &net.IPNet{IP: a.addr.AsSlice(), Mask: net.CIDRMask(a.bits, a.addr.BitLen())}}
	if a.addr.Is4() {
		n.Scope = unix.RT_SCOPE_LINK
	} else {
		n.Flags = unix.IFA_F_NODAD
	}
	return n
}

// wanted lists the addresses the link should hold.
func (st state) wanted(o Options) []addr {
	w := []addr{{addr: o.IPv4, bits: 32}}
	if o.IPv6.IsValid() && st.ipv6 {
		w = append(w, addr{addr: o.IPv6, bits: 128})
	}
	return w
}

// managedAddrs are the addresses reported in Result: all but the kernel's
// IPv6 link-local one, sorted.
func managedAddrs(as []addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		if !a.linkLocal6() && !slices.Contains(out, a.addr) {
			out = append(out, a.addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// waitLocalRoutes waits until the kernel has a local route on link for
// every address in addrs, so that a client connecting as soon as Ensure
// returns is served. If the routes do not appear in time it warns and
// returns: the addresses are there, and the kernel may yet catch up.
func waitLocalRoutes(h Netlink, link netlink.Link, addrs []netip.Addr, sleep func(time.Duration), log *slog.Logger) error {
	waited := time.Duration(0)
	for len(addrs) > 0 {
		var missing []netip.Addr
		for _, a := range addrs {
			ok, err := hasLocalRoute(h, link.Attrs().Index, a)
			if err != nil {
				return netlinkErr("RouteListFiltered", "local table", err)
			}
			if !ok {
				missing = append(missing, a)
			}
		}
		addrs = missing
		if len(addrs) == 0 {
			break
		}
		if waited >= localRouteWait {
			log.Warn("the kernel has not installed the local route of an address yet; local clients may fail until it does",
				"link", link.Attrs().Name, "addresses", addrs, "waited", waited)
			return nil
		}
		sleep(localRoutePoll)
		waited += localRoutePoll
	}
	if waited > 0 {
		log.Debug("waited for the kernel's local routes", "link", link.Attrs().Name, "waited", waited)
	}
	return nil
}

func hasLocalRoute(h Netlink, index int, a netip.Addr) (bool, error) {
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	var (
		rs  []netlink.Route
		err error
	)
	for range 3 {
		rs, err = h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return false, err
	}
	for _, r := range rs {
		if r.Type == unix.RTN_LOCAL && r.LinkIndex == index && r.Dst != nil && routeDst(r, a) == netip.PrefixFrom(a, a.BitLen()) {
			return true, nil
		}
	}
	return false, nil
}

// listAddrs returns the addresses, retrying a dump the kernel interrupted
// because the table changed under it.
func listAddrs(h Netlink, link netlink.Link, family int) ([]addr, error) {
	var (
		as  []netlink.Addr
		err error
	)
	for range 3 {
		if as, err = h.AddrList(link, family); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	out := make([]addr, 0, len(as))
	for _, a := range as {
		if a.IPNet == nil {
			continue
		}
		out = append(out, newAddr(a))
	}
	return out, nil
}

// listRoutes returns the routes of every table.
func listRoutes(h Netlink, family int) ([]netlink.Route, error) {
	var (
		rs  []netlink.Route
		err error
	)
	for range 3 {
		rs, err = h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return rs, err
}

// ipv6Unavailable says whether a failed IPv6 call means the host has no
// usable IPv6: disabled on the link (EACCES), or absent from the kernel.
func ipv6Unavailable(err error) bool {
	return errors.Is(err, unix.EACCES) || errors.Is(err, unix.EAFNOSUPPORT) ||
		errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPROTONOSUPPORT)
}

// ipv6Off says why IPv6 is off for link, or "" when it is on. It reads
// the sysctls where it can see them. The service's sandbox
// (ProcSubset=pid) hides /proc/sys: the loopback link then tells whether
// IPv6 is on at all (it has ::1 whenever it is), and a link with a carrier
// (a dummy link always has one) whether it is on there: with IPv6 on it has
// a link-local address at least, with IPv6 off (net.ipv6.conf.default.
// disable_ipv6 when it was made, say) none. A link without a carrier (the
// bridge made where the dummy type is missing) cannot tell: the missing
// address is then reported as missing.
func ipv6Off(h Netlink, sysRoot, link string) string {
	if _, err := os.Stat(filepath.Join(sysRoot, "proc/sys/net")); err == nil {
		return ipv6Disabled(sysRoot, link)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return ""
	}
	addrs, err := h.AddrList(lo, netlink.FAMILY_V6)
	if err != nil && !ipv6Unavailable(err) {
		return ""
	}
	if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IP.Equal(net.IPv6loopback) }) {
		return "the loopback link has no ::1 (/proc/sys is hidden from this process)"
	}
	l, err := h.LinkByName(link)
	if err != nil || l.Attrs().Flags&(net.FlagUp|net.FlagRunning) != net.FlagUp|net.FlagRunning {
		return ""
	}
	if own, err := h.AddrList(l, netlink.FAMILY_V6); err == nil && len(own) == 0 {
		return "the link has no IPv6 address, not even a link-local one: IPv6 is off on it (/proc/sys is hidden from this process)"
	}
	return ""
}

// ipv6Disabled reads the sysctls that say IPv6 is off for link, and returns
// why, or "" when IPv6 is on (or the files cannot tell).
func ipv6Disabled(sysRoot, link string) string {
	base := filepath.Join(sysRoot, "proc/sys/net/ipv6")
	if _, err := os.Stat(base); errors.Is(err, os.ErrNotExist) {
		return base + " does not exist: the kernel has no IPv6"
	}
	for _, dev := range []string{link, "all"} {
		p := filepath.Join(base, "conf", dev, "disable_ipv6")
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == "1" {
			return p + " is 1"
		}
	}
	return ""
}

func netlinkErr(call, what string, err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("netlink %s %s (needs CAP_NET_ADMIN): %w", call, what, err)
	}
	return fmt.Errorf("netlink %s %s: %w", call, what, err)
}

func familyName(family int) string {
	if family == netlink.FAMILY_V6 {
		return "IPv6"
	}
	return "IPv4"
}

// linkName names a link by index for messages: "eth0 (type veth)".
func linkName(h Netlink, index int) string {
	l, err := h.LinkByIndex(index)
	if err != nil {
		return fmt.Sprintf("index %d", index)
	}
	return fmt.Sprintf("%s (type %s)", l.Attrs().Name, l.Type())
}

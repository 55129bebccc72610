// Package netnstest gives tests network namespaces of their own, so a test
// can add links, addresses and routes, serve on 169.254.169.254 and run
// processes without touching the host's network. Everything a test creates
// through it (namespaces, veth pairs, processes, idle HTTP connections) is
// removed by t.Cleanup.
//
// The rules it keeps, and the reasons:
//   - Code runs inside a namespace only on a goroutine that locked its OS
//     thread; the thread is moved back before it is unlocked, and if that
//     fails it stays locked, so the runtime terminates it with the
//     goroutine. No thread is ever left in a foreign namespace.
//   - A socket belongs to the namespace of the thread that created it, so
//     Listen and DialContext create theirs inside, and accept only IP
//     literals: name resolution would run on other goroutines, outside.
//   - Only net.* sysctls are per namespace; SetSysctl writes nothing else,
//     and first checks that the /proc/sys/net it sees is the namespace's.
//   - Processes start inside through Command, which works however the
//     caller starts the returned *exec.Cmd (see Command).
//
// Creating namespaces needs root (CAP_SYS_ADMIN): New skips the test when
// not root. CI runs as root, so there these tests always run.
package netnstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is a network namespace created by a test.
type NS struct {
	t      testing.TB
	ns     netns.NsHandle
	id     string // "net:[inode]", as readlink /proc/PID/ns/net shows it
	handle *netlink.Handle
	// ctx ends when the test cleans up; processes started by Command die
	// with it.
	ctx    context.Context
	cancel context.CancelFunc

	mu         sync.Mutex
	links      int // veth names handed out
	transports []*http.Transport
}

// New creates a network namespace with its loopback up, removed when the
// test ends. It skips the test when not running as root.
func New(t testing.TB) *NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netnstest: creating network namespaces needs root (CI runs the tests as root)")
	}
	var h netns.NsHandle
	err := onLockedThread(func() error {
		var err error
		h, err = netns.New() // moves this thread; onLockedThread moves it back
		return err
	})
	if err != nil {
		t.Fatalf("netnstest: netns.New: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		h.Close()
		t.Fatalf("netnstest: fstat namespace: %v", err)
	}
	handle, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		t.Fatalf("netnstest: netlink.NewHandleAt: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &NS{t: t, ns: h, id: fmt.Sprintf("net:[%d]", st.Ino), handle: handle, ctx: ctx, cancel: cancel}
	t.Cleanup(n.close)
	n.LoopbackUp()
	return n
}

func (n *NS) close() {
	n.cancel()
	n.mu.Lock()
	for _, tr := range n.transports {
		tr.CloseIdleConnections()
	}
	n.mu.Unlock()
	n.handle.Close()
	// The namespace, and every link in it, goes when its last reference
	// does: this descriptor and the processes inside, killed above.
	n.ns.Close()
}

// String names the namespace for messages.
func (n *NS) String() string { return "netns " + n.id }

// ID is the namespace's identity as /proc/PID/ns/net links show it:
// "net:[4026532301]".
func (n *NS) ID() string { return n.id }

// Handle is a netlink handle bound to the namespace. It is closed at
// cleanup.
func (n *NS) Handle() *netlink.Handle { return n.handle }

// Do runs fn on an OS thread inside the namespace and returns its error.
// The thread is moved back to its own namespace afterwards (or, should that
// fail, discarded). Goroutines fn starts run outside the namespace; fn must
// not call t.Fatal (it runs on another goroutine).
func (n *NS) Do(fn func() error) error {
	return onLockedThread(func() error {
		if err := netns.Set(n.ns); err != nil {
			return fmt.Errorf("netnstest: netns.Set %s: %w", n, err)
		}
		return fn()
	})
}

// onLockedThread runs fn on a new goroutine locked to its OS thread, and
// afterwards moves the thread back to the namespace it started in. Only
// then is the thread unlocked and returned to the runtime; if moving back
// fails it stays locked, and the runtime ends it with the goroutine. (Ending
// the goroutine is not enough on its own: on the main thread the runtime
// parks the thread forever instead, which would leave the process's
// /proc/self/ns/net pointing into the test's namespace and keep it alive.)
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread() // not moved yet
			errc <- fmt.Errorf("netnstest: netns.Get: %w", err)
			return
		}
		defer orig.Close()
		err = runRecovering(fn)
		// Back home before the caller hears the result, so that when Do
		// returns no thread is in the namespace any more.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func runRecovering(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("netnstest: panic in a namespace: %v", p)
		}
	}()
	return fn()
}

// Listen listens inside the namespace; address must have an IP literal or
// an empty host.
func (n *NS) Listen(network, address string) (net.Listener, error) {
	if err := literalHost(address, true); err != nil {
		return nil, err
	}
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// DialContext connects from inside the namespace; address must have an IP
// literal.
func (n *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if err := literalHost(address, false); err != nil {
		return nil, err
	}
	// A negative FallbackDelay keeps the dial on this goroutine, so the
	// socket is created on the thread inside the namespace.
	d := net.Dialer{FallbackDelay: -1}
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Dial is DialContext with a 10 s timeout.
func (n *NS) Dial(network, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return n.DialContext(ctx, network, address)
}

// HTTPClient returns a client whose connections are made inside the
// namespace. It uses no proxy, whatever the environment says, and accepts
// only URLs with IP literals.
func (n *NS) HTTPClient() *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         n.DialContext,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	n.mu.Lock()
	n.transports = append(n.transports, tr)
	n.mu.Unlock()
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func literalHost(address string, emptyOK bool) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("netnstest: %w", err)
	}
	if host == "" && emptyOK {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("netnstest: %q is not an IP address: names would be resolved outside the namespace", host)
	}
	return nil
}

// LoopbackUp brings lo up. New does it already.
func (n *NS) LoopbackUp() {
	n.t.Helper()
	lo, err := n.handle.LinkByName("lo")
	if err == nil {
		err = n.handle.LinkSetUp(lo)
	}
	if err != nil {
		n.t.Fatalf("netnstest: %s: bringing lo up: %v", n, err)
	}
}

// Route adds a route to dst via the gateway via inside the namespace.
func (n *NS) Route(dst netip.Prefix, via netip.Addr) {
	n.t.Helper()
	r := &netlink.Route{Dst: ipNet(dst.Masked()), Gw: via.AsSlice()}
	if err := n.handle.RouteAdd(r); err != nil {
		n.t.Fatalf("netnstest: %s: RouteAdd %s via %s: %v", n, dst, via, err)
	}
}

// Forwarding turns IPv4 and IPv6 forwarding on or off inside the
// namespace.
func (n *NS) Forwarding(on bool) {
	n.t.Helper()
	v := "0"
	if on {
		v = "1"
	}
	n.SetSysctl("net.ipv4.ip_forward", v)
	n.SetSysctl("net.ipv6.conf.all.forwarding", v)
}

// SetSysctl writes a net.* sysctl of the namespace. key is dotted
// ("net.ipv4.ip_forward") or a path under /proc/sys ("net/ipv6/conf/eth0.5/
// disable_ipv6", for link names with dots). Before writing it checks that the
// links /proc/sys/net lists are exactly the namespace's, so it can never
// write the host's.
func (n *NS) SetSysctl(key, value string) {
	n.t.Helper()
	if err := n.setSysctl(key, value); err != nil {
		n.t.Fatalf("netnstest: %s: sysctl %s=%s: %v", n, key, value, err)
	}
}

func (n *NS) setSysctl(key, value string) error {
	path := key
	if !strings.Contains(key, "/") {
		path = strings.ReplaceAll(key, ".", "/")
	}
	if !strings.HasPrefix(path, "net/") || strings.Contains(path, "..") {
		return errors.New("only net.* sysctls belong to a network namespace")
	}
	links, err := n.handle.LinkList()
	if err != nil {
		return fmt.Errorf("netlink LinkList: %w", err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return n.Do(func() error {
		dir, err := os.ReadDir("/proc/sys/net/ipv4/conf")
		if err != nil {
			return err
		}
		var seen []string
		for _, e := range dir {
			if e.Name() != "all" && e.Name() != "default" {
				seen = append(seen, e.Name())
			}
		}
		slices.Sort(seen)
		slices.Sort(names)
		if !slices.Equal(seen, names) {
			return fmt.Errorf("/proc/sys/net shows links %v, the namespace has %v: refusing to write", seen, names)
		}
		return os.WriteFile("/proc/sys/"+path, []byte(value), 0)
	})
}

// Link connects namespaces a and b with a veth pair, both ends up, and gives
// each end its address (a zero Prefix: none). It returns the names of the
// two ends. IPv6 addresses are added without duplicate address detection,
// so they can be used at once.
func Link(t testing.TB, a, b *NS, aAddr, bAddr netip.Prefix) (aName, bName string) {
	t.Helper()
	aName, bName = a.nextLinkName(), b.nextLinkName()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(b.ns)),
	}
	if err := a.handle.LinkAdd(veth); err != nil {
		t.Fatalf("netnstest: LinkAdd veth %s (%s) to %s (%s): %v", aName, a, bName, b, err)
	}
	t.Cleanup(func() {
		// Deleting one end deletes both; the namespaces would take them
		// anyway, but not always before the next test looks.
		if l, err := a.handle.LinkByName(aName); err == nil {
			_ = a.handle.LinkDel(l)
		}
	})
	for _, end := range []struct {
		ns   *NS
		name string
		addr netip.Prefix
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		l, err := end.ns.handle.LinkByName(end.name)
		if err != nil {
			t.Fatalf("netnstest: %s: LinkByName %s: %v", end.ns, end.name, err)
		}
		if end.addr.IsValid() {
			na := &netlink.Addr{IPNet: ipNet(end.addr)}
			if end.addr.Addr().Is6() {
				na.Flags = unix.IFA_F_NODAD
			}
			if err := end.ns.handle.AddrAdd(l, na); err != nil {
				t.Fatalf("netnstest: %s: AddrAdd %s on %s: %v", end.ns, end.addr, end.name, err)
			}
		}
		if err := end.ns.handle.LinkSetUp(l); err != nil {
			t.Fatalf("netnstest: %s: LinkSetUp %s: %v", end.ns, end.name, err)
		}
	}
	// A SYN sent before both ends have carrier waits a second for its
	// retry: return once both are operationally up.
	deadline := time.Now().Add(5 * time.Second)
	for _, end := range []struct {
		ns   *NS
		name string
	}{{a, aName}, {b, bName}} {
		for {
			l, err := end.ns.handle.LinkByName(end.name)
			if err != nil {
				t.Fatalf("netnstest: %s: LinkByName %s: %v", end.ns, end.name, err)
			}
			if l.Attrs().OperState == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("netnstest: %s: %s has no carrier after 5s (state %v)", end.ns, end.name, l.Attrs().OperState)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return aName, bName
}

func (n *NS) nextLinkName() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.links++
	return fmt.Sprintf("veth%d", n.links-1)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

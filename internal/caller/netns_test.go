package caller

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/imds-agent/imds-agent/internal/netnstest"
)

// inside runs fn in ns (sockets it creates belong to ns), failing the test
// on error.
func inside(t *testing.T, ns *netnstest.NS, fn func() error) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

// A client in another network namespace, as a container on a veth pair is,
// is not found from the agent's namespace: it is not local. From its own
// namespace the same socket is found, so the miss is the namespace's doing.
func TestLookupOtherNetns(t *testing.T) {
	requireRoot(t)
	agentNS, clientNS := netnstest.New(t), netnstest.New(t)
	// TEST-NET-1 addresses, which exist only inside these namespaces.
	netnstest.Link(t, agentNS, clientNS, netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("192.0.2.2/24"))

	var ln net.Listener
	var agentR, clientR *Resolver
	inside(t, agentNS, func() error {
		ln = listen(t, "tcp4", "192.0.2.1:0")
		agentR = newResolver(t, Options{})
		return nil
	})
	client, err := clientNS.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial across the veth pair: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	inside(t, clientNS, func() error {
		clientR = newResolver(t, Options{})
		return nil
	})
	server := accept(t, ln)
	local, remote := ends(server)

	if got := lookup(t, agentR, local, remote); got != (Info{}) {
		t.Errorf("from the agent's namespace: Lookup = %+v, want not local", got)
	}
	got := lookup(t, clientR, local, remote)
	if !got.Local || got.Inode != mustInode(t, client) {
		t.Errorf("from the client's namespace: Lookup = %+v, want inode %d", got, mustInode(t, client))
	}
}

// On a dual-stack listener ([::]:port) the agent sees an IPv4 client as
// ::ffff:a.b.c.d; the lookup still finds it. The wildcard listener lives in
// a namespace of the test's own, with only loopback.
func TestLookupDualStackListener(t *testing.T) {
	requireRoot(t)
	ns := netnstest.New(t)
	var ln net.Listener
	var r *Resolver
	inside(t, ns, func() error {
		ln = listen(t, "tcp", "[::]:0")
		r = newResolver(t, Options{})
		return nil
	})
	client, err := ns.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	server := accept(t, ln)
	local, remote := ends(server)
	if !remote.Addr().Is4In6() {
		t.Fatalf("remote address %v is not IPv4-mapped; the test proves nothing", remote)
	}
	got := lookup(t, r, local, remote)
	if !got.Local || got.Inode != mustInode(t, client) {
		t.Errorf("Lookup(%v, %v) = %+v, want inode %d", local, remote, got, mustInode(t, client))
	}
}

// A client bound to a link with a high index (created after many others,
// as the agent's link may be on a container host full of veths) is found:
// binding to some link cannot make a local user unidentified. The links
// (bridges: this kernel has no dummy links) and the address live in a
// namespace of the test's own.
func TestLookupBoundToLaterLink(t *testing.T) {
	requireRoot(t)
	ns := netnstest.New(t)
	h := ns.Handle()
	var last netlink.Link
	for i := range 80 {
		l := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("br%d", i)}}
		if err := h.LinkAdd(l); err != nil {
			t.Fatalf("adding %s: %v", l.Name, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("setting %s up: %v", l.Name, err)
		}
		last = l
	}
	// A TEST-NET-1 address, which exists only inside this namespace.
	if err := h.AddrAdd(last, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("192.0.2.80"), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	var r *Resolver
	var client net.Conn
	inside(t, ns, func() error {
		ln = listen(t, "tcp4", "192.0.2.80:0")
		r = newResolver(t, Options{})
		var err error
		client, err = boundDialer(last.Attrs().Name).Dial("tcp4", ln.Addr().String())
		return err
	})
	t.Cleanup(func() { client.Close() })
	server := accept(t, ln)
	local, remote := ends(server)
	got, err := r.Lookup(local, remote)
	if err != nil || !got.Local || got.UID != uint32(os.Getuid()) || got.Inode != mustInode(t, client) {
		t.Errorf("Lookup = %+v, %v; want local, uid %d, inode %d", got, err, os.Getuid(), mustInode(t, client))
	}
}

package caller

import (
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// newNetns creates a network namespace, removed when the test ends (once
// its handle and every socket in it are closed). The calling thread stays
// in its own namespace.
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("netns.Get: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("netns.New: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		// The thread stays locked, so it dies with the test goroutine
		// instead of running other goroutines in the wrong namespace.
		t.Fatalf("restore netns: %v", err)
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close() })
	return ns
}

// inNetns runs fn on a thread inside ns. Sockets fn creates belong to ns.
func inNetns(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("netns.Get: %v", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("netns.Set: %v", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("restore netns: %v", err) // the thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

func handleAt(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink.NewHandleAt: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// setUp configures a link inside a test namespace: address, then up.
func setUp(t *testing.T, h *netlink.Handle, name, cidr string) {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("LinkByName %s: %v", name, err)
	}
	if cidr != "" {
		addr, err := netlink.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(link, addr); err != nil {
			t.Fatalf("AddrAdd %s %s: %v", name, cidr, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatalf("LinkSetUp %s: %v", name, err)
	}
}

func waitCarrier(t *testing.T, h *netlink.Handle, name string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		link, err := h.LinkByName(name)
		if err != nil {
			t.Fatalf("LinkByName %s: %v", name, err)
		}
		if link.Attrs().OperState == netlink.OperUp {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no carrier after 5s (state %v)", name, link.Attrs().OperState)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A client in another network namespace, as a container on a veth pair is,
// is not found from the agent's namespace: it is not local. From its own
// namespace the same socket is found, so the miss is the namespace's doing.
func TestLookupOtherNetns(t *testing.T) {
	requireRoot(t)
	agentNS, clientNS := newNetns(t), newNetns(t)
	ha, hc := handleAt(t, agentNS), handleAt(t, clientNS)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: "ct0"},
		PeerName:      "host0",
		PeerNamespace: netlink.NsFd(agentNS),
	}
	if err := hc.LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
	// TEST-NET-1 addresses, which exist only inside these namespaces.
	setUp(t, hc, "ct0", "192.0.2.2/24")
	setUp(t, ha, "host0", "192.0.2.1/24")
	// A SYN sent before the carrier is up waits a second for its retry.
	waitCarrier(t, hc, "ct0")
	waitCarrier(t, ha, "host0")

	var ln net.Listener
	var agentR *Resolver
	inNetns(t, agentNS, func() {
		ln = listen(t, "tcp4", "192.0.2.1:0")
		agentR = newResolver(t, Options{})
	})
	var client net.Conn
	var clientR *Resolver
	inNetns(t, clientNS, func() {
		var err error
		client, err = net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatalf("dial across the veth pair: %v", err)
		}
		t.Cleanup(func() { client.Close() })
		clientR = newResolver(t, Options{})
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
	ns := newNetns(t)
	setUp(t, handleAt(t, ns), "lo", "")
	var ln net.Listener
	var r *Resolver
	var client net.Conn
	inNetns(t, ns, func() {
		ln = listen(t, "tcp", "[::]:0")
		r = newResolver(t, Options{})
		port := ln.Addr().(*net.TCPAddr).Port
		var err error
		client, err = net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { client.Close() })
	})
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

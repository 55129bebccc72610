package caller

import (
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// busyConns is how many extra loopback connections the "busy" benchmarks
// hold open: a dump walks every one of them, an exact request none.
const busyConns = 4000

// openConns opens n loopback connections to a listener of their own and
// holds them until the benchmark ends. They are closed with a reset, so
// they leave no TIME_WAIT entries to weigh on later benchmarks.
func openConns(b *testing.B, n int) {
	b.Helper()
	ln := listen(b, "tcp4", "127.0.0.1:0")
	accepted := make(chan []net.Conn, 1)
	go func() {
		var cs []net.Conn
		for len(cs) < n {
			c, err := ln.Accept()
			if err != nil {
				break
			}
			cs = append(cs, c)
		}
		accepted <- cs
	}()
	clients := make([]net.Conn, 0, n)
	closeAll := func(cs []net.Conn) {
		for _, c := range cs {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}
	for range n {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		if err != nil {
			ln.Close()
			closeAll(clients)
			closeAll(<-accepted)
			b.Fatalf("extra connection %d: %v", len(clients)+1, err)
		}
		clients = append(clients, c)
	}
	servers := <-accepted
	b.Cleanup(func() {
		closeAll(clients)
		closeAll(servers)
	})
}

// benchmarkLoads runs fn on one loopback connection, on an otherwise idle
// host and with busyConns more connections open.
func benchmarkLoads(b *testing.B, fn func(b *testing.B, client, server net.Conn)) {
	for _, load := range []struct {
		name  string
		extra int
	}{{"idle", 0}, {"busy4000", busyConns}} {
		b.Run(load.name, func(b *testing.B) {
			ln := listen(b, "tcp4", "127.0.0.1:0")
			client, server := connect(b, "tcp4", ln)
			openConns(b, load.extra)
			b.ReportAllocs()
			fn(b, client, server)
		})
	}
}

// BenchmarkLookup: one exact sock_diag request per lookup.
func BenchmarkLookup(b *testing.B) {
	benchmarkLoads(b, func(b *testing.B, client, server net.Conn) {
		r := newResolver(b, Options{})
		local, remote := ends(server)
		want := mustInode(b, client)
		lookup(b, r, local, remote) // fills the cgroup cache
		for b.Loop() {
			info, err := r.Lookup(local, remote)
			if err != nil || info.Inode != want {
				b.Fatalf("Lookup = %+v, %v; want inode %d", info, err, want)
			}
		}
	})
}

// BenchmarkSocketGetDump: netlink.SocketGet (vishvananda/netlink v1.3.1),
// which dumps every TCP socket to find one, for comparison.
func BenchmarkSocketGetDump(b *testing.B) {
	benchmarkLoads(b, func(b *testing.B, client, server net.Conn) {
		want := mustInode(b, client)
		// The client's socket: its local end is the agent's remote.
		local, remote := server.RemoteAddr(), server.LocalAddr()
		for b.Loop() {
			s, err := netlink.SocketGet(local, remote)
			if err != nil || s.INode != want {
				b.Fatalf("SocketGet = %+v, %v; want inode %d", s, err, want)
			}
		}
	})
}

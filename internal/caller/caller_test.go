package caller

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// helperEnv makes the test binary a client: it connects to the address in
// the variable, prints its socket's inode, and holds the connection until
// its stdin closes. Tests run it as another user or in another cgroup.
const helperEnv = "IMDS_CALLER_TEST_CONNECT"

func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" {
		os.Exit(runHelper(addr))
	}
	os.Exit(m.Run())
}

func runHelper(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	defer c.Close()
	ino, err := connInode(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	fmt.Printf("%d %s\n", ino, c.LocalAddr())
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// connInode is the inode of a connection's socket, from fstat of its fd.
func connInode(c net.Conn) (uint32, error) {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		return 0, err
	}
	return uint32(st.Ino), serr
}

func mustInode(t testing.TB, c net.Conn) uint32 {
	t.Helper()
	ino, err := connInode(c)
	if err != nil {
		t.Fatalf("fstat: %v", err)
	}
	return ino
}

func newResolver(t testing.TB, opts Options) *Resolver {
	t.Helper()
	r, err := NewResolver(opts)
	if err != nil {
		t.Fatalf("NewResolver: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

func listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// accept returns the next connection on ln, or fails the test.
func accept(t testing.TB, ln net.Listener) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("accept: %v", r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(10 * time.Second):
		ln.Close()
		t.Fatal("accept: timed out")
		return nil
	}
}

// connect opens a client connection to ln and returns both ends.
func connect(t testing.TB, network string, ln net.Listener) (client, server net.Conn) {
	t.Helper()
	client, err := net.DialTimeout(network, ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	return client, accept(t, ln)
}

// ends are the addresses the agent sees on an accepted connection.
func ends(c net.Conn) (local, remote netip.AddrPort) {
	return c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
}

func mapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
}

func lookup(t testing.TB, r *Resolver, local, remote netip.AddrPort) Info {
	t.Helper()
	info, err := r.Lookup(local, remote)
	if err != nil {
		t.Fatalf("Lookup(%v, %v): %v", local, remote, err)
	}
	return info
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func TestLookupLoopback(t *testing.T) {
	r := newResolver(t, Options{})
	self := selfCgroup(t)
	for _, tc := range []struct {
		name, network, addr string
		mapInputs           bool // the agent on a dual-stack socket sees ::ffff:127.0.0.1
	}{
		{"ipv4", "tcp4", "127.0.0.1:0", false},
		{"ipv4-mapped", "tcp4", "127.0.0.1:0", true},
		{"ipv6", "tcp6", "[::1]:0", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, tc.network, tc.addr)
			client, server := connect(t, tc.network, ln)
			local, remote := ends(server)
			if tc.mapInputs {
				local, remote = mapped(local), mapped(remote)
			}
			got := lookup(t, r, local, remote)
			want := Info{Local: true, UID: uint32(os.Getuid()), Inode: mustInode(t, client)}
			if got.Inode == mustInode(t, server) {
				t.Fatal("Lookup found the agent's own socket, not the client's")
			}
			checkCgroup(t, got, self)
			want.CgroupID, want.Cgroup, want.Unit = got.CgroupID, got.Cgroup, got.Unit
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Lookup (-want +got):\n%s", diff)
			}
		})
	}
}

// An IPv6 client socket that connected to an IPv4 address through its
// IPv4-mapped form is found too: the kernel answers with AF_INET6.
func TestLookupMappedClientSocket(t *testing.T) {
	r := newResolver(t, Options{})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrInet6{Port: port, Addr: netip.MustParseAddr("::ffff:127.0.0.1").As16()}
	if err := unix.Connect(fd, sa); err != nil {
		t.Fatalf("connect: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	server := accept(t, ln)
	got := lookup(t, r, server.LocalAddr().(*net.TCPAddr).AddrPort(), server.RemoteAddr().(*net.TCPAddr).AddrPort())
	if !got.Local || got.Inode != uint32(st.Ino) || got.UID != uint32(os.Getuid()) {
		t.Errorf("Lookup = %+v, want local socket inode %d uid %d", got, st.Ino, os.Getuid())
	}
}

func TestLookupNotFound(t *testing.T) {
	r := newResolver(t, Options{})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	lport := ln.Addr().(*net.TCPAddr).AddrPort()
	for _, tc := range []struct {
		name          string
		local, remote netip.AddrPort
	}{
		{"no such connection", netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2")},
		{"no such connection v6", netip.MustParseAddrPort("[::1]:1"), netip.MustParseAddrPort("[::1]:2")},
		// The exact lookup falls back to a listener bound to the
		// "client" address: a listener is no client.
		{"listener at the client address", netip.MustParseAddrPort("127.0.0.1:9"), lport},
	} {
		// The client address is this host's own: the client is here,
		// but nobody in particular.
		t.Run(tc.name, func(t *testing.T) {
			if got, err := r.Lookup(tc.local, tc.remote); !errors.Is(err, ErrUnidentified) || got != (Info{}) {
				t.Errorf("Lookup = %+v, %v; want ErrUnidentified", got, err)
			}
		})
	}
	// An address no interface here has: the client is elsewhere.
	if got := lookup(t, r, netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("192.0.2.7:2")); got != (Info{}) {
		t.Errorf("Lookup from 192.0.2.7 = %+v, want not local", got)
	}
}

// boundDialer dials from sockets bound to device (SO_BINDTODEVICE).
func boundDialer(device string) *net.Dialer {
	return &net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), device) }); err != nil {
			return err
		}
		return serr
	}}
}

// A client socket bound to a device (SO_BINDTODEVICE, which any user may
// set on an unbound socket since Linux 5.7) is found like any other: it
// must not pass for a container and escape the rules about users.
func TestLookupBoundToDevice(t *testing.T) {
	requireRoot(t) // CAP_NET_RAW for SO_BINDTODEVICE on kernels before 5.7
	r := newResolver(t, Options{})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	d := boundDialer("lo")
	client, err := d.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial bound to lo: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	server := accept(t, ln)
	local, remote := ends(server)
	got := lookup(t, r, local, remote)
	if !got.Local || got.UID != uint32(os.Getuid()) || got.Inode != mustInode(t, client) {
		t.Errorf("Lookup = %+v, want local, uid %d, inode %d", got, os.Getuid(), mustInode(t, client))
	}
}

// An IPv6 socket bound to a device and connected to the IPv4 address
// (::ffff:127.0.0.1) is found too: the dump that finds bound sockets lists
// one family, and the client's is not the address's.
func TestLookupBoundToDeviceMapped(t *testing.T) {
	requireRoot(t) // CAP_NET_RAW for SO_BINDTODEVICE on kernels before 5.7
	r := newResolver(t, Options{})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	// Go's net package would dial an IPv4-mapped address with an IPv4
	// socket: the client socket is made by hand.
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.BindToDevice(fd, "lo"); err != nil {
		t.Fatal(err)
	}
	to := netip.MustParseAddr("::ffff:127.0.0.1")
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: ln.Addr().(*net.TCPAddr).Port, Addr: to.As16()}); err != nil {
		t.Fatalf("connect to %v: %v", to, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	local, remote := ends(accept(t, ln))
	got, err := r.Lookup(local, remote)
	if err != nil || !got.Local || got.UID != uint32(os.Getuid()) || uint64(got.Inode) != st.Ino {
		t.Errorf("Lookup = %+v, %v; want local, uid %d, inode %d", got, err, os.Getuid(), st.Ino)
	}
	// It takes two dumps, and each counts against the bound.
	r.dumps = rate.NewLimiter(0, 1)
	if got, err := r.Lookup(local, remote); !errors.Is(err, ErrUnidentified) || got != (Info{}) {
		t.Errorf("with one dump left: Lookup = %+v, %v; want ErrUnidentified", got, err)
	}
}

// The dumps that find bound sockets are bounded (each walks the kernel's
// whole connection table, and opening and resetting connections is free
// to any user): past the bound, a socket the exact lookup misses is
// unidentified, and a socket it finds is found as ever.
func TestLookupBoundDumpsLimited(t *testing.T) {
	requireRoot(t) // CAP_NET_RAW for SO_BINDTODEVICE on kernels before 5.7
	r := newResolver(t, Options{})
	r.dumps = rate.NewLimiter(0, 0) // none left
	ln := listen(t, "tcp4", "127.0.0.1:0")
	d := boundDialer("lo")
	client, err := d.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial bound to lo: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	local, remote := ends(accept(t, ln))
	if got, err := r.Lookup(local, remote); !errors.Is(err, ErrUnidentified) || got != (Info{}) {
		t.Errorf("bound client past the bound: Lookup = %+v, %v; want ErrUnidentified", got, err)
	}
	plain, server := connect(t, "tcp4", ln)
	local, remote = ends(server)
	if got := lookup(t, r, local, remote); !got.Local || got.Inode != mustInode(t, plain) {
		t.Errorf("unbound client: Lookup = %+v, want inode %d", got, mustInode(t, plain))
	}
}

func TestLookupBadAddress(t *testing.T) {
	r := newResolver(t, Options{})
	v4, v6 := netip.MustParseAddrPort("127.0.0.1:80"), netip.MustParseAddrPort("[::1]:80")
	for _, tc := range [][2]netip.AddrPort{{v4, v6}, {v6, v4}, {{}, v4}, {v4, {}}} {
		if _, err := r.Lookup(tc[0], tc[1]); err == nil {
			t.Errorf("Lookup(%v, %v): no error", tc[0], tc[1])
		}
	}
}

// A client after it disconnected: its socket is gone (or in TIME_WAIT,
// without an owner), so it is not reported with a made-up UID; its address
// is this host's, so it is ErrUnidentified, not elsewhere.
func TestLookupClosedClient(t *testing.T) {
	r := newResolver(t, Options{})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	client, server := connect(t, "tcp4", ln)
	local, remote := ends(server)
	client.Close()
	server.Close() // the client's end now moves to TIME_WAIT
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := r.Lookup(local, remote)
		if errors.Is(err, ErrUnidentified) && got == (Info{}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Lookup after close = %+v, %v; want ErrUnidentified", got, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLookupClientClosedFirst: a client that sends and closes before the
// agent looks it up leaves a socket without an owner (FIN-WAIT-1 or -2),
// which the kernel reports with inode 0 and uid 0. It is not identified,
// at once: taken as found, any user's request would be judged and audited
// as root's.
func TestLookupClientClosedFirst(t *testing.T) {
	r := newResolver(t, Options{})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	client, server := connect(t, "tcp4", ln)
	local, remote := ends(server)
	if _, err := client.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	client.Close()
	if got, err := r.Lookup(local, remote); !errors.Is(err, ErrUnidentified) || got != (Info{}) {
		t.Errorf("Lookup of a client that closed first = %+v, %v; want ErrUnidentified", got, err)
	}
}

func TestLookupAfterClose(t *testing.T) {
	r, err := NewResolver(Options{Sockets: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err = r.Lookup(netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2"))
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Lookup after Close: %v, want ErrClosed", err)
	}
}

// helperBinary returns a copy of the test binary that any user may run
// (go test builds it under a directory only root can enter).
func helperBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "caller-helper-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	path := filepath.Join(dir, "caller.test")
	out, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// startClient runs the helper client against ln with attr and returns the
// inode it reports and the agent's end of its connection. The client
// holds the connection until the test ends.
func startClient(t *testing.T, bin string, ln net.Listener, attr *syscall.SysProcAttr) (uint32, net.Conn) {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+ln.Addr().String())
	cmd.SysProcAttr = attr
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper: %v", err)
		}
	})
	server := accept(t, ln)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("helper output: %v", err)
	}
	inoText, addr, _ := strings.Cut(strings.TrimSpace(line), " ")
	ino, err := strconv.ParseUint(inoText, 10, 32)
	if err != nil {
		t.Fatalf("helper output %q: %v", line, err)
	}
	if addr != server.RemoteAddr().String() {
		t.Fatalf("accepted %s, but the helper connected from %s", server.RemoteAddr(), addr)
	}
	return uint32(ino), server
}

func TestLookupOtherUser(t *testing.T) {
	requireRoot(t)
	const nobody = 65534
	r := newResolver(t, Options{})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	ino, server := startClient(t, helperBinary(t), ln, &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: nobody, Gid: nobody},
	})
	local, remote := ends(server)
	got := lookup(t, r, local, remote)
	if !got.Local || got.UID != nobody || got.Inode != ino {
		t.Errorf("Lookup = %+v, want local uid %d inode %d", got, nobody, ino)
	}
}

// 64 goroutines look up their own connections at once, through a pool of
// two sockets: every answer is the right socket.
func TestLookupConcurrent(t *testing.T) {
	r := newResolver(t, Options{Sockets: 2})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	type conn struct {
		local, remote netip.AddrPort
		inode         uint32
	}
	conns := make([]conn, 64)
	for i := range conns {
		client, server := connect(t, "tcp4", ln)
		local, remote := ends(server)
		conns[i] = conn{local, remote, mustInode(t, client)}
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			for range 50 {
				got, err := r.Lookup(c.local, c.remote)
				if err != nil {
					t.Errorf("Lookup: %v", err)
					return
				}
				if !got.Local || got.Inode != c.inode || got.UID != uint32(os.Getuid()) {
					t.Errorf("Lookup(%v, %v) = %+v, want inode %d", c.local, c.remote, got, c.inode)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestLookupAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	r := newResolver(t, Options{})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	_, server := connect(t, "tcp4", ln)
	local, remote := ends(server)
	lookup(t, r, local, remote) // fills the cgroup cache
	// Only a found socket: a miss asks the routing table whether the
	// client is on this host (lookupBound), which allocates.
	for name, pair := range map[string][2]netip.AddrPort{
		"found": {local, remote},
	} {
		allocs := testing.AllocsPerRun(1000, func() {
			if _, err := r.Lookup(pair[0], pair[1]); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per Lookup, want 0", name, allocs)
		}
	}
}

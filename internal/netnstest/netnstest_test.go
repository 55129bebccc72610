package netnstest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

var (
	// A listener in the first namespace on an address no veth carries, as
	// the agent's 169.254.169.254 on its own link.
	service = netip.MustParsePrefix("192.0.2.80/32")
	aSide   = netip.MustParsePrefix("10.200.1.1/24")
	bSide   = netip.MustParsePrefix("10.200.1.2/24")
)

// echo serves one line back on every connection until the listener closes.
func echo(t *testing.T, l net.Listener) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				io.WriteString(c, "echo "+line)
			}()
		}
	}()
}

func roundTrip(c net.Conn, msg string) (string, error) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// A client in the second namespace reaches a service in the first through a
// route via the first's end of the veth, as a container reaches the agent.
func TestRoutedThroughFirst(t *testing.T) {
	a, b := New(t), New(t)
	aName, bName := Link(t, a, b, aSide, bSide)
	if aName == "" || bName == "" {
		t.Fatal("no link names")
	}
	// The service address lives on a's loopback.
	lo, err := a.Handle().LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Handle().AddrAdd(lo, nlAddr(service)); err != nil {
		t.Fatal(err)
	}
	b.Route(service, aSide.Addr())

	l, err := a.Listen("tcp4", service.Addr().String()+":7000")
	if err != nil {
		t.Fatal(err)
	}
	echo(t, l)
	c, err := b.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatalf("dial from %s: %v", b, err)
	}
	if got, err := roundTrip(c, "hello"); err != nil || got != "echo hello" {
		t.Fatalf("round trip = %q, %v", got, err)
	}
}

func nlAddr(p netip.Prefix) *netlink.Addr { return &netlink.Addr{IPNet: ipNet(p)} }

// Three namespaces in a row, the middle one forwarding: a client in c reaches
// a listener in a over HTTP, through b.
func TestForwardingThroughMiddle(t *testing.T) {
	a, b, c := New(t), New(t), New(t)
	Link(t, a, b, netip.MustParsePrefix("10.201.1.1/24"), netip.MustParsePrefix("10.201.1.2/24"))
	Link(t, b, c, netip.MustParsePrefix("10.201.2.1/24"), netip.MustParsePrefix("10.201.2.2/24"))
	b.Forwarding(true)
	a.Route(netip.MustParsePrefix("10.201.2.0/24"), netip.MustParseAddr("10.201.1.2"))
	c.Route(netip.MustParsePrefix("10.201.1.0/24"), netip.MustParseAddr("10.201.2.1"))

	l, err := a.Listen("tcp", "10.201.1.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "from %s", r.RemoteAddr)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})

	resp, err := c.HTTPClient().Get("http://10.201.1.1:8080/")
	if err != nil {
		t.Fatalf("GET from %s: %v", c, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(body), "from 10.201.2.2:") {
		t.Errorf("body = %q, want the client's address in c", body)
	}

	// Without forwarding in the middle, the same request fails.
	b.Forwarding(false)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if conn, err := c.DialContext(ctx, "tcp", "10.201.1.1:8080"); err == nil {
		conn.Close()
		t.Error("reached a through b with forwarding off")
	}
}

// A process started with Command lives in the namespace: its
// /proc/self/ns/net is the namespace, and /proc/net/dev lists only the
// namespace's links.
func TestCommandRunsInside(t *testing.T) {
	a, b := New(t), New(t)
	aName, _ := Link(t, a, b, netip.Prefix{}, netip.Prefix{})
	ctx := context.Background()

	out, err := a.Command(ctx, "readlink", "/proc/self/ns/net").Output()
	if err != nil {
		t.Fatalf("readlink: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != a.ID() {
		t.Errorf("process namespace = %s, want %s", got, a.ID())
	}
	own, _ := os.Readlink("/proc/self/ns/net")
	if own == a.ID() {
		t.Fatal("the test process itself is in the namespace")
	}

	cmd := a.Command(ctx, "cat", "/proc/net/dev")
	cmd.Env = append(os.Environ(), "EXTRA=1") // replacing Env must not matter
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("cat: %v", err)
	}
	var links []string
	for _, line := range strings.Split(string(out), "\n")[2:] {
		if name, _, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			links = append(links, name)
		}
	}
	slices.Sort(links)
	want := []string{aName, "lo"}
	slices.Sort(want)
	if !slices.Equal(links, want) {
		t.Errorf("links seen by the process = %v, want %v", links, want)
	}

	// Exit status, stdin and arguments pass through the launcher.
	cmd = a.Command(ctx, "sh", "-c", `read x; echo "$x $1"; exit 3`, "sh", "arg")
	cmd.Stdin = strings.NewReader("in\n")
	out, err = cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || strings.TrimSpace(string(out)) != "in arg" {
		t.Errorf("sh: out %q, err %v; want \"in arg\" and exit 3", out, err)
	}

	if err := a.Command(ctx, "no-such-program-netnstest").Run(); !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("missing program: err = %v, want exec.ErrNotFound", err)
	}
}

// A process still running when the test ends is killed, and its namespace
// goes with it.
func TestCommandKilledAtCleanup(t *testing.T) {
	var cmd *exec.Cmd
	t.Run("inner", func(t *testing.T) {
		n := New(t)
		cmd = n.Command(context.Background(), "sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
	})
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != -1 {
			t.Errorf("wait = %v, want killed by a signal", err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the process outlived its test")
	}
}

// Do never leaves a thread in the namespace: afterwards every thread of the
// process, the main thread included, is in the test's own namespace.
func TestDoLeavesNoThreadBehind(t *testing.T) {
	n := New(t)
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			if err := n.Do(func() error { return nil }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := n.Do(func() error { panic("boom") }); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("panic in Do: err = %v", err)
	}
	// Many goroutines at once, so the runtime spreads them over threads,
	// the main thread among them.
	threads, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	own, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if own == n.ID() {
		t.Fatalf("the main thread is in the test's namespace %s", own)
	}
	for _, th := range threads {
		ns, err := os.Readlink("/proc/self/task/" + th.Name() + "/ns/net")
		if err != nil {
			continue // the thread ended
		}
		if ns != own {
			t.Errorf("thread %s is in %s, the process in %s", th.Name(), ns, own)
		}
	}
	t.Logf("%d threads, all in %s", len(threads), own)
}

func TestRefusesNames(t *testing.T) {
	n := New(t)
	if _, err := n.Dial("tcp", "localhost:80"); err == nil || !strings.Contains(err.Error(), "not an IP address") {
		t.Errorf("dial localhost: %v", err)
	}
	if _, err := n.HTTPClient().Get("http://example.invalid/"); err == nil || !strings.Contains(err.Error(), "not an IP address") {
		t.Errorf("GET by name: %v", err)
	}
	if err := n.setSysctl("kernel.hostname", "x"); err == nil {
		t.Error("wrote a sysctl that is not per network namespace")
	}
}

// SetSysctl changes the namespace's value and leaves the host's alone.
func TestSysctlStaysInside(t *testing.T) {
	const key = "/proc/sys/net/ipv4/conf/lo/arp_ignore"
	before, err := os.ReadFile(key)
	if err != nil {
		t.Skip(err)
	}
	n := New(t)
	want := "2"
	if strings.TrimSpace(string(before)) == "2" {
		want = "1"
	}
	n.SetSysctl("net.ipv4.conf.lo.arp_ignore", want)
	var inside []byte
	if err := n.Do(func() error {
		var err error
		inside, err = os.ReadFile(key)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(key)
	if strings.TrimSpace(string(inside)) != want {
		t.Errorf("inside = %q, want %s", inside, want)
	}
	if string(after) != string(before) {
		t.Errorf("the host's value changed from %q to %q", before, after)
	}
}

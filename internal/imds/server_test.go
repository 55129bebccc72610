package imds

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// serveLoopback serves s on a loopback port until the test ends and
// returns its address.
func serveLoopback(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return ln.Addr().String()
}

// dialLoopback connects to addr; the connection is closed when the test
// ends, if it was not before.
func dialLoopback(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// OnQuiet fires when the last open connection closes, not before.
func TestServerOnQuiet(t *testing.T) {
	s := NewServer(http.NotFoundHandler(), slog.New(slog.DiscardHandler), nil)
	quiet := make(chan int64, 4)
	s.OnQuiet(func() { quiet <- s.Connections() })
	addr := serveLoopback(t, s)

	dial := func() net.Conn {
		c := dialLoopback(t, addr)
		// A whole request and its answer: the server has seen the
		// connection.
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := dial(), dial()
	_ = a.Close()
	select {
	case n := <-quiet:
		t.Fatalf("quiet with %d connections still open", n)
	case <-time.After(200 * time.Millisecond):
	}
	_ = b.Close()
	select {
	case n := <-quiet:
		if n != 0 {
			t.Errorf("quiet with %d connections open", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no quiet call after the last connection closed")
	}
}

// TestServerClosesRequestsWithBodies: a request with a body is answered,
// then its connection closed at once, not held while the server waits for
// a body that trickles in. That holds for OPTIONS * too, which net/http
// would otherwise answer itself after reading the body.
func TestServerClosesRequestsWithBodies(t *testing.T) {
	s := NewServer(http.NotFoundHandler(), slog.New(slog.DiscardHandler), nil)
	addr := serveLoopback(t, s)
	for _, req := range []string{
		"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\nx",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
	} {
		c := dialLoopback(t, addr)
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_ = c.SetReadDeadline(start.Add(5 * time.Second))
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%q: no answer: %v", req, err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if !res.Close {
			t.Errorf("%q: the answer does not say Connection: close", req)
		}
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("%q: after the answer: %v, want the connection closed", req, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%q: connection closed after %v, want at once", req, d)
		}
	}
}

// connHooks records what the hooks saw of each request's connection.
type connHooks struct {
	NopHooks
	seen chan any
}

func (h connHooks) Served(req *Request, _ int) { h.seen <- req.Conn }

// TestServerHandsHooksTheConnection: connValue runs once per connection,
// and every request on it hands the hooks that value; the connection it is
// given still reaches the socket (the hop limit is set through it).
func TestServerHandsHooksTheConnection(t *testing.T) {
	f := newFixture(t, Options{Enabled: true, HopLimit: 1}, testInstance)
	hooks := connHooks{seen: make(chan any, 8)}
	h := NewHandler(NewMetadata(testInstance, Options{Enabled: true, HopLimit: 1}), f.creds, f.tokens, time.Now, hooks)
	type record struct {
		n      int
		socket bool
	}
	var made atomic.Int32
	s := NewServer(h, slog.New(slog.DiscardHandler), func(c net.Conn) any {
		_, ok := c.(syscall.Conn)
		return &record{n: int(made.Add(1)), socket: ok}
	})
	addr := serveLoopback(t, s)

	get := func(c net.Conn) *record {
		t.Helper()
		if _, err := c.Write([]byte("GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		select {
		case v := <-hooks.seen:
			r, _ := v.(*record)
			if r == nil {
				t.Fatalf("the hooks got %#v, not the connection's value", v)
			}
			return r
		case <-time.After(5 * time.Second):
			t.Fatal("no request reached the hooks")
		}
		return nil
	}
	a, b := dialLoopback(t, addr), dialLoopback(t, addr)
	first, again, other := get(a), get(a), get(b)
	if first != again {
		t.Errorf("two requests on one connection saw two values (%d, %d)", first.n, again.n)
	}
	if other == first {
		t.Error("two connections share one value")
	}
	if !first.socket {
		t.Error("the connection handed to connValue does not reach its socket")
	}
	if n := made.Load(); n != 2 {
		t.Errorf("connValue ran %d times for 2 connections", n)
	}
}

// TestServerDateHeader: every answer carries one Date header, in net/http's
// format, for the time the handler took the request up: the fixture's
// fixed clock, not the real one, so a Date net/http wrote would show.
func TestServerDateHeader(t *testing.T) {
	f := newFixture(t, required, testInstance)
	s := NewServer(f.h, slog.New(slog.DiscardHandler), nil)
	addr := serveLoopback(t, s)
	c := dialLoopback(t, addr)
	rd := bufio.NewReader(c)
	ask := func(req string) *http.Response {
		t.Helper()
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(rd, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	token := f.token(t)
	requests := map[string]string{
		"token":       "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
		"credentials": "GET /latest/meta-data/iam/security-credentials/web HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: " + token + "\r\n\r\n",
		"no token":    "GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"not found":   "GET /latest/meta-data/nothing HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: " + token + "\r\n\r\n",
		"method":      "POST /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n",
	}
	for _, step := range []time.Duration{0, 400 * time.Millisecond, 700 * time.Millisecond, time.Hour} {
		f.advance(step)
		want := f.now.Load().UTC().Format(http.TimeFormat)
		for name, req := range requests {
			res := ask(req)
			if got := res.Header["Date"]; len(got) != 1 || got[0] != want {
				t.Errorf("%s at %v: status %d, Date %q, want [%q]", name, f.now.Load(), res.StatusCode, got, want)
			}
		}
	}
}

// flakyListener fails its first Accept with a temporary error, as a
// listener out of file descriptors does.
type flakyListener struct {
	net.Listener
	failed atomic.Bool
}

type temporaryError struct{}

func (temporaryError) Error() string   { return "accept4: too many open files" }
func (temporaryError) Timeout() bool   { return false }
func (temporaryError) Temporary() bool { return true }

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.failed.CompareAndSwap(false, true) {
		return nil, temporaryError{}
	}
	return l.Listener.Accept()
}

// TestServerErrorLog: a failing accept (out of file descriptors) is an
// error in the log, not a debug line nobody sees.
func TestServerErrorLog(t *testing.T) {
	var logs lockedLog
	s := NewServer(http.NotFoundHandler(), slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})), nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(&flakyListener{Listener: ln}) }()
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	c := dialLoopback(t, ln.Addr().String()) // accepted after the failure
	if _, err := c.Write([]byte("GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	res.Body.Close()
	if out := logs.String(); !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "too many open files") {
		t.Errorf("the failed accept is not an error in the log:\n%s", out)
	}
}

// lockedLog is a log output the server's goroutines may share.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

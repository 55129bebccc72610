package imds

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// discardWriter is the cheapest http.ResponseWriter: its header map is
// reused, so what a benchmark counts is the handler's own work.
type discardWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(s int)   { w.status = s }
func (w *discardWriter) Write(b []byte) (int, error) {
	w.n += len(b)
	return len(b), nil
}

func (w *discardWriter) reset() {
	clear(w.h)
	w.status, w.n = 0, 0
}

// credentialsRequest is an SDK's credential GET with a valid token. On a
// keep-alive connection, it carries the connection's record, as requests
// served by Server do.
func credentialsRequest(tb testing.TB, f *fixture, keepAlive bool) *http.Request {
	tb.Helper()
	ctx := context.Background()
	if keepAlive {
		ctx = WithConn(ctx, nil, nil)
	}
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://169.254.169.254/latest/meta-data/iam/security-credentials/"+testRole.Name, nil)
	r.Header.Set("X-aws-ec2-metadata-token", f.token(tb))
	return r
}

// serveCredentials serves r and checks it was answered with the document.
func serveCredentials(tb testing.TB, h http.Handler, w *discardWriter, r *http.Request) {
	w.reset()
	h.ServeHTTP(w, r)
	if w.status != http.StatusOK || w.n != len(credsJSON) {
		tb.Fatalf("credentials GET: status %d, %d bytes", w.status, w.n)
	}
}

// TestCredentialsGETAllocations pins the cost of the hottest request: a
// credential GET with a valid token allocates at most twice in the handler
// (net/http's own allocations are not counted here), and not at all on a
// connection the server keeps a record of.
func TestCredentialsGETAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race; the test command runs this test without it")
	}
	f := newFixture(t, required, testInstance)
	for _, tc := range []struct {
		keepAlive bool
		max       float64
	}{{false, 2}, {true, 0}} {
		r := credentialsRequest(t, f, tc.keepAlive)
		w := &discardWriter{h: http.Header{}}
		if n := testing.AllocsPerRun(1000, func() { serveCredentials(t, f.h, w, r) }); n > tc.max {
			t.Errorf("keep-alive %v: a credential GET allocates %v times, want at most %v", tc.keepAlive, n, tc.max)
		}
	}
}

// BenchmarkCredentialsGET: the token checked in full every time (a new
// connection), and on a keep-alive connection that presented it before.
func BenchmarkCredentialsGET(b *testing.B) {
	for _, bc := range []struct {
		name      string
		keepAlive bool
	}{{"new-connection", false}, {"keep-alive", true}} {
		b.Run(bc.name, func(b *testing.B) {
			f := newFixture(b, required, testInstance)
			r := credentialsRequest(b, f, bc.keepAlive)
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				serveCredentials(b, f.h, w, r)
			}
		})
	}
}

func BenchmarkTokenPUT(b *testing.B) {
	f := newFixture(b, required, testInstance)
	r := httptest.NewRequest(http.MethodPut, "http://169.254.169.254/latest/api/token", nil)
	r.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		w.reset()
		f.h.ServeHTTP(w, r)
		if w.status != http.StatusOK || w.n != TokenLen {
			b.Fatalf("token PUT: status %d, %d bytes", w.status, w.n)
		}
	}
}

// loopConn is one kept-alive client connection held in memory: its client
// sends req, waits for the answer, and sends req again, n times in all;
// then it closes. As on a socket, a read blocks while the client waits for
// an answer (net/http reads in the background while its handler runs),
// until the answer is written or a read deadline set in the past stops it.
// A benchmark then measures a request's handling in net/http and the
// handler on one thread, without the kernel's share or a client's.
type loopConn struct {
	req      []byte
	mu       sync.Mutex
	cond     sync.Cond
	left     int  // requests still to send
	off      int  // how much of the current request is sent
	waiting  bool // for the answer to the last request sent
	deadline time.Time
	answered int // bytes written
	answers  int // writes: one an answer, as net/http writes them
	ok       int // answers with status 200
	closed   chan struct{}
	once     sync.Once
}

func newLoopConn(req []byte, n int) *loopConn {
	c := &loopConn{req: req, left: n, closed: make(chan struct{})}
	c.cond.L = &c.mu
	return c
}

func (c *loopConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.waiting {
		if !c.deadline.IsZero() && !time.Now().Before(c.deadline) {
			return 0, os.ErrDeadlineExceeded
		}
		c.cond.Wait()
	}
	if c.left == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.req[c.off:])
	if c.off += n; c.off == len(c.req) {
		c.off, c.waiting = 0, true
		c.left--
	}
	return n, nil
}

func (c *loopConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.answered += len(p)
	c.answers++
	if bytes.HasPrefix(p, status200) {
		c.ok++
	}
	c.waiting = false
	c.cond.Broadcast()
	c.mu.Unlock()
	return len(p), nil
}

func (c *loopConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.cond.Broadcast()
	c.mu.Unlock()
	return nil
}

func (c *loopConn) SetDeadline(t time.Time) error    { return c.SetReadDeadline(t) }
func (c *loopConn) SetWriteDeadline(time.Time) error { return nil }
func (c *loopConn) LocalAddr() net.Addr              { return loopAddr }
func (c *loopConn) RemoteAddr() net.Addr             { return loopAddr }

func (c *loopConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

var status200 = []byte("HTTP/1.1 200 OK\r\n")

var loopAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80}

// oneConnListener hands its server one connection, then waits to be closed.
type oneConnListener struct {
	conn chan net.Conn
	done chan struct{}
	once sync.Once
}

func listenOnce(c net.Conn) *oneConnListener {
	l := &oneConnListener{conn: make(chan net.Conn, 1), done: make(chan struct{})}
	l.conn <- c
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conn:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return loopAddr }

// BenchmarkCredentialsGETServed: an SDK's credential GET on a kept-alive
// connection, served through net/http (a loopConn): by the agent's Server
// with the handler (NopHooks), and by the floor, a bare http.Server with
// the same timeouts whose handler writes the document with its
// Content-Type and Content-Length and checks nothing (bench/floor's, for
// this request). Run with -cpu 1.
func BenchmarkCredentialsGETServed(b *testing.B) {
	f := newFixture(b, required, testInstance)
	doc, docLength := []byte(credsJSON), []string{strconv.Itoa(len(credsJSON))}
	floor := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = textPlain
		h["Content-Length"] = docLength
		_, _ = w.Write(doc)
	})
	request := []byte("GET /latest/meta-data/iam/security-credentials/" + testRole.Name + " HTTP/1.1\r\n" +
		"Host: 169.254.169.254\r\nUser-Agent: aws-sdk-go-v2/1.41.0\r\nX-aws-ec2-metadata-token: " + f.token(b) + "\r\n\r\n")
	for _, bc := range []struct {
		name  string
		serve func(net.Listener) func()
	}{
		{"agent", func(ln net.Listener) func() {
			s := NewServer(f.h, slog.New(slog.DiscardHandler), nil)
			go func() { _ = s.Serve(ln) }()
			return func() { _ = s.Shutdown(context.Background()) }
		}},
		{"floor", func(ln net.Listener) func() {
			s := &http.Server{Handler: floor, ReadHeaderTimeout: ReadHeaderTimeout, ReadTimeout: ReadTimeout,
				WriteTimeout: WriteTimeout, IdleTimeout: IdleTimeout, MaxHeaderBytes: MaxHeaderBytes}
			go func() { _ = s.Serve(ln) }()
			return func() { _ = s.Shutdown(context.Background()) }
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			c := newLoopConn(request, b.N)
			ln := listenOnce(c)
			defer ln.Close()
			b.ResetTimer()
			stop := bc.serve(ln)
			<-c.closed
			b.StopTimer()
			stop()
			if c.answers != b.N || c.ok != b.N || c.answered%b.N != 0 {
				b.Fatalf("%d requests: %d answers, %d of them 200, %d bytes", b.N, c.answers, c.ok, c.answered)
			}
		})
	}
}

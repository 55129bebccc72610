// Package servebench serves a benchmark's requests through net/http over a
// connection held in memory, so that what is measured is a request's
// handling in net/http and the handler, without the kernel's share or a
// client's; and it holds the floor's handler to compare with.
package servebench

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// conn is one kept-alive client connection held in memory: its client
// sends req, waits for the answer, and sends req again, n times in all;
// then it closes. Its read deadline works as a socket's: a read returns
// os.ErrDeadlineExceeded once the deadline has passed, whether or not data
// is waiting, and a read blocked while the client waits for an answer
// returns when the answer is written, the deadline passes, or the
// connection closes. On one thread, as Run serves, net/http's read in the
// background first runs after the answer is written, and the deadline in
// the past it sets then ends it, as in service (the client's next request
// cannot have come yet). On more threads it may start earlier, block, and
// take the first byte of the next request the answer lets the client send
// at once: the client is no faster than that.
type conn struct {
	req      []byte
	mu       sync.Mutex
	cond     sync.Cond
	left     int  // requests still to send
	off      int  // how much of the current request is sent
	waiting  bool // for the answer to the last request sent
	deadline time.Time
	expired  bool        // the read deadline has passed
	timer    *time.Timer // fires at a read deadline still to come
	isClosed bool
	size     int // bytes of the first answer
	answers  int // writes: one an answer, as net/http writes them
	ok       int // answers with status 200
	odd      int // answers of another size than the first's
	timeouts int // reads ended by the deadline
	closed   chan struct{}
	once     sync.Once
}

func newConn(req []byte, n int) *conn {
	c := &conn{req: req, left: n, closed: make(chan struct{})}
	c.cond.L = &c.mu
	return c
}

func (c *conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case c.isClosed:
			return 0, net.ErrClosed
		case c.expired:
			c.timeouts++
			return 0, os.ErrDeadlineExceeded
		case !c.waiting:
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
		c.cond.Wait()
	}
}

func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isClosed {
		return 0, net.ErrClosed
	}
	if c.answers++; c.answers == 1 {
		c.size = len(p)
	} else if len(p) != c.size {
		c.odd++
	}
	if bytes.HasPrefix(p, status200) {
		c.ok++
	}
	c.waiting = false
	c.cond.Broadcast()
	return len(p), nil
}

// SetReadDeadline sets the deadline as the runtime's poller does: passed
// at once when it is not after now, else by a timer (one per connection,
// reset each time).
func (c *conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline, c.expired = t, false
	if c.timer != nil {
		c.timer.Stop()
	}
	if t.IsZero() {
		return nil
	}
	if d := time.Until(t); d > 0 {
		if c.timer == nil {
			c.timer = time.AfterFunc(d, c.expire)
		} else {
			c.timer.Reset(d)
		}
		return nil
	}
	c.expired = true
	c.cond.Broadcast()
	return nil
}

// expire is the timer's: the deadline set last has passed, unless it was
// moved meanwhile.
func (c *conn) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.deadline.IsZero() && !time.Now().Before(c.deadline) {
		c.expired = true
		c.cond.Broadcast()
	}
}

func (c *conn) SetDeadline(t time.Time) error    { return c.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(time.Time) error { return nil }
func (c *conn) LocalAddr() net.Addr              { return loopAddr }
func (c *conn) RemoteAddr() net.Addr             { return loopAddr }

func (c *conn) Close() error {
	c.mu.Lock()
	c.isClosed = true
	if c.timer != nil {
		c.timer.Stop()
	}
	c.cond.Broadcast()
	c.mu.Unlock()
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

// Run serves b.N requests, each req, on one conn through the server that
// serve starts on the listener it is given (serve returns what stops it),
// and fails b unless every answer was a 200 of the same size. It runs on
// one thread (GOMAXPROCS=1), as the harness runs its servers: the client's
// turns and the server's, and the audit writer's, take the same CPU.
func Run(b *testing.B, req []byte, serve func(net.Listener) (stop func())) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	b.ReportAllocs()
	c := newConn(req, b.N)
	ln := listenOnce(c)
	defer ln.Close()
	b.ResetTimer()
	stop := serve(ln)
	<-c.closed
	b.StopTimer()
	stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.answers != b.N || c.ok != b.N || c.odd != 0 {
		b.Fatalf("%d requests: %d answers, %d of them 200, %d of another size than the first's", b.N, c.answers, c.ok, c.odd)
	}
}

// Server is what Serve runs: an *http.Server, or the agent's imds.Server.
type Server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
}

// Serve returns a serve function for Run that runs s.
func Serve(s Server) func(net.Listener) func() {
	return func(ln net.Listener) func() {
		go func() { _ = s.Serve(ln) }()
		return func() { _ = s.Shutdown(context.Background()) }
	}
}

// Floor is the floor's handler (bench/floor's) for one request: it writes
// doc with its Content-Type and Content-Length and checks nothing.
func Floor(doc []byte) http.Handler {
	textPlain, length := []string{"text/plain"}, []string{strconv.Itoa(len(doc))}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = textPlain
		h["Content-Length"] = length
		_, _ = w.Write(doc)
	})
}

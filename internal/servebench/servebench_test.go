package servebench

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"testing"
	"time"
)

var get = []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")

// TestDeadlineFirst: a deadline that has passed ends a read even with the
// next request waiting, as a socket's does.
func TestDeadlineFirst(t *testing.T) {
	c := newConn(get, 2)
	_ = c.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := c.Read(make([]byte, 64)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	if n, err := c.Read(make([]byte, 64)); err != nil || n != len(get) {
		t.Fatalf("read with no deadline: %d, %v", n, err)
	}
}

// TestBlockedReadEnds: a read blocked while the client waits for an
// answer ends when a future deadline passes, and when the connection
// closes.
func TestBlockedReadEnds(t *testing.T) {
	c := newConn(get, 2)
	if _, err := c.Read(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	readEnds(t, c, nil, os.ErrDeadlineExceeded, "at its deadline")
	_ = c.SetReadDeadline(time.Time{})
	readEnds(t, c, func() { time.Sleep(10 * time.Millisecond); c.Close() }, net.ErrClosed, "when the connection closes")
}

// readEnds starts a read on c, calls then (if not nil), and checks that
// the read ends with want within 5 s.
func readEnds(t *testing.T, c *conn, then func(), want error, when string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 64)); done <- err }()
	if then != nil {
		then()
	}
	select {
	case err := <-done:
		if !errors.Is(err, want) {
			t.Fatalf("a blocked read %s: %v, want %v", when, err, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("a blocked read did not end %s", when)
	}
}

// TestServedAsInService: net/http answers every request, and, on one
// thread as Run serves, its read in the background after each answer is
// ended by the deadline it sets, as in service, not by the next request's
// first byte.
func TestServedAsInService(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const n = 100
	c := newConn(get, n)
	ln := listenOnce(c)
	defer ln.Close()
	s := &http.Server{Handler: Floor([]byte("hello")), ReadHeaderTimeout: time.Second}
	go func() { _ = s.Serve(ln) }()
	defer s.Close()
	select {
	case <-c.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("not served")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.answers != n || c.ok != n || c.odd != 0 {
		t.Errorf("%d answers, %d of them 200, %d of another size", c.answers, c.ok, c.odd)
	}
	if c.timeouts != n {
		t.Errorf("%d reads ended by the deadline for %d answers", c.timeouts, n)
	}
}

// TestMalformedRequestTimesOut: a request that never ends is closed at
// the server's ReadHeaderTimeout, as on a socket, instead of hanging.
func TestMalformedRequestTimesOut(t *testing.T) {
	c := newConn([]byte("GET / HTTP/1.1\r\nHost: x\r\n"), 1)
	ln := listenOnce(c)
	defer ln.Close()
	s := &http.Server{Handler: Floor([]byte("hello")), ReadHeaderTimeout: 100 * time.Millisecond}
	go func() { _ = s.Serve(ln) }()
	defer s.Close()
	select {
	case <-c.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("a request without its end kept the connection past ReadHeaderTimeout")
	}
}

var _ io.ReadWriteCloser = (*conn)(nil)

package imds

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"
)

// OnQuiet fires when the last open connection closes, not before.
func TestServerOnQuiet(t *testing.T) {
	s := NewServer(http.NotFoundHandler(), slog.New(slog.DiscardHandler), nil)
	quiet := make(chan int64, 4)
	s.OnQuiet(func() { quiet <- s.Connections() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	defer func() { _ = s.Shutdown(context.Background()) }()

	dial := func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
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

package imds

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// dropAll withholds every token, as the hop limit does for a caller too
// far away.
type dropAll struct{ NopHooks }

func (dropAll) Admit(req *Request, _ Options) (int, Reason) {
	if req.Route == RouteToken {
		return StatusDrop, ReasonHopLimit
	}
	return 0, ReasonNone
}

// TestDropHoldsSilentlyAndBounded: a withheld token gets no answer at all
// (the connection stays silent), and at most maxHeld connections are held:
// beyond that they are closed at once.
func TestDropHoldsSilentlyAndBounded(t *testing.T) {
	f := newFixture(t, required, testInstance)
	h := NewHandler(f.h.Metadata(), f.creds, f.tokens, time.Now, dropAll{})
	srv := httptest.NewServer(h)
	defer srv.Close()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	ask := func() net.Conn {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := io.WriteString(c, "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := ask()
	_ = first.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := bufio.NewReader(first).ReadByte(); err == nil {
		t.Fatal("a withheld token was answered")
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("a withheld token's connection was not held open: %v", err)
	}
	for i := 1; i < maxHeld; i++ {
		ask()
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.held.Load() < maxHeld && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := h.held.Load(); n != maxHeld {
		t.Fatalf("%d connections held, want %d", n, maxHeld)
	}
	extra := ask()
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bufio.NewReader(extra).ReadByte(); err != io.EOF {
		t.Errorf("past the bound, the connection was not closed at once: %v", err)
	}
	if n := h.held.Load(); n > maxHeld {
		t.Errorf("%d connections held, more than %d", n, maxHeld)
	}
	// Other requests are still answered.
	res, err := http.Get(srv.URL + "/latest/meta-data/instance-id")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Errorf("a metadata request while connections are held: %d", res.StatusCode)
	}
}

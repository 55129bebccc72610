package imds

import (
	"net"
	"net/http"
	"testing"
)

// pipeConns returns n connection records over in-memory pipes.
func pipeConns(t *testing.T, n int) []*conn {
	var conns []*conn
	for i := 0; i < n; i++ {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		conns = append(conns, &conn{Conn: a})
	}
	return conns
}

func TestShedderClosesOldestIdle(t *testing.T) {
	s := newShedder(3)
	conns := pipeConns(t, 5)
	s.track(conns[0], http.StateNew)
	s.track(conns[1], http.StateNew)
	s.track(conns[1], http.StateActive) // serving: never shed
	s.track(conns[2], http.StateNew)
	s.track(conns[3], http.StateIdle)
	s.track(conns[4], http.StateNew) // four idle or new now: the oldest goes
	if s.Shed() != 1 {
		t.Fatalf("shed %d, want 1", s.Shed())
	}
	if _, err := conns[0].Write([]byte("x")); err == nil {
		t.Error("the oldest new connection was not closed")
	}
	for _, i := range []int{2, 3, 4} {
		if !conns[i].listed() {
			t.Errorf("connection %d is no longer tracked", i)
		}
	}
	s.track(conns[3], http.StateClosed)
	if conns[3].listed() || s.idle.n != 2 { // 1 active, 2 and 4 new
		t.Errorf("closed connection still tracked: %v %d", conns[3].listed(), s.idle.n)
	}
	s.track(conns[1], http.StateIdle) // the active one done: now the newest idle
	more := pipeConns(t, 1)
	s.track(more[0], http.StateNew)
	if s.Shed() != 2 {
		t.Fatalf("shed %d, want 2", s.Shed())
	}
	if _, err := conns[2].Write([]byte("x")); err == nil {
		t.Error("the oldest new connection was not closed")
	}
	if !conns[1].listed() {
		t.Error("the connection that went idle last was shed")
	}
	// A shed connection that net/http reports idle once more (a request
	// was under way as it was closed) is not listed again: it would count
	// against the cap until it closed, and be closed twice.
	s.track(conns[0], http.StateIdle)
	if conns[0].listed() || s.idle.n != 3 {
		t.Errorf("a shed connection was listed again: %v, %d listed", conns[0].listed(), s.idle.n)
	}
	s.track(conns[0], http.StateClosed)
	if s.idle.n != 3 || s.Shed() != 2 {
		t.Errorf("closing a shed connection: %d listed, %d shed", s.idle.n, s.Shed())
	}
}

// TestShedderTrackAllocations: a request on a kept-alive connection (active,
// then idle) allocates nothing in the shedder.
func TestShedderTrackAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race; the test command runs this test without it")
	}
	s := newShedder(8)
	c := pipeConns(t, 1)[0]
	s.track(c, http.StateNew)
	if n := testing.AllocsPerRun(1000, func() {
		s.track(c, http.StateActive)
		s.track(c, http.StateIdle)
	}); n != 0 {
		t.Errorf("a request allocates %v times in the shedder, want 0", n)
	}
}

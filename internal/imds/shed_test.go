package imds

import (
	"net"
	"net/http"
	"testing"
)

func TestShedderClosesOldestIdle(t *testing.T) {
	s := newShedder(3)
	var conns []net.Conn
	for i := 0; i < 5; i++ {
		a, b := net.Pipe()
		defer b.Close()
		conns = append(conns, a)
	}
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
		if e := s.conns[conns[i]]; e == nil || !e.listed {
			t.Errorf("connection %d is no longer tracked", i)
		}
	}
	s.track(conns[3], http.StateClosed)
	if len(s.conns) != 3 || s.idle.n != 2 { // 1 active, 2 and 4 new
		t.Errorf("closed connection still tracked: %d %d", len(s.conns), s.idle.n)
	}
	s.track(conns[1], http.StateIdle) // the active one done: now the newest idle
	s.track(conns[3], http.StateNew)  // (a new connection reusing the value)
	if s.Shed() != 2 {
		t.Fatalf("shed %d, want 2", s.Shed())
	}
	if _, err := conns[2].Write([]byte("x")); err == nil {
		t.Error("the oldest new connection was not closed")
	}
	if e := s.conns[conns[1]]; e == nil || !e.listed {
		t.Error("the connection that went idle last was shed")
	}
}

// TestShedderTrackAllocations: a request on a kept-alive connection (active,
// then idle) allocates nothing in the shedder.
func TestShedderTrackAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race; the test command runs this test without it")
	}
	s := newShedder(8)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	s.track(a, http.StateNew)
	if n := testing.AllocsPerRun(1000, func() {
		s.track(a, http.StateActive)
		s.track(a, http.StateIdle)
	}); n != 0 {
		t.Errorf("a request allocates %v times in the shedder, want 0", n)
	}
}

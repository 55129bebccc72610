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
		if _, ok := s.byID[conns[i]]; !ok {
			t.Errorf("connection %d is no longer tracked", i)
		}
	}
	s.track(conns[3], http.StateClosed)
	if len(s.byID) != 2 || s.lru.Len() != 2 {
		t.Errorf("closed connection still tracked: %d %d", len(s.byID), s.lru.Len())
	}
}

package imds

import (
	"net/http"
	"sync"
)

// MaxIdleConns bounds the connections held without a request in progress:
// new ones that have not sent a whole request yet, and idle keep-alive ones.
// Past it, the oldest such connection is closed to make room, so a flood of
// idle or half-sent connections costs bounded memory and never stops a
// healthy client from being accepted and served. Slow senders are also cut
// off by ReadHeaderTimeout, idle ones by IdleTimeout.
const MaxIdleConns = 4096

// shedder keeps the connections in the new and idle states, oldest first.
// It runs twice per request (active, then idle again); the list links the
// connection records themselves, so a state change is a few pointer moves
// under a mutex, with no look-up and no allocation.
type shedder struct {
	max  int
	mu   sync.Mutex
	idle connList // the new and idle connections, oldest first
	shed uint64
}

// connList is a doubly linked list of connection records around a
// sentinel.
type connList struct {
	root conn
	n    int
}

func (l *connList) pushBack(c *conn) {
	if l.root.next == nil {
		l.root.next, l.root.prev = &l.root, &l.root
	}
	last := l.root.prev
	c.prev, c.next = last, &l.root
	last.next, l.root.prev = c, c
	l.n++
}

func (l *connList) remove(c *conn) {
	c.prev.next, c.next.prev = c.next, c.prev
	c.prev, c.next = nil, nil
	l.n--
}

func (l *connList) front() *conn { return l.root.next }

// listed reports whether c is in the shedder's idle list.
func (c *conn) listed() bool { return c.prev != nil }

func newShedder(max int) *shedder { return &shedder{max: max} }

// track moves c on a state change (the server's ConnState hook).
func (s *shedder) track(c *conn, st http.ConnState) {
	var victims []*conn
	s.mu.Lock()
	if c.listed() {
		s.idle.remove(c)
	}
	if (st == http.StateNew || st == http.StateIdle) && !c.shedded {
		s.idle.pushBack(c)
		for s.idle.n > s.max {
			old := s.idle.front()
			s.idle.remove(old)
			old.shedded = true
			victims = append(victims, old)
			s.shed++
		}
	}
	s.mu.Unlock()
	for _, v := range victims {
		_ = v.Close()
	}
}

// Shed returns how many connections were closed to make room.
func (s *shedder) Shed() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shed
}

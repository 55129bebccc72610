package imds

import (
	"net"
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

// shedder tracks connections in the new and idle states, oldest first. It
// runs twice per request (active, then idle again), so a state change costs
// one map look-up and a few pointer moves, and allocates nothing after a
// connection's first.
type shedder struct {
	max   int
	mu    sync.Mutex
	conns map[net.Conn]*shedNode // every open connection not yet shed
	idle  shedList               // the new and idle ones, oldest first
	shed  uint64
}

// shedNode is one connection's place in the idle list.
type shedNode struct {
	conn       net.Conn
	prev, next *shedNode
	listed     bool
}

// shedList is a doubly linked list of nodes around a sentinel.
type shedList struct {
	root shedNode
	n    int
}

func (l *shedList) pushBack(e *shedNode) {
	if l.root.next == nil {
		l.root.next, l.root.prev = &l.root, &l.root
	}
	last := l.root.prev
	e.prev, e.next = last, &l.root
	last.next, l.root.prev = e, e
	e.listed = true
	l.n++
}

func (l *shedList) remove(e *shedNode) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	e.listed = false
	l.n--
}

func (l *shedList) front() *shedNode { return l.root.next }

func newShedder(max int) *shedder {
	return &shedder{max: max, conns: map[net.Conn]*shedNode{}}
}

// track is the server's ConnState hook.
func (s *shedder) track(c net.Conn, st http.ConnState) {
	var victims []net.Conn
	s.mu.Lock()
	e := s.conns[c]
	if e != nil && e.listed {
		s.idle.remove(e)
	}
	switch st {
	case http.StateNew, http.StateIdle:
		if e == nil {
			e = &shedNode{conn: c}
			s.conns[c] = e
		}
		s.idle.pushBack(e)
		for s.idle.n > s.max {
			old := s.idle.front()
			s.idle.remove(old)
			delete(s.conns, old.conn)
			victims = append(victims, old.conn)
			s.shed++
		}
	case http.StateClosed, http.StateHijacked:
		if e != nil {
			delete(s.conns, c)
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

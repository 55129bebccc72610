package imds

import (
	"container/list"
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

// shedder tracks connections in the new and idle states, oldest first.
type shedder struct {
	max  int
	mu   sync.Mutex
	lru  list.List // of net.Conn, oldest at the front
	byID map[net.Conn]*list.Element
	shed uint64
}

func newShedder(max int) *shedder {
	return &shedder{max: max, byID: map[net.Conn]*list.Element{}}
}

// track is the server's ConnState hook.
func (s *shedder) track(c net.Conn, st http.ConnState) {
	var victims []net.Conn
	s.mu.Lock()
	if e, ok := s.byID[c]; ok {
		s.lru.Remove(e)
		delete(s.byID, c)
	}
	if st == http.StateNew || st == http.StateIdle {
		s.byID[c] = s.lru.PushBack(c)
		for s.lru.Len() > s.max {
			old := s.lru.Remove(s.lru.Front()).(net.Conn)
			delete(s.byID, old)
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

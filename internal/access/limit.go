package access

import (
	"container/list"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// TokenLimiter limits how many IMDSv2 tokens each caller may obtain per
// second. It is off unless configured: EC2 does not limit token requests
// this way, and a throttled token surfaces in applications as "no
// credentials".
type TokenLimiter struct {
	perSecond rate.Limit
	burst     int
	mu        sync.Mutex
	callers   map[limitKey]*list.Element // holding a *limitEntry
	order     *list.List                 // least recently seen first
}

type limitKey struct {
	local bool
	uid   uint32
	addr  netip.Addr
}

type limitEntry struct {
	key limitKey
	lim *rate.Limiter
}

// maxTracked bounds memory and work: past it, the caller seen least
// recently is forgotten (its next token starts a fresh allowance), at a
// constant cost however many callers come.
const maxTracked = 8192

// NewTokenLimiter allows perSecond tokens per caller with a burst of the
// same size (at least 1).
func NewTokenLimiter(perSecond float64) *TokenLimiter {
	return &TokenLimiter{perSecond: rate.Limit(perSecond), burst: max(1, int(perSecond)),
		callers: map[limitKey]*list.Element{}, order: list.New()}
}

// Allow reports whether c may have another token now. Identified local
// callers are limited per user, others per address: an IPv4 address, or an
// IPv6 /64 (one host may hold every address of its /64, and would
// otherwise get an allowance for each).
func (l *TokenLimiter) Allow(c Caller, now time.Time) bool {
	k := limitKey{local: c.Local && c.Identified}
	if k.local {
		k.uid = c.UID
	} else if a := c.Addr.Unmap().WithZone(""); a.Is6() {
		k.addr = netip.PrefixFrom(a, 64).Masked().Addr()
	} else {
		k.addr = a
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var e *limitEntry
	if el, ok := l.callers[k]; ok {
		l.order.MoveToBack(el)
		e = el.Value.(*limitEntry)
	} else {
		if l.order.Len() >= maxTracked {
			oldest := l.order.Front()
			l.order.Remove(oldest)
			delete(l.callers, oldest.Value.(*limitEntry).key)
		}
		e = &limitEntry{key: k, lim: rate.NewLimiter(l.perSecond, l.burst)}
		l.callers[k] = l.order.PushBack(e)
	}
	return e.lim.AllowN(now, 1)
}

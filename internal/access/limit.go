package access

import (
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
	callers   map[limitKey]*limitEntry
}

type limitKey struct {
	local bool
	uid   uint32
	addr  netip.Addr
}

type limitEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

// maxTracked bounds memory: when more callers than this are tracked, those
// not seen for a minute are forgotten.
const maxTracked = 8192

// NewTokenLimiter allows perSecond tokens per caller with a burst of the
// same size (at least 1).
func NewTokenLimiter(perSecond float64) *TokenLimiter {
	return &TokenLimiter{perSecond: rate.Limit(perSecond), burst: max(1, int(perSecond)), callers: map[limitKey]*limitEntry{}}
}

// Allow reports whether c may have another token now. Identified local
// callers are limited per user, others per address.
func (l *TokenLimiter) Allow(c Caller, now time.Time) bool {
	k := limitKey{local: c.Local && c.Identified}
	if k.local {
		k.uid = c.UID
	} else {
		k.addr = c.Addr.Unmap()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.callers[k]
	if !ok {
		if len(l.callers) >= maxTracked {
			for key, old := range l.callers {
				if now.Sub(old.seen) > time.Minute {
					delete(l.callers, key)
				}
			}
		}
		e = &limitEntry{lim: rate.NewLimiter(l.perSecond, l.burst)}
		l.callers[k] = e
	}
	e.seen = now
	return e.lim.AllowN(now, 1)
}

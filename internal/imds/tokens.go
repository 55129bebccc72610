package imds

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"hash"
	mathrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Token layout before encoding (42 bytes, 56 base64url characters, the
// length of EC2's own tokens):
//
//	[0]      format version (2)
//	[1:9]    expiry, Unix milliseconds, big endian
//	[9]      flags (bit 0: bound to a local UID)
//	[10:14]  UID, when bound
//	[14:18]  random, so two tokens issued together differ
//	[18:42]  HMAC-SHA256 of [0:18] under the process key, truncated to 24 bytes
//
// Tokens are stateless: nothing is stored per token, so memory does not grow
// with the number issued, and a restart (a new key) invalidates them all, as
// on EC2.
const (
	tokenVersion    = 2 // 1 counted the expiry in whole seconds
	tokenPayloadLen = 18
	tokenMACLen     = 24
	tokenRawLen     = tokenPayloadLen + tokenMACLen
	// TokenLen is the length of an encoded token.
	TokenLen = (tokenRawLen*8 + 5) / 6

	flagBoundUID = 1

	// MaxTokenTTL is EC2's maximum token lifetime, 6 hours.
	MaxTokenTTL = 21600
)

var tokenEncoding = base64.RawURLEncoding

// Tokens issues and verifies session tokens under a key drawn at start-up.
type Tokens struct {
	key  [32]byte
	now  func() time.Time
	macs sync.Pool // *tokenScratch
}

// tokenScratch holds a keyed MAC and buffers, reused across requests so
// that verifying a token allocates nothing.
type tokenScratch struct {
	mac hash.Hash
	raw [tokenRawLen]byte
	sum [sha256.Size]byte
	enc [TokenLen]byte
}

// NewTokens returns a token service with a fresh random key. now is the
// clock Issue and Verify read; the Handler passes its own reading of the
// same clock instead.
func NewTokens(now func() time.Time) (*Tokens, error) {
	t := &Tokens{now: now}
	if _, err := rand.Read(t.key[:]); err != nil {
		return nil, fmt.Errorf("drawing the token key: %w", err)
	}
	t.macs.New = func() any { return &tokenScratch{mac: hmac.New(sha256.New, t.key[:])} }
	return t, nil
}

// Binding ties a token to the local user that requested it.
type Binding struct {
	Bound bool
	UID   uint32
}

// Issue returns a new token valid for ttl seconds (1 to MaxTokenTTL) from
// now, to the millisecond.
func (t *Tokens) Issue(ttlSeconds int, b Binding) string {
	e := t.issue(ttlSeconds, b, t.now().UnixMilli())
	return string(e.token[:])
}

// issue is Issue at a given time (Unix milliseconds). It returns the
// token's bytes (what the handler writes) with what the token says, as
// verify would find it, for the memo of the connection it is issued on.
func (t *Tokens) issue(ttlSeconds int, b Binding, now int64) *verifiedToken {
	s := t.macs.Get().(*tokenScratch)
	defer t.macs.Put(s)
	e := &verifiedToken{expiry: now + int64(ttlSeconds)*1000}
	if b.Bound {
		e.bound, e.uid = true, b.UID
	}
	raw := &s.raw
	raw[0] = tokenVersion
	binary.BigEndian.PutUint64(raw[1:9], uint64(e.expiry))
	raw[9] = 0
	if e.bound {
		raw[9] = flagBoundUID
	}
	binary.BigEndian.PutUint32(raw[10:14], e.uid)
	binary.BigEndian.PutUint32(raw[14:18], mathrand.Uint32())
	copy(raw[tokenPayloadLen:], s.macOf(raw[:tokenPayloadLen]))
	tokenEncoding.Encode(e.token[:], raw[:])
	return e
}

// TokenStatus is the outcome of checking a token.
type TokenStatus uint8

const (
	TokenValid     TokenStatus = iota
	TokenMalformed             // not a token this process could have issued
	TokenForged                // well formed, but the MAC does not match
	TokenExpired
	TokenWrongUser // bound to another UID
)

func (s TokenStatus) String() string {
	return [...]string{"valid", "malformed", "forged", "expired", "wrong-user"}[s]
}

// Verify checks a token presented by a caller with the given UID (known
// reports whether the caller's UID could be determined). The MAC comparison
// is constant time.
func (t *Tokens) Verify(token string, uid uint32, known bool) TokenStatus {
	return t.verify(token, uid, known, t.now().UnixMilli(), nil)
}

// verify is Verify at a given time (Unix milliseconds). With a memo, a token
// whose MAC it already checked is not checked again.
func (t *Tokens) verify(token string, uid uint32, known bool, now int64, memo *tokenMemo) TokenStatus {
	if len(token) != TokenLen {
		return TokenMalformed
	}
	if memo != nil {
		if e := memo.last.Load(); e != nil && equalConstantTime(e.token[:], token) {
			return e.status(uid, known, now)
		}
	}
	s := t.macs.Get().(*tokenScratch)
	defer t.macs.Put(s)
	n := copy(s.enc[:], token)
	if _, err := tokenEncoding.Decode(s.raw[:], s.enc[:n]); err != nil {
		return TokenMalformed
	}
	raw := &s.raw
	if raw[0] != tokenVersion {
		return TokenMalformed
	}
	if !hmac.Equal(s.macOf(raw[:tokenPayloadLen]), raw[tokenPayloadLen:]) {
		return TokenForged
	}
	e := verifiedToken{
		expiry: int64(binary.BigEndian.Uint64(raw[1:9])),
		bound:  raw[9]&flagBoundUID != 0,
		uid:    binary.BigEndian.Uint32(raw[10:14]),
	}
	if memo != nil {
		kept := e
		copy(kept.token[:], token)
		memo.last.Store(&kept)
	}
	return e.status(uid, known, now)
}

// verifiedToken is a token with a valid MAC and what it says.
type verifiedToken struct {
	token  [TokenLen]byte
	expiry int64 // Unix milliseconds
	bound  bool
	uid    uint32
}

func (e *verifiedToken) status(uid uint32, known bool, now int64) TokenStatus {
	if e.expiry <= now {
		return TokenExpired
	}
	if e.bound && (!known || e.uid != uid) {
		return TokenWrongUser
	}
	return TokenValid
}

// tokenMemo remembers the last token issued or verified on one client
// connection: an SDK asks for its token and sends it with every request
// on the same connection, and the MAC need not be computed again for it.
// Tokens are matched byte for byte (in constant time), so only the exact
// spelling that was issued or verified is recognised.
type tokenMemo struct {
	last atomic.Pointer[verifiedToken]
}

// equalConstantTime compares a and b in time that depends on their length
// only, eight bytes at a time.
func equalConstantTime(a []byte, b string) bool {
	if len(a) != len(b) {
		return false
	}
	var v uint64
	i := 0
	for ; i+8 <= len(a); i += 8 {
		v |= binary.LittleEndian.Uint64(a[i:]) ^ word(b[i:])
	}
	for ; i < len(a); i++ {
		v |= uint64(a[i] ^ b[i])
	}
	return v == 0
}

// word is the first eight bytes of s as one little-endian word (one load).
func word(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// macOf returns the truncated MAC of payload, in s's own buffer.
func (s *tokenScratch) macOf(payload []byte) []byte {
	s.mac.Reset()
	s.mac.Write(payload)
	return s.mac.Sum(s.sum[:0])[:tokenMACLen]
}

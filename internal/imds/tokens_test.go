package imds

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestTokensRoundTrip(t *testing.T) {
	now := testNow
	tk, err := NewTokens(func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	a, b := tk.Issue(60, Binding{}), tk.Issue(60, Binding{})
	if TokenLen != 56 || len(a) != TokenLen {
		t.Fatalf("token length %d, want 56 (EC2's)", len(a))
	}
	if a == b {
		t.Errorf("two tokens issued together are equal")
	}
	if !tokenRe.MatchString(a) {
		t.Errorf("token %q is not base64url", a)
	}
	if s := tk.Verify(a, 0, false); s != TokenValid {
		t.Errorf("fresh token: %v", s)
	}
	now = now.Add(59 * time.Second)
	if s := tk.Verify(a, 0, false); s != TokenValid {
		t.Errorf("at 59s: %v", s)
	}
	now = now.Add(time.Second)
	if s := tk.Verify(a, 0, false); s != TokenExpired {
		t.Errorf("at 60s: %v, want expired", s)
	}
}

// TestTokenExpiryToTheMillisecond: a token lives for its whole TTL from
// the moment it was issued, not from the start of that second, so a
// one-second token issued late in a second is not gone at once.
func TestTokenExpiryToTheMillisecond(t *testing.T) {
	issued := testNow.Add(900 * time.Millisecond)
	now := issued
	tk, err := NewTokens(func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	tok := tk.Issue(1, Binding{})
	for _, tc := range []struct {
		after time.Duration
		want  TokenStatus
	}{
		{0, TokenValid},
		{100 * time.Millisecond, TokenValid}, // the next second has begun
		{999 * time.Millisecond, TokenValid},
		{time.Second, TokenExpired},
	} {
		now = issued.Add(tc.after)
		if s := tk.Verify(tok, 0, false); s != tc.want {
			t.Errorf("%v after issue: %v, want %v", tc.after, s, tc.want)
		}
	}
}

func TestTokenBinding(t *testing.T) {
	tk, _ := NewTokens(func() time.Time { return testNow })
	bound := tk.Issue(60, Binding{Bound: true, UID: 1000})
	for _, tc := range []struct {
		uid   uint32
		known bool
		want  TokenStatus
	}{
		{1000, true, TokenValid},
		{1001, true, TokenWrongUser},
		{0, true, TokenWrongUser},
		{1000, false, TokenWrongUser},
	} {
		if s := tk.Verify(bound, tc.uid, tc.known); s != tc.want {
			t.Errorf("uid %d known %v: %v, want %v", tc.uid, tc.known, s, tc.want)
		}
	}
	free := tk.Issue(60, Binding{})
	if s := tk.Verify(free, 4242, true); s != TokenValid {
		t.Errorf("unbound token for any uid: %v", s)
	}
}

func TestTokenTampering(t *testing.T) {
	tk, _ := NewTokens(func() time.Time { return testNow })
	tok := tk.Issue(60, Binding{})
	// Flipping any character must invalidate the token.
	for i := 0; i < len(tok); i++ {
		c := byte('A')
		if tok[i] == 'A' {
			c = 'B'
		}
		bad := tok[:i] + string(c) + tok[i+1:]
		if s := tk.Verify(bad, 0, false); s == TokenValid {
			t.Fatalf("token altered at %d still valid", i)
		}
	}
	if s := tk.Verify(strings.Repeat("A", TokenLen), 0, false); s == TokenValid {
		t.Errorf("all-A token valid")
	}
}

// TestTokenVerifyAllocations pins the zero-allocation verification path.
func TestTokenVerifyAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race; the test command runs this test without it")
	}
	tk, _ := NewTokens(func() time.Time { return testNow })
	tok := tk.Issue(60, Binding{})
	if n := testing.AllocsPerRun(1000, func() { tk.Verify(tok, 0, false) }); n != 0 {
		t.Errorf("Verify allocates %v times per call, want 0", n)
	}
}

func BenchmarkTokenIssue(b *testing.B) {
	tk, _ := NewTokens(time.Now)
	b.ReportAllocs()
	for b.Loop() {
		tk.Issue(21600, Binding{})
	}
}

func BenchmarkTokenVerify(b *testing.B) {
	tk, _ := NewTokens(time.Now)
	tok := tk.Issue(21600, Binding{})
	b.ReportAllocs()
	for b.Loop() {
		if tk.Verify(tok, 0, false) != TokenValid {
			b.Fatal("invalid")
		}
	}
}

// TestTokenMemo: verifying through a connection's memo answers exactly as
// a full verification does, at every point of a token's life.
func TestTokenMemo(t *testing.T) {
	now := testNow
	tk, _ := NewTokens(func() time.Time { return now })
	free := tk.Issue(60, Binding{})
	bound := tk.Issue(120, Binding{Bound: true, UID: 1000})
	forged := free[:TokenLen-2] + "AA"
	if forged == free {
		forged = free[:TokenLen-2] + "BB"
	}
	memo := &tokenMemo{}
	check := func(when string) {
		t.Helper()
		for _, tc := range []struct {
			tok   string
			uid   uint32
			known bool
		}{
			{free, 0, false}, {free, 7, true}, {bound, 1000, true}, {bound, 1001, true}, {bound, 1000, false},
			{forged, 0, false}, {"short", 0, false}, {free, 0, false}, {bound, 1000, true},
		} {
			want := tk.Verify(tc.tok, tc.uid, tc.known)
			// Twice: a miss that fills the memo, then a hit.
			for i := range 2 {
				if got := tk.verify(tc.tok, tc.uid, tc.known, now.UnixMilli(), memo); got != want {
					t.Errorf("%s: memo verify #%d of %.8s… (uid %d known %v) = %v, want %v", when, i, tc.tok, tc.uid, tc.known, got, want)
				}
			}
		}
	}
	check("fresh")
	now = now.Add(60 * time.Second)
	check("free token expired")
	now = now.Add(60 * time.Second)
	check("both expired")
	if e := memo.last.Load(); e != nil && string(e.token[:]) == forged {
		t.Error("a forged token was remembered")
	}
}

// TestTokenPUTFillsMemo: the token a PUT issues is remembered by its
// connection as a full verification of it would be, so the connection's
// GETs answer exactly as they would without the memo.
func TestTokenPUTFillsMemo(t *testing.T) {
	f := newFixture(t, required, testInstance)
	for _, hooks := range []Hooks{NopHooks{}, boundHooks{uid: 1000}} {
		f.h.hooks = hooks
		c := &conn{}
		r := httptest.NewRequestWithContext(context.WithValue(context.Background(), connKey{}, c),
			http.MethodPut, "http://169.254.169.254/latest/api/token", nil)
		r.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
		rec := httptest.NewRecorder()
		f.h.ServeHTTP(rec, r)
		tok := rec.Body.String()
		e := c.tokens.last.Load()
		if rec.Code != http.StatusOK || e == nil || string(e.token[:]) != tok {
			t.Fatalf("%T: PUT answered %d %q; the connection remembers %v", hooks, rec.Code, tok, e)
		}
		for _, step := range []time.Duration{0, 59 * time.Second, time.Second} {
			f.advance(step)
			now := f.now.Load().UnixMilli()
			for _, caller := range []struct {
				uid   uint32
				known bool
			}{{0, false}, {1000, true}, {1001, true}, {1000, false}} {
				want := f.tokens.verify(tok, caller.uid, caller.known, now, nil)
				if got := f.tokens.verify(tok, caller.uid, caller.known, now, &c.tokens); got != want || c.tokens.last.Load() != e {
					t.Errorf("%T, %v after the PUT, uid %d known %v: from the memo %v, verified %v", hooks, f.now.Load().Sub(testNow), caller.uid, caller.known, got, want)
				}
			}
		}
	}
}

// boundHooks binds every token to uid.
type boundHooks struct {
	NopHooks
	uid uint32
}

func (h boundHooks) TokenBinding(*Request) Binding { return Binding{Bound: true, UID: h.uid} }

func BenchmarkTokenVerifyMemo(b *testing.B) {
	tk, _ := NewTokens(time.Now)
	tok := tk.Issue(21600, Binding{})
	memo := &tokenMemo{}
	b.ReportAllocs()
	for b.Loop() {
		if tk.verify(tok, 0, false, time.Now().UnixMilli(), memo) != TokenValid {
			b.Fatal("invalid")
		}
	}
}

// TestEqualConstantTime: a difference in any byte, in the whole words or
// the bytes after them, makes two strings unequal.
func TestEqualConstantTime(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 9, 16, 56, 61} {
		a := strings.Repeat("abcdefgh", 8)[:n]
		if !equalConstantTime([]byte(a), a) {
			t.Errorf("len %d: equal strings compare unequal", n)
		}
		for i := 0; i < n; i++ {
			b := []byte(a)
			b[i] ^= 0x80
			if equalConstantTime(b, a) {
				t.Errorf("len %d: a difference at byte %d is missed", n, i)
			}
		}
		if equalConstantTime([]byte(a), a+"x") {
			t.Errorf("len %d: a longer string compares equal", n)
		}
	}
}

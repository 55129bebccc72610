package imds

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/imds-agent/imds-agent/internal/servebench"
)

// discardWriter is the cheapest http.ResponseWriter: its header map is
// reused, so what a benchmark counts is the handler's own work.
type discardWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(s int)   { w.status = s }
func (w *discardWriter) Write(b []byte) (int, error) {
	w.n += len(b)
	return len(b), nil
}

func (w *discardWriter) reset() {
	clear(w.h)
	w.status, w.n = 0, 0
}

// credentialsRequest is an SDK's credential GET with a valid token. On a
// keep-alive connection, it carries the connection's record, as requests
// served by Server do.
func credentialsRequest(tb testing.TB, f *fixture, keepAlive bool) *http.Request {
	tb.Helper()
	ctx := context.Background()
	if keepAlive {
		ctx = WithConn(ctx, nil, nil)
	}
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://169.254.169.254/latest/meta-data/iam/security-credentials/"+testRole.Name, nil)
	r.Header.Set("X-aws-ec2-metadata-token", f.token(tb))
	return r
}

// serveCredentials serves r and checks it was answered with the document.
func serveCredentials(tb testing.TB, h http.Handler, w *discardWriter, r *http.Request) {
	w.reset()
	h.ServeHTTP(w, r)
	if w.status != http.StatusOK || w.n != len(credsJSON) {
		tb.Fatalf("credentials GET: status %d, %d bytes", w.status, w.n)
	}
}

// TestCredentialsGETAllocations pins the cost of the hottest request: a
// credential GET with a valid token allocates at most twice in the handler
// (net/http's own allocations are not counted here), and not at all on a
// connection the server keeps a record of.
func TestCredentialsGETAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race; the test command runs this test without it")
	}
	f := newFixture(t, required, testInstance)
	for _, tc := range []struct {
		keepAlive bool
		max       float64
	}{{false, 2}, {true, 0}} {
		r := credentialsRequest(t, f, tc.keepAlive)
		w := &discardWriter{h: http.Header{}}
		if n := testing.AllocsPerRun(1000, func() { serveCredentials(t, f.h, w, r) }); n > tc.max {
			t.Errorf("keep-alive %v: a credential GET allocates %v times, want at most %v", tc.keepAlive, n, tc.max)
		}
	}
}

// BenchmarkCredentialsGET: the token checked in full every time (a new
// connection), and on a keep-alive connection that presented it before.
func BenchmarkCredentialsGET(b *testing.B) {
	for _, bc := range []struct {
		name      string
		keepAlive bool
	}{{"new-connection", false}, {"keep-alive", true}} {
		b.Run(bc.name, func(b *testing.B) {
			f := newFixture(b, required, testInstance)
			r := credentialsRequest(b, f, bc.keepAlive)
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				serveCredentials(b, f.h, w, r)
			}
		})
	}
}

func BenchmarkTokenPUT(b *testing.B) {
	f := newFixture(b, required, testInstance)
	r := httptest.NewRequest(http.MethodPut, "http://169.254.169.254/latest/api/token", nil)
	r.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		w.reset()
		f.h.ServeHTTP(w, r)
		if w.status != http.StatusOK || w.n != TokenLen {
			b.Fatalf("token PUT: status %d, %d bytes", w.status, w.n)
		}
	}
}

// BenchmarkCredentialsGETServed: an SDK's credential GET on a kept-alive
// connection, served through net/http (servebench): by the agent's Server
// with the handler (NopHooks), and by the floor, a bare http.Server with
// the same timeouts and bench/floor's handler.
func BenchmarkCredentialsGETServed(b *testing.B) {
	f := newFixture(b, required, testInstance)
	request := []byte("GET /latest/meta-data/iam/security-credentials/" + testRole.Name + " HTTP/1.1\r\n" +
		"Host: 169.254.169.254\r\nUser-Agent: aws-sdk-go-v2/1.41.0\r\nX-aws-ec2-metadata-token: " + f.token(b) + "\r\n\r\n")
	b.Run("agent", func(b *testing.B) {
		s := NewServer(f.h, slog.New(slog.DiscardHandler), nil)
		servebench.Run(b, request, servebench.Serve(s))
	})
	b.Run("floor", func(b *testing.B) {
		servebench.Run(b, request, servebench.Serve(&http.Server{Handler: servebench.Floor([]byte(credsJSON)),
			ReadHeaderTimeout: ReadHeaderTimeout, ReadTimeout: ReadTimeout, WriteTimeout: WriteTimeout,
			IdleTimeout: IdleTimeout, MaxHeaderBytes: MaxHeaderBytes}))
	})
}

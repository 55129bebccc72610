package agent

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/hostinfo"
	"github.com/imds-agent/imds-agent/internal/imds"
)

// jumpClock is the system clock whose monotonic reading can be pushed
// ahead, to make the credential loop look wedged.
type jumpClock struct {
	origin time.Time
	ahead  atomic.Int64
}

func (c *jumpClock) Now() time.Time { return time.Now().Round(0) }
func (c *jumpClock) Monotonic() time.Duration {
	return time.Since(c.origin) + time.Duration(c.ahead.Load())
}

func startAgent(t *testing.T) (*Agent, *jumpClock, context.CancelFunc) {
	t.Helper()
	cfg := config.Default()
	cfg.Listen.Link = ""
	cfg.Listen.Addresses = []string{"127.0.0.1:0"}
	cfg.Admin.Socket = t.TempDir() + "/admin.sock"
	cfg.Instance.ID = "i-0123456789abcdef0"
	clock := &jumpClock{origin: time.Now()}
	a, err := New(Options{Config: cfg, Host: hostinfo.System(), Clock: clock, Logger: slog.New(slog.DiscardHandler), AuditOutput: &strings.Builder{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
	})
	select {
	case <-a.Listening():
	case err := <-done:
		t.Fatal(err)
	}
	<-a.Manager().Ready()
	return a, clock, cancel
}

// TestWatchdogHealth: the watchdog is pinged only while a request through
// the real listener is answered and the credential loop runs.
func TestWatchdogHealth(t *testing.T) {
	a, clock, _ := startAgent(t)
	deadline := time.Now().Add(5 * time.Second)
	for a.Manager().LastActive() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.healthy(context.Background()); err != nil {
		t.Fatalf("healthy agent reported unhealthy: %v", err)
	}
	clock.ahead.Store(int64(a.Manager().MaxInactive() + time.Minute))
	if err := a.healthy(context.Background()); err == nil || !strings.Contains(err.Error(), "credential loop") {
		t.Errorf("wedged loop: %v", err)
	}
	clock.ahead.Store(0)
	a.mu.Lock()
	for _, ln := range a.listeners {
		ln.Close()
	}
	a.mu.Unlock()
	if err := a.healthy(context.Background()); err == nil {
		t.Error("closed listener reported healthy")
	}
}

// TestProbeIsNotCounted: the watchdog's own requests do not show up in
// the metrics (nor, being 200s on a non-secret route, in the audit trail).
func TestProbeIsNotCounted(t *testing.T) {
	a, _, _ := startAgent(t)
	for i := 0; i < 3; i++ {
		if err := a.healthy(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	rec := httptest.NewRecorder()
	a.metrics.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(l, `imds_agent_requests_total{route="versions"`) && !strings.HasSuffix(l, " 0") {
			t.Errorf("probe requests counted: %s", l)
		}
	}
	res, err := http.Get("http://" + a.Addrs()[0].String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	rec = httptest.NewRecorder()
	a.metrics.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if !strings.Contains(rec.Body.String(), `imds_agent_requests_total{route="versions",status="401"} 1`) {
		t.Errorf("a client's request was not counted:\n%s", rec.Body.String())
	}
}

// TestWatchdogHealthWhenRefusing: an agent whose answers are refusals
// (http_endpoint: disabled) is still healthy: it answers.
func TestWatchdogHealthWhenRefusing(t *testing.T) {
	a, _, _ := startAgent(t)
	m := a.handler.Metadata()
	in := m.Instance()
	opts := m.Options()
	opts.Enabled = false
	a.handler.SetMetadata(imds.NewMetadata(in, opts))
	if err := a.healthy(context.Background()); err != nil {
		t.Errorf("an agent refusing everything, as configured, reported unhealthy: %v", err)
	}
}

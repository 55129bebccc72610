package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imds-agent/imds-agent/internal/audit"
	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/hostinfo"
	"github.com/imds-agent/imds-agent/internal/imds"
	"github.com/imds-agent/imds-agent/internal/refresh"
	"github.com/imds-agent/imds-agent/internal/snapshot"
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
	a, clock, cancel, _ := startAgentWith(t, &strings.Builder{})
	return a, clock, cancel
}

// startAgentWith starts an agent writing its audit records to audit; done
// yields Run's result once it returns.
func startAgentWith(t *testing.T, audit io.Writer) (a *Agent, clock *jumpClock, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	return startAgentLogged(t, audit, io.Discard)
}

// onLoopback makes cfg safe to run in the machine's own network
// namespace: no link, a loopback listener on a free port, an admin socket
// of the test's own, and a fixed instance id.
func onLoopback(t *testing.T, cfg *config.Config) {
	t.Helper()
	cfg.Listen.Link = ""
	cfg.Listen.Addresses = []string{"127.0.0.1:0"}
	cfg.Admin.Socket = t.TempDir() + "/admin.sock"
	cfg.Instance.ID = "i-0123456789abcdef0"
}

// startAgentLogged is startAgentWith with the agent's log written to log.
func startAgentLogged(t *testing.T, audit, log io.Writer) (a *Agent, clock *jumpClock, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	cfg := config.Default()
	onLoopback(t, cfg)
	clock = &jumpClock{origin: time.Now()}
	a, err := New(Options{Config: cfg, Host: hostinfo.System(), Clock: clock, Logger: slog.New(slog.NewTextHandler(log, nil)), AuditOutput: audit})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	stopped := make(chan error, 1)
	go func() {
		err := a.Run(ctx)
		result <- err
		stopped <- err
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop")
		}
	})
	select {
	case <-a.Listening():
	case err := <-result:
		t.Fatal(err)
	}
	<-a.Manager().Ready()
	return a, clock, cancel, result
}

// TestShutdownRecordsDrainedRequests: an answer recorded while the server
// drains (its handler was running when the agent was told to stop) reaches
// the audit output: the writer stops only after the server has drained.
// A connection that has sent nothing keeps the drain going meanwhile.
func TestShutdownRecordsDrainedRequests(t *testing.T) {
	var out strings.Builder // read once Run has returned, with the writer
	a, _, cancel, done := startAgentWith(t, &out)
	conn, err := net.Dial("tcp", a.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // accepted
	cancel()
	time.Sleep(200 * time.Millisecond) // the drain is under way
	a.audit.Record(audit.Record{Time: time.Now(), Decision: "allow", Route: "credentials", Status: 200,
		Remote: "127.0.0.1:4242", Local: true, Role: "in-flight"})
	conn.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop")
	}
	if !strings.Contains(out.String(), "role=in-flight") {
		t.Errorf("the answer given during the drain has no audit record:\n%s", out.String())
	}
}

// TestStopTellsRefusalsLeftOut: when the agent stops, every refusal is
// either in the audit trail or counted in a notice, those left out since
// the last notice included (the next would have come after the stop).
func TestStopTellsRefusalsLeftOut(t *testing.T) {
	var mu sync.Mutex
	var out, logs bytes.Buffer
	a, _, cancel, done := startAgentLogged(t, lockedWriter{&mu, &out}, lockedWriter{&mu, &logs})
	// More token-less requests than the refusals recorded in a burst.
	const sent = refusalRecordBurst + 600
	client := &http.Client{Timeout: 5 * time.Second}
	url := "http://" + a.Addrs()[0].String() + "/latest/meta-data/iam/security-credentials/app"
	for range sent {
		res, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", res.StatusCode)
		}
	}
	client.CloseIdleConnections()
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	recorded := strings.Count(out.String(), "reason=token-missing")
	told := 0
	for _, m := range regexp.MustCompile(`not_recorded=(\d+)`).FindAllStringSubmatch(logs.String(), -1) {
		n, _ := strconv.Atoi(m[1])
		told += n
	}
	if recorded+told != sent || told == 0 {
		t.Errorf("%d refusals: %d recorded, %d told left out in the notices:\n%s", sent, recorded, told, logs.String())
	}
}

// TestWatchdogHealth: the watchdog is pinged only while a request through
// the real listener is answered and the credential loop runs.
func TestWatchdogHealth(t *testing.T) {
	a, clock, _ := startAgent(t)
	deadline := time.Now().Add(5 * time.Second)
	for a.Manager().LastActive() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.healthy(context.Background(), maxProbeTimeout); err != nil {
		t.Fatalf("healthy agent reported unhealthy: %v", err)
	}
	clock.ahead.Store(int64(a.Manager().MaxInactive() + time.Minute))
	if err := a.healthy(context.Background(), maxProbeTimeout); err == nil || !strings.Contains(err.Error(), "credential loop") {
		t.Errorf("wedged loop: %v", err)
	}
	clock.ahead.Store(0)
	a.mu.Lock()
	for _, ln := range a.listeners {
		ln.Close()
	}
	a.mu.Unlock()
	if err := a.healthy(context.Background(), maxProbeTimeout); err == nil {
		t.Error("closed listener reported healthy")
	}
}

// TestWatchdogProbeAnsweredElsewhere: a probe answered by something else
// at the address (the link gone, the network's own metadata service
// answering) is not health. The other server is an httptest one on
// loopback, reached by redirecting the probe's dial.
func TestWatchdogProbeAnsweredElsewhere(t *testing.T) {
	a, _, _ := startAgent(t)
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "latest") }))
	defer other.Close()
	a.probeClient = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", other.Listener.Addr().String())
	}}}
	if err := a.healthy(context.Background(), maxProbeTimeout); err == nil || !strings.Contains(err.Error(), "did not come from this agent") {
		t.Errorf("probe answered elsewhere: %v", err)
	}
}

// TestProbeIsNotCounted: the watchdog's own requests do not show up in
// the metrics (nor, being 200s on a non-secret route, in the audit trail).
func TestProbeIsNotCounted(t *testing.T) {
	a, _, _ := startAgent(t)
	for i := 0; i < 3; i++ {
		if err := a.healthy(context.Background(), maxProbeTimeout); err != nil {
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
	if err := a.healthy(context.Background(), maxProbeTimeout); err != nil {
		t.Errorf("an agent refusing everything, as configured, reported unhealthy: %v", err)
	}
}

// TestStatusLineShowsCodesOnly: STATUS=, which every local user can read,
// gives a failure's code and never its text: STS's names the source user,
// and a line break in it could add assignments (READY=1, WATCHDOG=1) to the
// sd_notify message.
func TestStatusLineShowsCodesOnly(t *testing.T) {
	text := "User: arn:aws:iam::123456789012:user/host-42 is not authorized\nREADY=1\r\nWATCHDOG=1"
	for _, st := range []refresh.Status{
		{State: snapshot.Pending, Target: "role arn:aws:iam::123456789012:role/app", ConsecutiveFailures: 1},
		{State: snapshot.Ready, Role: snapshot.Role{Name: "app"}, Expiration: time.Now().Add(time.Hour), ConsecutiveFailures: 2},
	} {
		st.LastError, st.LastErrorCode = text, "AssumeRoleUnauthorizedAccess"
		line := statusLine(st, time.Time{}, time.Now())
		if strings.ContainsAny(line, "\r\n") || strings.Contains(line, "host-42") || !strings.Contains(line, "AssumeRoleUnauthorizedAccess (imds-agent status says more)") {
			t.Errorf("STATUS= line %q", line)
		}
	}
}

// TestStatusLineTimes: STATUS= is sent when the state changes and shown
// until the next change, so it gives the expiry as a time, not as a
// countdown that goes stale, and says when that time has passed.
func TestStatusLineTimes(t *testing.T) {
	exp := time.Date(2026, 11, 29, 14, 0, 0, 0, time.UTC)
	st := refresh.Status{State: snapshot.Ready, Role: snapshot.Role{Name: "app"}, Expiration: exp}
	for _, tc := range []struct {
		now  time.Time
		want string
	}{
		{exp.Add(-time.Hour), "serving role app; credentials expire 2026-11-29T14:00:00Z"},
		{exp, "serving role app; credentials EXPIRED 2026-11-29T14:00:00Z"},
	} {
		if got := statusLine(st, time.Time{}, tc.now); got != tc.want {
			t.Errorf("at %s: STATUS=%s, want %s", tc.now.Format(time.RFC3339), got, tc.want)
		}
	}
}

// TestWatchdogSchedule: for any watchdog interval, watchdogMisses failed
// health checks in a row after a ping, then a passing check that takes its
// whole timeout, still ping within the interval; a check never waits
// longer than maxProbeTimeout.
func TestWatchdogSchedule(t *testing.T) {
	if watchdogMisses < 1 {
		t.Fatalf("watchdogMisses = %d: a single failed check would cost a restart", watchdogMisses)
	}
	for _, interval := range []time.Duration{time.Millisecond, 100 * time.Millisecond, time.Second, 3 * time.Second,
		10 * time.Second, 30 * time.Second, 3 * time.Minute} {
		period, timeout := watchdogSchedule(interval)
		if period <= 0 || timeout <= 0 || timeout > maxProbeTimeout {
			t.Errorf("interval %v: period %v, timeout %v", interval, period, timeout)
		}
		if latest := time.Duration(watchdogMisses+1)*period + timeout; latest >= interval {
			t.Errorf("interval %v: after %d failed checks every %v, a passing one pings at %v", interval, watchdogMisses, period, latest)
		}
	}
}

// TestWatchdogToleratesFailedChecks: under a systemd watchdog the agent
// checks its health on watchdogSchedule's period, sends no ping while
// checks fail, counting them in its log, and pings again at the first
// check that passes.
func TestWatchdogToleratesFailedChecks(t *testing.T) {
	dir := t.TempDir()
	messages, next := notifySocket(t, dir)
	const interval = 2 * time.Second
	t.Setenv("WATCHDOG_USEC", strconv.FormatInt(interval.Microseconds(), 10))
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	var mu sync.Mutex
	var logs strings.Builder
	// since returns what was logged from mark on.
	since := func(mark int) string {
		mu.Lock()
		defer mu.Unlock()
		return logs.String()[mark:]
	}
	waitLogged := func(mark int, want string, times int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); strings.Count(since(mark), want) < times; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%q not logged %d times:\n%s", want, times, since(mark))
			}
		}
	}
	a, clock, _, _ := startAgentLogged(t, io.Discard, lockedWriter{&mu, &logs})
	next("READY=1")
	next("WATCHDOG=1")
	period, _ := watchdogSchedule(interval)
	waitLogged(0, "check_every="+period.String(), 1)

	// A wedged credential loop fails every check until it runs again.
	mark := len(since(0))
	clock.ahead.Store(int64(a.Manager().MaxInactive() + time.Minute))
	waitLogged(mark, "health check failed", 1)
	for len(messages) > 0 { // pings from before the first failure
		<-messages
	}
	waitLogged(mark, "health check failed", 2)
	if !strings.Contains(since(mark), "failed_in_a_row=2") {
		t.Errorf("failures not counted:\n%s", since(mark))
	}
	for len(messages) > 0 {
		if m := <-messages; strings.HasPrefix(m, "WATCHDOG=1") {
			t.Fatalf("pinged while checks failed:\n%s", since(mark))
		}
	}
	clock.ahead.Store(0)
	next("WATCHDOG=1")
	if !strings.Contains(since(mark), "health check passed again") {
		t.Errorf("pinged again without logging the recovery:\n%s", since(mark))
	}
}

// notifySocket listens on a NOTIFY_SOCKET in dir for the agent's sd_notify
// messages; next waits for one that starts with want.
func notifySocket(t *testing.T, dir string) (messages <-chan string, next func(want string)) {
	t.Helper()
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: dir + "/notify", Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	t.Setenv("NOTIFY_SOCKET", dir+"/notify")
	ch := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := sock.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch, func(want string) {
		t.Helper()
		for {
			select {
			case m := <-ch:
				if strings.HasPrefix(m, want) {
					return
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no %s from the agent", want)
			}
		}
	}
}

// TestNoReloadingBeforeReady: a reload during the start-up wait (the first
// credentials not there yet, READY=1 not sent) sends no RELOADING=1: systemd
// would hold the unit in "reloading" until the start's READY=1, up to
// StartupWait later.
func TestNoReloadingBeforeReady(t *testing.T) {
	dir := t.TempDir()
	messages, _ := notifySocket(t, dir)
	path := dir + "/config.yaml"
	if err := os.WriteFile(path, []byte("version: 1\ncredentials:\n  role_arn: arn:aws:iam::123456789012:role/app\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	onLoopback(t, cfg)
	a, err := New(Options{Config: cfg, ConfigPath: path, Host: hostinfo.System(), Logger: slog.New(slog.DiscardHandler), AuditOutput: io.Discard,
		Connect: func(context.Context) (refresh.Clients, error) {
			return refresh.Clients{}, errors.New("no source credentials here")
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-a.Listening()
	if err := a.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	for {
		select {
		case m := <-messages:
			if strings.Contains(m, "RELOADING=1") || strings.Contains(m, "READY=1") {
				t.Fatalf("during the start-up wait: %q", m)
			}
		case <-time.After(300 * time.Millisecond):
			return
		}
	}
}

// TestNoReadyAfterStopping: a reload still running when the stop begins
// (here, held in loading new source settings) does not tell systemd
// READY=1 after STOPPING=1.
func TestNoReadyAfterStopping(t *testing.T) {
	dir := t.TempDir()
	messages, next := notifySocket(t, dir)
	path := dir + "/config.yaml"
	// New source settings for a role: the reload loads them before it
	// applies anything.
	if err := os.WriteFile(path, []byte("version: 1\ncredentials:\n  role_arn: arn:aws:iam::123456789012:role/app\n  source_profile: elsewhere\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, _, cancel, done := startAgentWith(t, &strings.Builder{})
	next("READY=1")
	entered, release := make(chan struct{}), make(chan struct{})
	a.o.ConfigPath = path
	a.o.Connect = func(context.Context) (refresh.Clients, error) {
		close(entered)
		<-release
		return refresh.Clients{}, nil
	}
	reloaded := make(chan error, 1)
	go func() { reloaded <- a.Reload() }()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the reload did not load the new source settings")
	}
	cancel()
	next("STOPPING=1")
	close(release)
	<-reloaded
	<-done
	for {
		select {
		case m := <-messages:
			if strings.Contains(m, "READY=1") {
				t.Errorf("after STOPPING=1: %q", m)
			}
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}

// TestReloadIgnoredWhileStopping: a SIGHUP that arrives during shutdown
// changes nothing and sends nothing to systemd.
func TestReloadIgnoredWhileStopping(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/config.yaml"
	if err := os.WriteFile(path, []byte("version: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, _, cancel, done := startAgentWith(t, &strings.Builder{})
	a.o.ConfigPath = path
	conn, err := net.Dial("tcp", a.Addrs()[0].String()) // keeps the drain going
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for !a.stopping.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := a.Reload(); err == nil || err.Error() != "stopping" {
		t.Errorf("Reload during shutdown: %v", err)
	}
	conn.Close()
	<-done
}

// TestReloadRecorded: systemctl reload only sends SIGHUP, so a refused
// file must show elsewhere: in status, in STATUS= and in the metrics, until
// a reload takes; status also names the settings that wait for a restart.
func TestReloadRecorded(t *testing.T) {
	dir := t.TempDir()
	messages, next := notifySocket(t, dir)
	a, _, _, _ := startAgentWith(t, &strings.Builder{})
	next("READY=1")
	path := dir + "/config.yaml"
	a.o.ConfigPath = path
	reloadGauge := func() string {
		rec := httptest.NewRecorder()
		a.metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		for l := range strings.Lines(rec.Body.String()) {
			if v, ok := strings.CutPrefix(l, "imds_agent_config_last_reload_successful "); ok {
				return strings.TrimSpace(v)
			}
		}
		return "absent"
	}
	readyStatus := func() string {
		t.Helper()
		for {
			select {
			case m := <-messages:
				if strings.HasPrefix(m, "READY=1") {
					return m
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no READY=1 after the reload")
			}
		}
	}
	started := a.Status().ConfigLoaded
	if started.IsZero() || reloadGauge() != "1" {
		t.Fatalf("at start: loaded %v, gauge %s", started, reloadGauge())
	}

	if err := os.WriteFile(path, []byte("version: 1\nbogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // a reload that takes has a later time
	if err := a.Reload(); err == nil {
		t.Fatal("a file with an unknown key was reloaded")
	}
	st := a.Status()
	if !strings.Contains(st.ReloadError, "bogus") || st.ReloadFailedAt.IsZero() || !st.ConfigLoaded.Equal(started) {
		t.Errorf("after a refused reload: error %q at %v, loaded %v (want the start's %v)", st.ReloadError, st.ReloadFailedAt, st.ConfigLoaded, started)
	}
	if m := readyStatus(); !strings.Contains(m, "configuration reload refused") || strings.Contains(m, "bogus") {
		t.Errorf("after a refused reload: %q", m)
	}
	if g := reloadGauge(); g != "0" {
		t.Errorf("after a refused reload: gauge %s, want 0", g)
	}

	good := fmt.Sprintf("version: 1\nlisten:\n  link: \"\"\n  addresses: [\"127.0.0.1:0\"]\nadmin:\n  socket: %s\nlog:\n  format: json\n", a.boot.Admin.Socket)
	if err := os.WriteFile(path, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	st = a.Status()
	if st.ReloadError != "" || !st.ReloadFailedAt.IsZero() || !st.ConfigLoaded.After(started) || !slices.Equal(st.RestartPending, []string{"log.format"}) {
		t.Errorf("after a reload that took: error %q at %v, loaded %v, restart pending %q", st.ReloadError, st.ReloadFailedAt, st.ConfigLoaded, st.RestartPending)
	}
	if m := readyStatus(); strings.Contains(m, "refused") {
		t.Errorf("after a reload that took: %q", m)
	}
	if g := reloadGauge(); g != "1" {
		t.Errorf("after a reload that took: gauge %s, want 1", g)
	}
}

// TestReloadChecksSource: new source settings (here only the region) are
// loaded before a reload applies them, and refused only when they do not
// load while the running ones do; without a role nothing calls STS and
// they are not loaded at all.
func TestReloadChecksSource(t *testing.T) {
	const role = "arn:aws:iam::123456789012:role/app"
	for _, tc := range []struct {
		name    string
		role    string
		loads   []bool // what each load of source settings gives, in turn: the new ones', then the running ones'
		refused bool
	}{
		{"no role", "", nil, false},
		{"the new settings load", role, []bool{true}, false},
		{"neither loads", role, []bool{false, false}, false},
		{"only the running ones load", role, []bool{false, true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			onLoopback(t, cfg)
			cfg.Instance.Region = "eu-west-1"
			cfg.Credentials.RoleARN = tc.role
			calls := 0
			a, err := New(Options{Config: cfg, Host: hostinfo.System(), Logger: slog.New(slog.DiscardHandler), AuditOutput: io.Discard,
				Connect: func(context.Context) (refresh.Clients, error) {
					calls++
					if calls > len(tc.loads) {
						t.Fatalf("source settings loaded %d times, want %d", calls, len(tc.loads))
					}
					if !tc.loads[calls-1] {
						return refresh.Clients{}, errors.New("no source credentials here")
					}
					return refresh.Clients{}, nil
				}})
			if err != nil {
				t.Fatal(err)
			}
			next := *cfg
			next.Instance.Region = "us-west-2"
			err = a.apply(&next)
			if refused := err != nil; refused != tc.refused || calls != len(tc.loads) {
				t.Fatalf("apply: %v after %d loads; want refused %v after %d", err, calls, tc.refused, len(tc.loads))
			}
			want := "us-west-2"
			if tc.refused {
				want = "eu-west-1"
			}
			if got := a.handler.Metadata().Instance().Region; got != want {
				t.Errorf("region served %s, want %s", got, want)
			}
		})
	}
}

// TestIdentityAccountFromConfig: before the role is known, the identity
// document names the account the configuration does (instance.account_id,
// else the role's or the instance profile's ARN), so that it does not change
// once the role is resolved; a bare profile name names none.
func TestIdentityAccountFromConfig(t *testing.T) {
	for _, tc := range []struct {
		name                      string
		accountID, role, instProf string
		want                      string
	}{
		{"role ARN", "", "arn:aws:iam::210987654321:role/web", "", "210987654321"},
		{"profile ARN", "", "", "arn:aws:iam::210987654321:instance-profile/web", "210987654321"},
		{"bare profile name", "", "", "web", ""},
		{"account_id before the ARN's", "111122223333", "arn:aws:iam::210987654321:role/web", "", "111122223333"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			onLoopback(t, cfg)
			cfg.Instance.AccountID = tc.accountID
			cfg.Credentials.RoleARN, cfg.Credentials.InstanceProfile = tc.role, tc.instProf
			a, err := New(Options{Config: cfg, Host: hostinfo.System(), Logger: slog.New(slog.DiscardHandler), AuditOutput: io.Discard})
			if err != nil {
				t.Fatal(err)
			}
			if got := a.handler.Metadata().Instance().AccountID; got != tc.want {
				t.Errorf("account %q, want %q", got, tc.want)
			}
		})
	}
}

// TestDevWithoutMachineID: on a host with no /etc/machine-id (a container,
// often), dev serves as DevInstanceID instead of failing to start; with
// one, it serves the id derived from it, as run does.
func TestDevWithoutMachineID(t *testing.T) {
	for _, tc := range []struct {
		name      string
		machineID []byte
		want      string
	}{
		{"none", nil, DevInstanceID},
		{"present", []byte("4c4c4544004d3510804bb4c04f4e4d32\n"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := hostinfo.System()
			host.ReadFile = func(name string) ([]byte, error) {
				if name != "/etc/machine-id" {
					return os.ReadFile(name)
				}
				if tc.machineID == nil {
					return nil, fs.ErrNotExist
				}
				return tc.machineID, nil
			}
			dev, err := StartDev("127.0.0.1:0", host, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			if dev.Config.Instance.ID != tc.want {
				t.Errorf("instance.id = %q, want %q", dev.Config.Instance.ID, tc.want)
			}
			in, err := host.Instance(dev.Config.Instance, "")
			if err != nil {
				t.Fatalf("the instance dev serves: %v", err)
			}
			want := tc.want
			if want == "" {
				want, _ = host.InstanceID()
			}
			if in.ID != want {
				t.Errorf("served instance id %q, want %q", in.ID, want)
			}
		})
	}
}

package refresh

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/imds-agent/imds-agent/internal/awsemu"
	"github.com/imds-agent/imds-agent/internal/imds"
	"github.com/imds-agent/imds-agent/internal/profile"
	"github.com/imds-agent/imds-agent/internal/snapshot"
)

const (
	simAccount = "123456789012"
	roleA      = "arn:aws:iam::123456789012:role/app"
	roleB      = "arn:aws:iam::123456789012:role/other"
)

var simOrigin = time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)

// simClock models three clocks: true time (what STS sees), the host's wall
// clock (true time plus any skew from a stepped clock) and its monotonic
// clock (which stands still while the host is suspended).
type simClock struct {
	mu      sync.Mutex
	elapsed time.Duration // true time since simOrigin
	skew    time.Duration // wall minus true
	mono    time.Duration
}

func (c *simClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return simOrigin.Add(c.elapsed + c.skew)
}

func (c *simClock) Monotonic() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono
}

// True is what STS's clock says.
func (c *simClock) True() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return simOrigin.Add(c.elapsed)
}

func (c *simClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.elapsed += d
	c.mono += d
}

// suspend: time passes but the monotonic clock does not (a suspended VM).
func (c *simClock) suspend(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.elapsed += d
}

// step shifts the wall clock only (an NTP step).
func (c *simClock) step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.skew += d
}

// logBuffer is a concurrency-safe log sink that can count records.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(substr string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), substr)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// sim runs a Manager against the emulator on simulated time.
type sim struct {
	t        *testing.T
	clock    *simClock
	emu      *awsemu.Emulator
	user     awsemu.User
	url      string
	m        *Manager
	logs     *logBuffer
	stsCalls func() int
	wake     time.Duration // monotonic time of the pending wake-up
	lookups  atomic.Int64  // failed look-ups, as OnLookupFailure saw them
}

type simOptions struct {
	target   profile.Target
	duration time.Duration
	window   time.Duration
	recheck  time.Duration
	roleMax  time.Duration
}

func newSim(t *testing.T, o simOptions) *sim {
	t.Helper()
	s := &sim{t: t, clock: &simClock{}, logs: &logBuffer{}}
	s.emu = awsemu.New(s.clock.True, nil)
	s.user = awsemu.NewUser(simAccount, "host")
	s.emu.AddUser(s.user)
	if o.roleMax == 0 {
		o.roleMax = 12 * time.Hour
	}
	s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "app", MaxSession: o.roleMax})
	s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "other", MaxSession: o.roleMax})
	s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web", Role: "app"})
	srv := httptest.NewServer(s.emu)
	t.Cleanup(srv.Close)
	s.url = srv.URL
	if o.target.None() {
		o.target = profile.Target{RoleARN: roleA}
	}
	if o.duration == 0 {
		o.duration = time.Hour
	}
	if o.recheck == 0 {
		o.recheck = 5 * time.Minute
	}
	rng := rand.New(rand.NewPCG(1, 2))
	s.m = New(s.settings(o), Options{
		Clock:           s.clock,
		Rand:            rng.Float64,
		Logger:          slog.New(slog.NewTextHandler(s.logs, nil)),
		CallTimeout:     100 * time.Millisecond,
		OnLookupFailure: func(Class) { s.lookups.Add(1) },
	})
	s.stsCalls = func() int { return s.emu.Calls("AssumeRole") }
	return s
}

func (s *sim) settings(o simOptions) Settings {
	user := s.user
	return Settings{
		Target: o.target,
		Connect: func(ctx context.Context) (Clients, error) {
			cfg := aws.Config{
				Region:           "eu-west-1",
				BaseEndpoint:     aws.String(s.url),
				Credentials:      credentials.NewStaticCredentialsProvider(user.AccessKeyID, user.SecretAccessKey, ""),
				RetryMaxAttempts: 1,
			}
			return Clients{STS: sts.NewFromConfig(cfg), IAM: iam.NewFromConfig(cfg)}, nil
		},
		SessionName:    "i-0123456789abcdef0",
		Duration:       o.duration,
		Window:         o.window,
		ProfileRecheck: o.recheck,
	}
}

// run lets simulated time pass for d: the manager sleeps until the wake-up
// its last step asked for, then steps again, as Run does. check is called
// before every step (the end of each constant-snapshot interval, where the
// served credentials are oldest) and after it. A wake-up still pending when
// d is over carries into the next run, so a suspension in between lands in
// the middle of a sleep, as it would on a real host.
func (s *sim) run(d time.Duration, check func(phase string)) {
	s.t.Helper()
	end := s.clock.True().Add(d)
	ctx := context.Background()
	for {
		if sleep := s.wake - s.clock.Monotonic(); sleep > 0 {
			if rest := end.Sub(s.clock.True()); sleep > rest {
				s.clock.advance(rest)
				return
			}
			s.clock.advance(sleep)
		}
		if !s.clock.True().Before(end) {
			return
		}
		if check != nil {
			check("before step")
		}
		wait := s.m.step(ctx)
		if check != nil {
			check("after step")
		}
		s.wake = s.clock.Monotonic() + max(wait, time.Millisecond)
	}
}

// reload hands the manager new settings and steps it next, as Run does.
func (s *sim) reload(set Settings) {
	s.m.applyReload(set)
	s.wake = s.clock.Monotonic()
}

// remaining is how long the served credentials stay valid, in true time.
func (s *sim) remaining() time.Duration {
	return s.m.Snapshot().Expiration.Sub(s.clock.True())
}

// healthyWindow is the invariant's bound for credentials of lifetime l.
func healthyWindow(l time.Duration) time.Duration { return min(30*time.Minute, l/2) }

// TestHealthyRotation: over many simulated days with a healthy STS, the
// served credentials always have at least min(30m, half their lifetime)
// left, every scheduled refresh is exactly one STS call, and refreshes come
// about twice an hour for one-hour sessions.
func TestHealthyRotation(t *testing.T) {
	for _, tc := range []struct {
		name     string
		duration time.Duration
		hours    int
	}{
		{"1h sessions", time.Hour, 500},
		{"6h sessions", 6 * time.Hour, 1000},
		{"15m sessions", 15 * time.Minute, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, simOptions{duration: tc.duration})
			first := true
			s.run(time.Duration(tc.hours)*time.Hour, func(phase string) {
				snap := s.m.Snapshot()
				if first && snap.State != snapshot.Ready {
					return // before the first refresh
				}
				first = false
				if snap.State != snapshot.Ready {
					t.Fatalf("%s: state %v", phase, snap.State)
				}
				if r := s.remaining(); r < healthyWindow(tc.duration) {
					t.Fatalf("%s at %v: %v left, want at least %v", phase, s.clock.True(), r, healthyWindow(tc.duration))
				}
			})
			st := s.m.Status()
			perHour := float64(st.Refreshes) / float64(tc.hours)
			t.Logf("%d refreshes in %d simulated hours: %.2f per hour; %d STS calls", st.Refreshes, tc.hours, perHour, s.stsCalls())
			if uint64(s.stsCalls()) != st.Refreshes {
				t.Errorf("STS calls %d != refreshes %d: extra calls", s.stsCalls(), st.Refreshes)
			}
			// Half the lifetime (or 30m) is left at each refresh, minus up
			// to 10% jitter of the interval.
			interval := tc.duration - healthyWindow(tc.duration)
			lo, hi := float64(time.Hour)/float64(interval), float64(time.Hour)/(0.9*float64(interval))
			if perHour < lo*0.98 || perHour > hi*1.02 {
				t.Errorf("%.2f refreshes per hour, want between %.2f and %.2f", perHour, lo, hi)
			}
			if st.Failures != 0 || st.ConsecutiveFailures != 0 {
				t.Errorf("failures reported: %+v", st)
			}
		})
	}
}

// outage makes AssumeRole fail with f between from and to (true time).
func (s *sim) outage(from, to time.Duration, f awsemu.Fault) {
	start := s.clock.True()
	s.emu.Inject(func(action string) *awsemu.Fault {
		if action != "AssumeRole" {
			return nil
		}
		now := s.clock.True().Sub(start)
		if now >= from && now < to {
			if f.Hang {
				s.clock.advance(30 * time.Second) // the call stalls 30 s of simulated time
			}
			ff := f
			return &ff
		}
		return nil
	})
}

// TestTransientFaults: throttling bursts, 5xx and 30-second stalls shorter
// than the refresh window never let the served credentials expire, never
// produce empty credentials, back off (one log line per attempt), and
// recover within the backoff cap.
func TestTransientFaults(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fault   awsemu.Fault
		class   string
		outages int
	}{
		{"throttling", awsemu.Fault{Status: 400, Code: "Throttling", Message: "Rate exceeded"}, "throttled", 16},
		{"5xx", awsemu.Fault{Status: 503, Code: "ServiceUnavailable", Message: "Service unavailable"}, "transient", 16},
		// Each stalled call costs the test its real call timeout.
		{"stall", awsemu.Fault{Hang: true}, "transient", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, simOptions{duration: time.Hour})
			s.run(time.Minute, nil) // first credentials
			// A 20-minute outage every 3 hours.
			for i := 0; i < tc.outages; i++ {
				s.outage(2*time.Hour, 2*time.Hour+20*time.Minute, tc.fault)
				s.run(3*time.Hour, func(phase string) {
					snap := s.m.Snapshot()
					if snap.State != snapshot.Ready || len(snap.Credentials.Bytes) == 0 {
						t.Fatalf("%s: state %v with %d credential bytes", phase, snap.State, len(snap.Credentials.Bytes))
					}
					if s.remaining() <= 0 {
						t.Fatalf("%s at %v: served credentials expired during a 20-minute outage", phase, s.clock.True())
					}
					if !strings.Contains(string(snap.Credentials.Bytes), `"Code":"Success"`) {
						t.Fatalf("credentials document without Success")
					}
				})
			}
			st := s.m.Status()
			if st.Failures == 0 {
				t.Fatalf("no failures seen: the outage did not hit a refresh")
			}
			if st.ConsecutiveFailures != 0 {
				t.Errorf("still failing after the outages: %+v", st)
			}
			if got := s.logs.count(`msg="obtaining role credentials failed"`); uint64(got) != st.Failures {
				t.Errorf("%d failure log lines for %d failed attempts", got, st.Failures)
			}
			if got := s.logs.count("class=" + tc.class); got == 0 {
				t.Errorf("failures not classed %s:\n%s", tc.class, s.logs.String())
			}
			// Backoff keeps the attempts per 20-minute outage modest.
			if perOutage := float64(st.Failures) / float64(tc.outages); perOutage > 40 {
				t.Errorf("%.1f attempts per outage: backoff too aggressive", perOutage)
			}
			t.Logf("%d refreshes, %d failed attempts over %d outages", st.Refreshes, st.Failures, tc.outages)
		})
	}
}

// TestThrottlingKeepsClients: while STS throttles, the source
// credentials are not read again for every attempt (for a source that
// comes from STS itself, each reading would be one more call to it); after
// another failure they are.
func TestThrottlingKeepsClients(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	connects := 0
	set := s.settings(simOptions{target: profile.Target{RoleARN: roleA}, duration: time.Hour, recheck: 5 * time.Minute})
	connect := set.Connect
	set.Connect = func(ctx context.Context) (Clients, error) { connects++; return connect(ctx) }
	s.m.apply(set)
	s.run(time.Minute, nil)
	s.outage(0, 40*time.Minute, awsemu.Fault{Status: 400, Code: "Throttling", Message: "Rate exceeded"})
	before := connects
	s.run(40*time.Minute, nil)
	if st := s.m.Status(); st.Failures == 0 {
		t.Fatal("no throttled attempt")
	}
	if connects != before {
		t.Errorf("the source credentials were read %d times while STS throttled", connects-before)
	}
	s.outage(0, time.Hour, awsemu.Fault{Status: 503, Code: "ServiceUnavailable", Message: "down"})
	s.run(10*time.Minute, nil)
	if connects == before {
		t.Error("the source credentials were not read again after a 5xx")
	}
}

// TestStallDoesNotBlockReaders: while AssumeRole hangs, the metadata
// handler (reading this manager's snapshot) answers credential requests at
// once.
func TestStallDoesNotBlockReaders(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	s.run(time.Minute, nil)
	tokens, err := imds.NewTokens(s.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	h := imds.NewHandler(imds.NewMetadata(imds.Instance{ID: "i-0123456789abcdef0"}, imds.Options{Enabled: true, HopLimit: 1}),
		s.m, tokens, s.clock.Now, nil)
	hung := make(chan struct{})
	s.emu.Inject(func(string) *awsemu.Fault {
		close(hung)
		return &awsemu.Fault{Hang: true}
	})
	// The call hangs until released, or for 30 s: far longer than the
	// requests below take, however slow the machine.
	s.m.opts.CallTimeout = 30 * time.Second
	s.m.refreshDue = s.clock.Monotonic()
	done := make(chan struct{})
	go func() { s.m.step(context.Background()); close(done) }()
	<-hung
	var worst time.Duration
	for i := 0; i < 200; i++ {
		start := time.Now()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://169.254.169.254/latest/meta-data/iam/security-credentials/app", nil))
		worst = max(worst, time.Since(start))
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"Code":"Success"`) {
			t.Fatalf("during the stall: %d %s", rec.Code, rec.Body.String())
		}
	}
	select {
	case <-done:
		t.Fatal("the AssumeRole call returned before the requests were made: nothing was stalled")
	default:
	}
	s.emu.Release()
	// A request that waited for STS would have waited out the call's
	// 30 s; this bound only tells that from a busy machine.
	if worst > 5*time.Second {
		t.Errorf("a credentials request took %v while STS hung", worst)
	}
	<-done
}

// TestReloadKeepsCredentialsWhileIAMFails: a reload that names the same
// instance profile differently (its ARN instead of its name) while IAM is
// failing keeps serving the credentials it has.
func TestReloadKeepsCredentialsWhileIAMFails(t *testing.T) {
	s := newSim(t, simOptions{target: profile.Target{InstanceProfile: "web"}, duration: time.Hour})
	s.run(time.Minute, nil)
	before := s.m.Snapshot()
	if before.State != snapshot.Ready {
		t.Fatalf("state %v", before.State)
	}
	s.emu.Inject(func(action string) *awsemu.Fault {
		if action == "GetInstanceProfile" {
			return &awsemu.Fault{Status: 503, Code: "ServiceUnavailable", Message: "down"}
		}
		return nil
	})
	s.m.applyReload(s.settings(simOptions{target: profile.Target{InstanceProfile: "arn:aws:iam::123456789012:instance-profile/web"}, duration: time.Hour, recheck: 5 * time.Minute}))
	s.run(10*time.Minute, func(phase string) {
		if snap := s.m.Snapshot(); snap.State != snapshot.Ready || len(snap.Credentials.Bytes) == 0 {
			t.Fatalf("%s: the reload dropped the credentials (state %v)", phase, snap.State)
		}
	})
	if s.m.Status().ConsecutiveFailures == 0 {
		t.Error("IAM failures not counted")
	}
	s.emu.Inject(nil)
	s.run(6*time.Minute, nil)
	if st := s.m.Status(); st.ConsecutiveFailures != 0 || st.Target != "instance profile arn:aws:iam::123456789012:instance-profile/web" {
		t.Errorf("after IAM recovered: %+v", st)
	}
}

// TestRoleChangeKeepsCredentialsUntilAssumed: a reload names a role the
// host cannot assume yet (its trust policy does not name the host). The
// old role's credentials keep being served while they are valid, with the
// failure in iam/info; once they expire the agent waits for the new role
// (503) rather than serve the old role's expired ones; once the new role
// trusts the host it is served.
func TestRoleChangeKeepsCredentialsUntilAssumed(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	s.run(time.Minute, nil)
	before := s.m.Snapshot()
	if before.State != snapshot.Ready || before.Role.ARN != roleA {
		t.Fatalf("state %v role %s", before.State, before.Role.ARN)
	}
	s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "other", MaxSession: 12 * time.Hour, Trusted: []string{"arn:aws:iam::123456789012:user/someone-else"}})
	s.m.applyReload(s.settings(simOptions{target: profile.Target{RoleARN: roleB}, duration: time.Hour}))
	s.run(30*time.Minute, func(phase string) {
		snap := s.m.Snapshot()
		if snap.State != snapshot.Ready || snap.Role.ARN != roleA || !bytes.Equal(snap.Credentials.Bytes, before.Credentials.Bytes) {
			t.Fatalf("%s: the old role's valid credentials were dropped: state %v role %s", phase, snap.State, snap.Role.ARN)
		}
		// Status names the role served next to its key, not the one
		// that cannot be assumed yet.
		if st := s.m.Status(); st.Role.ARN != roleA || st.KeySuffix != snap.KeySuffix {
			t.Fatalf("%s: status says role %s key %s, serving role %s key %s", phase, st.Role.ARN, st.KeySuffix, roleA, snap.KeySuffix)
		}
	})
	snap := s.m.Snapshot()
	if snap.FailureCode != "AssumeRoleUnauthorizedAccess" {
		t.Errorf("failure code %q: iam/info should say why the new role is not served", snap.FailureCode)
	}
	if !strings.Contains(s.logs.String(), "serving_role="+roleA) {
		t.Errorf("the failure log does not say which role is still served:\n%s", s.logs)
	}
	s.run(time.Hour, nil)
	if snap := s.m.Snapshot(); snap.State != snapshot.Pending || snap.Role.ARN != roleB {
		t.Fatalf("after the old credentials expired: state %v role %s, want pending for %s", snap.State, snap.Role.ARN, roleB)
	}
	s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "other", MaxSession: 12 * time.Hour})
	s.run(backoffCap+time.Minute, nil)
	if snap := s.m.Snapshot(); snap.State != snapshot.Ready || snap.Role.ARN != roleB {
		t.Errorf("after the new role trusted the host: state %v role %s", snap.State, snap.Role.ARN)
	}
}

// TestLookupFailureCodes: a failing look-up of the instance profile's role
// is reported as IAM's (iam/info's code and text, and status's), not as a
// failure of STS or of AssumeRole.
func TestLookupFailureCodes(t *testing.T) {
	for _, tc := range []struct {
		fault awsemu.Fault
		code  string
		msg   string
	}{
		{awsemu.Fault{Status: 403, Code: "AccessDenied", Message: "not authorized to perform iam:GetInstanceProfile"},
			"InstanceProfileUnauthorizedAccess", "The agent cannot look up the instance profile's role. See the agent's log."},
		{awsemu.Fault{Status: 400, Code: "Throttling", Message: "Rate exceeded"},
			"Throttling", "IAM is throttling the instance profile's look-up; retrying."},
		{awsemu.Fault{Status: 503, Code: "ServiceUnavailable", Message: "down"},
			"ServiceUnavailable", "IAM could not be reached to look up the instance profile's role; retrying."},
	} {
		t.Run(tc.fault.Code, func(t *testing.T) {
			s := newSim(t, simOptions{target: profile.Target{InstanceProfile: "web"}, duration: time.Hour})
			s.emu.Inject(func(action string) *awsemu.Fault {
				if action != "GetInstanceProfile" {
					return nil
				}
				f := tc.fault
				return &f
			})
			s.run(time.Minute, nil)
			snap := s.m.Snapshot()
			if snap.State != snapshot.Pending || snap.FailureCode != tc.code || !bytes.Contains(snap.Failure.Bytes, []byte(`"Message":"`+tc.msg+`"`)) {
				t.Errorf("iam/info: state %v, %s; want pending, %s %q", snap.State, snap.Failure.Bytes, tc.code, tc.msg)
			}
			if st := s.m.Status(); st.LastErrorCode != tc.code || !strings.Contains(st.LastError, tc.fault.Code) {
				t.Errorf("status: %s %q", st.LastErrorCode, st.LastError)
			}
		})
	}
}

// TestRecheckKeepsItsPaceWhenIAMFails: once the role is known, a failing
// recheck of the instance profile (IAM throttling the account, say) is
// tried again at the recheck's own pace, not faster: IAM's quota is the
// account's, shared by the fleet. The role's credentials are refreshed as
// usual meanwhile.
func TestRecheckKeepsItsPaceWhenIAMFails(t *testing.T) {
	s := newSim(t, simOptions{target: profile.Target{InstanceProfile: "web"}, duration: time.Hour, recheck: 30 * time.Minute})
	s.run(time.Minute, nil)
	lookups := func() int { return s.emu.Calls("GetInstanceProfile") }
	healthy := lookups()
	s.run(4*time.Hour, nil)
	healthy = lookups() - healthy
	s.emu.Inject(func(action string) *awsemu.Fault {
		if action != "GetInstanceProfile" {
			return nil
		}
		return &awsemu.Fault{Status: 400, Code: "Throttling", Message: "Rate exceeded"}
	})
	failing := lookups()
	s.run(4*time.Hour, func(phase string) {
		if snap := s.m.Snapshot(); snap.State != snapshot.Ready || snap.Expired(s.clock.Now()) {
			t.Fatalf("%s: state %v, expired %v: the known role's credentials must be refreshed as usual", phase, snap.State, snap.Expired(s.clock.Now()))
		}
	})
	failing = lookups() - failing
	attempts := s.m.Status().LookupFailures
	t.Logf("4 h: %d look-ups while IAM answered, %d calls in %d failed look-ups while it throttled", healthy, failing, attempts)
	if attempts > uint64(healthy)+2 {
		t.Errorf("%d failed look-ups in 4 h while IAM throttled, against %d look-ups while it answered", attempts, healthy)
	}
}

// TestFirstLookupAfterReloadBacksOff: a reload from no role to an instance
// profile is a first look-up, not a recheck: while IAM fails it is retried
// on the backoff, not at the recheck's pace, and the role is served soon
// after IAM recovers.
func TestFirstLookupAfterReloadBacksOff(t *testing.T) {
	s := newSim(t, simOptions{target: profile.Target{InstanceProfile: "web"}, duration: time.Hour, recheck: 30 * time.Minute})
	s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web"}) // no role
	s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web2", Role: "app"})
	s.run(time.Minute, nil)
	if snap := s.m.Snapshot(); snap.State != snapshot.NoRole {
		t.Fatalf("state %v, want no-role", snap.State)
	}
	var iamUp atomic.Bool // read on the emulator's goroutines
	s.emu.Inject(func(action string) *awsemu.Fault {
		if action != "GetInstanceProfile" || iamUp.Load() {
			return nil
		}
		return &awsemu.Fault{Status: 503, Code: "ServiceUnavailable", Message: "down"}
	})
	s.reload(s.settings(simOptions{target: profile.Target{InstanceProfile: "web2"}, duration: time.Hour, recheck: 30 * time.Minute}))
	s.run(20*time.Minute, nil)
	if n := s.m.Status().LookupFailures; n < 5 {
		t.Errorf("%d failed look-ups in 20 min while IAM was down, want the backoff's (at least 5), not the 30 min recheck's", n)
	}
	iamUp.Store(true)
	s.run(6*time.Minute, nil)
	if snap := s.m.Snapshot(); snap.State != snapshot.Ready || snap.Role.ARN != roleA {
		t.Errorf("6 min after IAM recovered: state %v role %s, want the new profile's role served", snap.State, snap.Role.ARN)
	}
}

// TestChangedRoleNotServedExpired: the role changes, in IAM (the instance
// profile's role is swapped) or by a reload (another role_arn), to one that
// does not trust the host yet. The old role's credentials are served while
// they are valid, never past their expiry (the agent waits for the new
// role, 503), and status names the role served.
func TestChangedRoleNotServedExpired(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target profile.Target
		change func(s *sim)
	}{
		{"swapped in IAM", profile.Target{InstanceProfile: "web"}, func(s *sim) {
			s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web", Role: "other"})
		}},
		{"reload", profile.Target{RoleARN: roleA}, func(s *sim) {
			s.reload(s.settings(simOptions{target: profile.Target{RoleARN: roleB}, duration: time.Hour}))
		}},
		// The same new role under another profile: the old role's
		// credentials are not relabelled with it.
		{"swapped in IAM, then a reload to another profile with that role", profile.Target{InstanceProfile: "web"}, func(s *sim) {
			s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web", Role: "other"})
			s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web2", Role: "other"})
			s.run(6*time.Minute, nil)
			s.reload(s.settings(simOptions{target: profile.Target{InstanceProfile: "web2"}, duration: time.Hour, recheck: 5 * time.Minute}))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, simOptions{target: tc.target, duration: time.Hour})
			s.run(time.Minute, nil)
			before := s.m.Snapshot()
			if before.State != snapshot.Ready || before.Role.ARN != roleA {
				t.Fatalf("state %v role %s", before.State, before.Role.ARN)
			}
			s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "other", MaxSession: 12 * time.Hour, Trusted: []string{"arn:aws:iam::123456789012:user/someone-else"}})
			tc.change(s)
			var late time.Duration
			s.run(2*time.Hour, func(phase string) {
				snap := s.m.Snapshot()
				// Before a step: what was served while the manager slept.
				if snap.Role.ARN == roleA && snap.State == snapshot.Ready {
					late = max(late, s.clock.Now().Sub(before.Expiration))
				}
				if snap.Role.ARN != roleA && snap.State == snapshot.Ready && snap.KeySuffix == before.KeySuffix {
					t.Fatalf("%s: the old role's key …%s is served as role %s's", phase, snap.KeySuffix, snap.Role.ARN)
				}
				if st := s.m.Status(); phase == "after step" && snap.State == snapshot.Ready && st.Role.ARN != snap.Role.ARN {
					t.Fatalf("status names role %s, serving %s", st.Role.ARN, snap.Role.ARN)
				}
			})
			if late > 0 {
				t.Errorf("the old role's credentials were served %v past their expiry", late)
			}
			if snap := s.m.Snapshot(); snap.State != snapshot.Pending || snap.Role.ARN != roleB || snap.FailureCode == "" {
				t.Errorf("after the old credentials expired: state %v role %s failure %q, want pending for %s with the failure",
					snap.State, snap.Role.ARN, snap.FailureCode, roleB)
			}
		})
	}
}

// TestProfileDeleted: an instance profile that resolved is deleted (a
// teardown removes its role, then deletes it, within one recheck). One
// NoSuchEntity answer keeps what is served (source credentials of another
// account give the same answer, while they are put right); two rechecks in
// a row make the iam paths answer 404, as for a profile without a role, and
// its role is not renewed; a refresh asked for says why; a profile made
// again is served again.
func TestProfileDeleted(t *testing.T) {
	s := newSim(t, simOptions{target: profile.Target{InstanceProfile: "web"}, duration: time.Hour})
	s.run(time.Minute, nil)
	if snap := s.m.Snapshot(); snap.State != snapshot.Ready || snap.Role.ARN != roleA {
		t.Fatalf("state %v role %s", snap.State, snap.Role.ARN)
	}
	// failedRechecks lets time pass until n more look-ups have failed.
	failedRechecks := func(n uint64) {
		t.Helper()
		want := s.m.Status().LookupFailures + n
		for i := 0; s.m.Status().LookupFailures < want; i++ {
			if i == 100 {
				t.Fatalf("%d look-ups failed in 16m, want %d", s.m.Status().LookupFailures, want)
			}
			s.run(10*time.Second, nil)
		}
	}
	s.emu.DeleteInstanceProfile("web")
	failedRechecks(1)
	if st := s.m.Status(); st.State != snapshot.Ready || !strings.Contains(st.LastError, "NoSuchEntity") {
		t.Fatalf("after one NoSuchEntity: state %v, last error %q; want the credentials kept and the failure shown", st.State, st.LastError)
	}
	// Refreshes and reloads asked for while it is put right look up
	// again at once; they do not make the profile gone sooner.
	for range 2 {
		_ = s.m.forced(context.Background())
		s.reload(s.settings(simOptions{target: profile.Target{InstanceProfile: "web"}, duration: time.Hour, recheck: 5 * time.Minute}))
		s.run(5*time.Second, nil)
	}
	if st := s.m.Status(); st.State != snapshot.Ready {
		t.Fatalf("after refreshes and reloads within a minute of one NoSuchEntity: state %v, want the credentials kept", st.State)
	}
	// A recheck that finds the profile starts the count again.
	s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web", Role: "app"})
	s.run(6*time.Minute, nil)
	s.emu.DeleteInstanceProfile("web")
	failedRechecks(1)
	if snap := s.m.Snapshot(); snap.State != snapshot.Ready {
		t.Fatalf("one NoSuchEntity after a recheck that found the profile: state %v, want the credentials kept", snap.State)
	}
	failedRechecks(1)
	if snap := s.m.Snapshot(); snap.State != snapshot.NoRole {
		t.Fatalf("after two rechecks found the profile deleted: state %v role %s, want no role", snap.State, snap.Role.ARN)
	}
	calls := s.stsCalls()
	s.run(6*time.Hour, nil)
	if n := s.stsCalls() - calls; n != 0 {
		t.Errorf("the deleted profile's role was assumed %d times", n)
	}
	if n := s.logs.count("the instance profile is gone"); n != 1 {
		t.Errorf("the deletion is logged %d times, want once", n)
	}
	if err := s.m.forced(context.Background()); err == nil || !strings.Contains(err.Error(), "NoSuchEntity") {
		t.Errorf("a refresh asked for after the deletion: %v, want the look-up's failure", err)
	}
	s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web", Role: "app"})
	s.wake = s.clock.Monotonic()
	s.run(6*time.Minute, nil)
	if snap := s.m.Snapshot(); snap.State != snapshot.Ready || snap.Role.ARN != roleA {
		t.Errorf("after the profile was made again: state %v role %s", snap.State, snap.Role.ARN)
	}
}

// TestReloadToUnresolvableTarget: a reload names an instance profile that
// does not exist (a typo). The old role is not renewed: its credentials are
// served while they are valid, with the failure in iam/info, then nothing
// (503) until a reload names a target that resolves.
func TestReloadToUnresolvableTarget(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	s.run(time.Minute, nil)
	before := s.m.Snapshot()
	if before.State != snapshot.Ready || before.Role.ARN != roleA {
		t.Fatalf("state %v role %s", before.State, before.Role.ARN)
	}
	calls := s.stsCalls()
	s.reload(s.settings(simOptions{target: profile.Target{InstanceProfile: "no-such-profile"}, duration: time.Hour, recheck: 5 * time.Minute}))
	s.run(3*time.Hour, func(phase string) {
		snap := s.m.Snapshot()
		if s.clock.Now().Before(before.Expiration) {
			if snap.State != snapshot.Ready || !bytes.Equal(snap.Credentials.Bytes, before.Credentials.Bytes) {
				t.Fatalf("%s: the old role's valid credentials were dropped or renewed: state %v", phase, snap.State)
			}
		} else if phase == "after step" && snap.State != snapshot.Pending {
			t.Fatalf("%s, %v after the old credentials expired: state %v role %s, want pending", phase,
				s.clock.Now().Sub(before.Expiration), snap.State, snap.Role.ARN)
		}
	})
	if n := s.stsCalls() - calls; n != 0 {
		t.Errorf("%d AssumeRole calls for the role before the reload", n)
	}
	if snap := s.m.Snapshot(); snap.FailureCode == "" {
		t.Error("iam/info does not say why nothing is served")
	}
	// The failed look-ups are counted, though no AssumeRole failed.
	if st := s.m.Status(); st.LookupFailures == 0 || st.LookupFailures != uint64(s.lookups.Load()) || st.Failures != 0 {
		t.Errorf("status: %d look-ups failed (hook saw %d), %d AssumeRole failures; want the look-ups counted, no AssumeRole failure",
			st.LookupFailures, s.lookups.Load(), st.Failures)
	}
	if err := s.m.forced(context.Background()); err == nil {
		t.Error("a forced refresh reported success while the target does not resolve")
	}
	if n := s.stsCalls() - calls; n != 0 {
		t.Errorf("the forced refresh renewed the old role (%d AssumeRole calls)", n)
	}
	s.reload(s.settings(simOptions{target: profile.Target{InstanceProfile: "web"}, duration: time.Hour, recheck: 5 * time.Minute}))
	s.run(time.Minute, nil)
	if snap := s.m.Snapshot(); snap.State != snapshot.Ready || snap.Role.ARN != roleA || s.clock.Now().After(snap.Expiration) {
		t.Errorf("after a reload to a profile that resolves: state %v role %s", snap.State, snap.Role.ARN)
	}
}

// TestReloadRetriesAtOnce: after AssumeRole has failed for a while (the
// host's keys were wrong), a reload (with the keys fixed) tries again at
// once, not at the end of a backoff of up to five minutes.
func TestReloadRetriesAtOnce(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	good := s.user
	s.user = awsemu.NewUser(simAccount, "unknown")
	s.m = New(s.settings(simOptions{target: profile.Target{RoleARN: roleA}, duration: time.Hour, recheck: 5 * time.Minute}), Options{Clock: s.clock, Rand: func() float64 { return 0.5 },
		Logger: slog.New(slog.NewTextHandler(s.logs, nil)), CallTimeout: 100 * time.Millisecond})
	s.run(time.Hour, nil)
	if st := s.m.Status(); st.State != snapshot.Pending || st.ConsecutiveFailures < 5 {
		t.Fatalf("with unknown keys: state %v after %d failures", st.State, st.ConsecutiveFailures)
	}
	s.user = good
	s.reload(s.settings(simOptions{target: profile.Target{RoleARN: roleA}, duration: time.Hour, recheck: 5 * time.Minute}))
	s.run(time.Second, nil)
	if st := s.m.Status(); st.State != snapshot.Ready {
		t.Errorf("a second after the reload: state %v, %d failures", st.State, st.ConsecutiveFailures)
	}
}

// TestReloadReschedules: a reload that changes the session or the window
// reschedules the current credentials' refresh with a scheduled refresh's
// jitter (no fleet-wide second for hosts that got their credentials
// together); one that changes the session name or the external id gets new
// credentials within a minute (spread over a fleet), under the new name.
func TestReloadReschedules(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	s.run(time.Minute, nil)
	o := simOptions{target: profile.Target{RoleARN: roleA}, duration: 2 * time.Hour, recheck: 5 * time.Minute}
	exp := s.m.Snapshot().Expiration
	s.reload(s.settings(o))
	due := s.clock.Now().Add(s.m.refreshDue - s.clock.Monotonic())
	if unjittered := exp.Add(-30 * time.Minute); !due.Before(unjittered.Add(-time.Second)) || due.Before(s.clock.Now()) {
		t.Errorf("after a reload of session_duration: refresh due %v, want jittered before %v", due, unjittered)
	}

	calls := s.stsCalls()
	set := s.settings(o)
	set.SessionName = "i-0fedcba9876543210"
	s.reload(set)
	if wait := s.m.refreshDue - s.clock.Monotonic(); wait <= 0 || wait > time.Minute {
		t.Errorf("a reload of the session name: refresh in %v, want spread over a minute", wait)
	}
	s.run(time.Minute, nil)
	if n := s.stsCalls() - calls; n != 1 {
		t.Fatalf("a reload of the session name made %d AssumeRole calls, want 1", n)
	}
	served := ""
	for _, ses := range s.emu.Sessions() {
		if snapshot.Suffix(ses.AccessKeyID) == s.m.Snapshot().KeySuffix {
			served = ses.AssumedRoleARN
		}
	}
	if !strings.HasSuffix(served, "/i-0fedcba9876543210") {
		t.Errorf("session served after the reload: %q", served)
	}

	// A refresh due sooner than the spread stays due then.
	s.m.refreshDue = s.clock.Monotonic() + 2*time.Second
	set.ExternalID = "fleet-2"
	s.reload(set)
	if wait := s.m.refreshDue - s.clock.Monotonic(); wait > 2*time.Second {
		t.Errorf("a refresh due in 2s was put off to %v by a reload", wait)
	}
	s.run(time.Minute, nil)
	// After a failed AssumeRole, a reload retries at once, whatever it
	// changes.
	s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "app", MaxSession: 12 * time.Hour, Trusted: []string{"arn:aws:iam::123456789012:user/someone-else"}})
	s.m.refreshDue = s.clock.Monotonic()
	s.wake = s.clock.Monotonic()
	s.run(time.Second, nil)
	if s.m.Status().ConsecutiveFailures == 0 {
		t.Fatal("the untrusted role did not fail")
	}
	set.ExternalID = "fleet-3"
	s.reload(set)
	if wait := s.m.refreshDue - s.clock.Monotonic(); wait > 0 {
		t.Errorf("after a failure, a reload's retry is due in %v, want at once", wait)
	}
}

// TestForcedLookupOnce: a refresh asked for while the first look-up of
// the instance profile keeps failing makes one look-up, and the loop's
// next step, which follows at once, does not make another before the
// backoff says so.
func TestForcedLookupOnce(t *testing.T) {
	s := newSim(t, simOptions{target: profile.Target{InstanceProfile: "web"}, duration: time.Hour})
	s.emu.Inject(func(action string) *awsemu.Fault {
		if action == "GetInstanceProfile" {
			return &awsemu.Fault{Status: 403, Code: "AccessDenied", Message: "not authorized to perform iam:GetInstanceProfile"}
		}
		return nil
	})
	s.run(time.Minute, nil)
	lookups := s.emu.Calls("GetInstanceProfile")
	if err := s.m.forced(context.Background()); err == nil {
		t.Fatal("a forced refresh succeeded while the look-up fails")
	}
	s.wake = s.clock.Monotonic() // Run steps right after a forced refresh
	s.run(time.Second, nil)
	if n := s.emu.Calls("GetInstanceProfile") - lookups; n != 1 {
		t.Errorf("one forced refresh made %d look-ups, want 1", n)
	}
}

// TestReloadToNoRole: a reload that detaches the role leaves nothing of it
// in the status, and is a final answer for a start still waiting for its
// first credentials.
func TestReloadToNoRole(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "app", MaxSession: 12 * time.Hour, Trusted: []string{"arn:aws:iam::123456789012:user/someone-else"}})
	s.run(time.Minute, nil)
	select {
	case <-s.m.Ready():
		t.Fatal("ready without credentials")
	default:
	}
	if s.m.Status().ConsecutiveFailures == 0 {
		t.Fatal("no failure to clear")
	}
	s.reload(Settings{ProfileRecheck: time.Minute})
	s.run(time.Minute, nil)
	select {
	case <-s.m.Ready():
	default:
		t.Error("not ready after a reload to no role")
	}
	st := s.m.Status()
	if st.State != snapshot.NoRole || st.Role.ARN != "" || st.ConsecutiveFailures != 0 {
		t.Errorf("status after a reload to no role: state %v role %q failures %d", st.State, st.Role.ARN, st.ConsecutiveFailures)
	}
}

// TestTerminalFailure: the role stops trusting the host for two hours. The
// credentials run out and keep being served with their true expiration,
// iam/info stops saying Success, errors are logged once per backoff step as
// terminal, and the agent recovers on its own once IAM is fixed.
func TestTerminalFailure(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	s.run(time.Minute, nil)
	s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "app", MaxSession: 12 * time.Hour, Trusted: []string{"arn:aws:iam::123456789012:user/someone-else"}})
	last := s.m.Snapshot()
	s.run(2*time.Hour, func(phase string) {
		snap := s.m.Snapshot()
		if snap.State != snapshot.Ready || len(snap.Credentials.Bytes) == 0 {
			t.Fatalf("%s: state %v", phase, snap.State)
		}
		if !snap.Expiration.Equal(last.Expiration) && s.m.Status().ConsecutiveFailures > 0 {
			t.Fatalf("expiration changed without a successful refresh")
		}
	})
	snap := s.m.Snapshot()
	if !snap.Expired(s.clock.Now()) {
		t.Fatalf("credentials should have expired after two hours of AccessDenied")
	}
	if !bytes.Equal(snap.Credentials.Bytes, last.Credentials.Bytes) {
		t.Errorf("expired credentials were replaced; the last ones must be served with their true expiration")
	}
	if snap.FailureCode != "AssumeRoleUnauthorizedAccess" || !strings.Contains(string(snap.Failure.Bytes), `"Code":"AssumeRoleUnauthorizedAccess"`) {
		t.Errorf("failure document = %s", snap.Failure.Bytes)
	}
	st := s.m.Status()
	if st.LastErrorClass != "terminal" || !strings.Contains(st.LastError, "AccessDenied") {
		t.Errorf("status = %+v", st)
	}
	lines := s.logs.count(`msg="obtaining role credentials failed; this needs a change in IAM`)
	if lines != st.ConsecutiveFailures || lines > 40 {
		t.Errorf("%d terminal log lines for %d attempts in 2h: want one per attempt, few attempts", lines, st.ConsecutiveFailures)
	}
	s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "app", MaxSession: 12 * time.Hour})
	s.run(backoffCap+time.Minute, nil)
	if snap := s.m.Snapshot(); snap.Expired(s.clock.Now()) || s.m.Status().ConsecutiveFailures != 0 {
		t.Errorf("not recovered within the backoff cap after IAM was fixed: %+v", s.m.Status())
	}
}

// TestBadSourceCredentials: the host's keys are wrong from the start. The
// agent stays Pending (503), reports the failure distinctly, and logs one
// line per backoff step.
func TestBadSourceCredentials(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	s.emu.RemoveUser(s.user.AccessKeyID)
	s.run(time.Hour, func(string) {
		if st := s.m.Snapshot().State; st != snapshot.Pending {
			t.Fatalf("state %v, want pending", st)
		}
	})
	snap := s.m.Snapshot()
	if snap.FailureCode != "InvalidSourceCredentials" {
		t.Errorf("failure code %q", snap.FailureCode)
	}
	st := s.m.Status()
	if st.ConsecutiveFailures < 5 || st.ConsecutiveFailures > 30 {
		t.Errorf("%d attempts in an hour", st.ConsecutiveFailures)
	}
	if got := s.logs.count("level=ERROR"); got != st.ConsecutiveFailures {
		t.Errorf("%d error lines for %d attempts", got, st.ConsecutiveFailures)
	}
}

// TestRoleSwappedAndDetached: the instance profile's role is swapped in
// IAM; within the recheck interval the new role's credentials are served.
// Then the role is removed from the profile: the agent answers "no role".
func TestRoleSwappedAndDetached(t *testing.T) {
	s := newSim(t, simOptions{target: profile.Target{InstanceProfile: "arn:aws:iam::123456789012:instance-profile/web"}, duration: time.Hour})
	s.run(time.Minute, nil)
	if snap := s.m.Snapshot(); snap.Role.ARN != roleA || snap.State != snapshot.Ready {
		t.Fatalf("role %s state %v", snap.Role.ARN, snap.State)
	}
	s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web", Role: "other"})
	swapped := time.Duration(-1)
	start := s.clock.True()
	s.run(10*time.Minute, func(string) {
		if snap := s.m.Snapshot(); swapped < 0 && snap.Role.ARN == roleB && snap.State == snapshot.Ready {
			swapped = s.clock.True().Sub(start)
		}
	})
	if swapped < 0 || swapped > 5*time.Minute*11/10 {
		t.Fatalf("role swap took %v, want within the 5m recheck (+10%% jitter)", swapped)
	}
	if !strings.Contains(s.logs.String(), "role changed; rotating now") {
		t.Errorf("swap not logged")
	}
	// The role stops trusting the host for a while (AssumeRole fails),
	// then leaves the profile: no attempt is made, and none is failing.
	s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "other", MaxSession: 12 * time.Hour, Trusted: []string{"arn:aws:iam::123456789012:user/someone-else"}})
	s.m.refreshDue = s.clock.Monotonic()
	s.wake = s.clock.Monotonic()
	s.run(time.Minute, nil)
	if st := s.m.Status(); st.ConsecutiveFailures == 0 {
		t.Fatalf("the untrusted role did not fail: %+v", st)
	}
	s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web"})
	s.run(6*time.Minute, nil)
	if snap := s.m.Snapshot(); snap.State != snapshot.NoRole {
		t.Errorf("after detaching: state %v, want no-role", snap.State)
	}
	if st := s.m.Status(); st.ConsecutiveFailures != 0 {
		t.Errorf("after detaching: %d failures in a row, want none (no attempt is made)", st.ConsecutiveFailures)
	}
	s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web", Role: "app"})
	s.run(6*time.Minute, nil)
	if snap := s.m.Snapshot(); snap.State != snapshot.Ready || snap.Role.ARN != roleA {
		t.Errorf("after re-attaching: state %v role %s", snap.State, snap.Role.ARN)
	}
}

// TestShortCredentials: STS hands out credentials shorter than the
// configured window; they are replaced at half-life.
func TestShortCredentials(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour, window: 45 * time.Minute})
	s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "app", MaxSession: 12 * time.Hour, IssueFor: 20 * time.Minute})
	first := true
	s.run(48*time.Hour, func(phase string) {
		if first && s.m.Snapshot().State != snapshot.Ready {
			return
		}
		first = false
		if r := s.remaining(); r < 10*time.Minute {
			t.Fatalf("%s: %v left of 20-minute credentials", phase, r)
		}
	})
}

// TestClockSkewCorrected: the host's clock is 20 minutes ahead of STS's,
// which rejects the signature. The SDK measures the offset from the
// answer's Date header and keeps it on the client; the agent keeps that
// client, so the retry is signed with STS's time and succeeds, and the log
// says what to fix instead of blaming the source credentials.
func TestClockSkewCorrected(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	s.emu.SetClockSkew(-20 * time.Minute)
	s.run(time.Minute, nil)
	if snap := s.m.Snapshot(); snap.State != snapshot.Ready {
		t.Fatalf("state %v after a minute: %+v", snap.State, s.m.Status())
	}
	if n := s.stsCalls(); n != 2 {
		t.Errorf("%d AssumeRole calls, want 2: one refused for the clock, one signed with STS's time", n)
	}
	st := s.m.Status()
	if st.Failures != 1 || !strings.Contains(st.LastError, "Signature not yet current") || st.LastErrorClass != "transient" {
		t.Errorf("status after the refused call: %+v", st)
	}
	if !strings.Contains(s.logs.String(), "clock is more than 4 minutes off") {
		t.Errorf("the log does not name the clock:\n%s", s.logs)
	}
}

// TestForcedRefreshWithSkewedClock: a forced refresh reads the source
// credentials again with a new client, which has to learn the clock offset
// first; it asks again at once rather than report the first refusal.
func TestForcedRefreshWithSkewedClock(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	s.emu.SetClockSkew(-20 * time.Minute)
	s.run(time.Minute, nil)
	before := s.m.Status().Refreshes
	if err := s.m.forced(context.Background()); err != nil {
		t.Fatalf("forced refresh: %v", err)
	}
	if got := s.m.Status().Refreshes; got != before+1 {
		t.Errorf("%d refreshes after the forced one, want %d", got, before+1)
	}
}

// TestHostClockFarAhead: the host's clock is two hours ahead, so credentials
// for a one-hour session look expired on arrival. The agent serves them
// (STS holds them valid), says why, and does not ask STS again every
// second.
func TestHostClockFarAhead(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	s.clock.step(2 * time.Hour)
	s.run(time.Hour, nil)
	if snap := s.m.Snapshot(); snap.State != snapshot.Ready || s.remaining() <= 0 {
		t.Fatalf("state %v, %v left by STS's clock", snap.State, s.remaining())
	}
	if n := s.stsCalls(); n > 3 {
		t.Errorf("%d AssumeRole calls in an hour with a host clock two hours ahead", n)
	}
	if !strings.Contains(s.logs.String(), "already expired by the host's clock") {
		t.Errorf("the log does not name the clock:\n%s", s.logs)
	}
}

// TestClockJumps: a suspended host (the monotonic clock stood still while
// hours passed) refreshes within a minute of resuming; a wall clock stepped
// back two hours does not delay refreshes.
func TestClockJumps(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour})
	s.run(10*time.Minute, nil)
	s.clock.suspend(3 * time.Hour)
	if s.remaining() > 0 {
		t.Fatal("credentials should have expired during the suspension")
	}
	s.run(maxSleep+time.Second, nil)
	if r := s.remaining(); r < 50*time.Minute {
		t.Errorf("a minute after resuming: %v left, want fresh credentials", r)
	}

	s.clock.step(-2 * time.Hour)
	s.run(24*time.Hour, func(phase string) {
		if r := s.remaining(); r < healthyWindow(time.Hour) {
			t.Fatalf("%s after the wall clock stepped back: %v left", phase, r)
		}
	})
}

// TestDurationFallback: the role allows one hour but six are asked for;
// the agent falls back to one hour, says so once, and carries on.
func TestDurationFallback(t *testing.T) {
	s := newSim(t, simOptions{duration: 6 * time.Hour, roleMax: time.Hour})
	s.run(24*time.Hour, nil)
	st := s.m.Status()
	if st.State != snapshot.Ready || st.ConsecutiveFailures != 0 {
		t.Fatalf("status %+v", st)
	}
	if n := s.logs.count("maximum session duration is below session_duration"); n != 1 {
		t.Errorf("fallback warned %d times, want once", n)
	}
	if l := st.Expiration.Sub(st.LastRefresh); l <= time.Hour-time.Second || l > time.Hour {
		t.Errorf("lifetime after fallback = %v, want 1h", l)
	}
	// A reload that changes neither the role nor session_duration keeps the
	// fallback: no refused AssumeRole, no second warning.
	s.m.applyReload(s.settings(simOptions{target: profile.Target{RoleARN: roleA}, duration: 6 * time.Hour}))
	s.run(24*time.Hour, nil)
	if after := s.m.Status(); after.State != snapshot.Ready || after.Refreshes <= st.Refreshes {
		t.Fatalf("after the reload: %+v", after)
	}
	if n := s.logs.count("maximum session duration is below session_duration"); n != 1 {
		t.Errorf("fallback warned %d times after a reload, want once", n)
	}
}

// TestForcedRefreshFallsBack: `imds-agent refresh` with a session_duration
// the role refuses succeeds through the fallback to 1h, instead of
// reporting the refused first attempt.
func TestForcedRefreshFallsBack(t *testing.T) {
	s := newSim(t, simOptions{duration: time.Hour, roleMax: time.Hour})
	s.run(time.Minute, nil)
	s.m.applyReload(s.settings(simOptions{target: profile.Target{RoleARN: roleA}, duration: 2 * time.Hour}))
	before := s.m.Status().Refreshes
	if err := s.m.forced(context.Background()); err != nil {
		t.Fatalf("forced refresh: %v", err)
	}
	if st := s.m.Status(); st.Refreshes != before+1 || st.Expiration.Sub(st.LastRefresh) > time.Hour {
		t.Errorf("after the forced refresh: %+v", st)
	}
}

// TestDurationFallbackFollowsRole: the fallback to 1h belongs to the role
// that forced it; another role in the instance profile, with a higher
// maximum, gets session_duration again.
func TestDurationFallbackFollowsRole(t *testing.T) {
	s := newSim(t, simOptions{target: profile.Target{InstanceProfile: "web"}, duration: 6 * time.Hour, roleMax: time.Hour})
	s.emu.PutRole(awsemu.Role{Account: simAccount, Name: "other", MaxSession: 12 * time.Hour})
	s.run(time.Minute, nil)
	if st := s.m.Status(); st.Expiration.Sub(st.LastRefresh) > time.Hour {
		t.Fatalf("lifetime %v before the swap, want the 1h fallback", st.Expiration.Sub(st.LastRefresh))
	}
	s.emu.PutInstanceProfile(awsemu.InstanceProfile{Account: simAccount, Name: "web", Role: "other"})
	s.run(10*time.Minute, nil)
	st := s.m.Status()
	if st.Role.ARN != roleB || st.Expiration.Sub(st.LastRefresh) < 6*time.Hour-time.Second {
		t.Errorf("after the swap: role %s, lifetime %v, want %s for 6h", st.Role.ARN, st.Expiration.Sub(st.LastRefresh), roleB)
	}
}

// TestNoRole: nothing attached means "no role", at once, and no AWS calls.
func TestNoRole(t *testing.T) {
	s := newSim(t, simOptions{})
	s.m = New(Settings{ProfileRecheck: time.Minute}, Options{Clock: s.clock})
	if s.m.Snapshot().State != snapshot.NoRole {
		t.Fatalf("state %v", s.m.Snapshot().State)
	}
	s.run(time.Hour, nil)
	select {
	case <-s.m.Ready():
	default:
		t.Error("not ready without a role")
	}
	if s.emu.Calls("AssumeRole")+s.emu.Calls("GetInstanceProfile") != 0 {
		t.Error("AWS called without a role")
	}
}

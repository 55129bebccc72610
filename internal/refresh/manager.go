// Package refresh owns the credential lifecycle: connecting to STS and IAM
// with the host's source credentials, resolving the instance profile,
// AssumeRole, the refresh schedule with jitter, backoff on failure, and the
// credential snapshot the metadata handler serves. One goroutine (Run) does
// all of it, so at most one AssumeRole is ever in flight and readers never
// wait on STS.
package refresh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"

	"github.com/imds-agent/imds-agent/internal/profile"
	"github.com/imds-agent/imds-agent/internal/snapshot"
)

// Schedule and backoff parameters. The refresh window itself comes from
// Settings.
const (
	// autoWindowCap: with refresh_before_expiry auto, credentials are
	// replaced when min(30m, half their lifetime) remains.
	autoWindowCap = 30 * time.Minute
	// jitterFraction of the time until a refresh is due is shaved off at
	// random, so hosts started together do not call STS together.
	jitterFraction = 0.1
	// callMargin is how much earlier than the window a refresh starts, to
	// absorb STS latency (and STS's whole-second expirations).
	callMargin = 5 * time.Second
	// minRefreshInterval keeps very short-lived credentials from turning
	// the schedule into a busy loop.
	minRefreshInterval = time.Second
	// maxSleep bounds how long the loop sleeps, so a wall-clock jump (a
	// resumed VM, a stepped clock) is noticed within a minute.
	maxSleep = time.Minute
	// Backoff bases per failure class; every class is capped at backoffCap.
	transientBase = time.Second
	throttledBase = 5 * time.Second
	terminalBase  = 30 * time.Second
	backoffCap    = 5 * time.Minute
	// fallbackDuration is asked for when the role refuses a longer session.
	fallbackDuration = time.Hour
	// defaultCallTimeout bounds one STS or IAM call.
	defaultCallTimeout = 15 * time.Second
)

// Clock is the manager's view of time: the wall clock, which credential
// expirations are measured against, and a monotonic clock that does not jump,
// which schedules are measured on.
type Clock interface {
	Now() time.Time
	Monotonic() time.Duration
}

type systemClock struct{ origin time.Time }

// SystemClock is the real clock.
func SystemClock() Clock { return systemClock{origin: time.Now()} }

func (c systemClock) Now() time.Time           { return time.Now().Round(0) }
func (c systemClock) Monotonic() time.Duration { return time.Since(c.origin) }

// Clients are the AWS clients built from the host's source credentials.
type Clients struct {
	STS stscreds.AssumeRoleAPIClient
	IAM profile.IAMAPI
}

// Settings are what the configuration says about credentials. A reload
// replaces them as a whole.
type Settings struct {
	Target profile.Target
	// Connect builds clients from the source credentials. It is called at
	// start, after a failure, on a forced refresh and on reload, so rotated
	// source credentials are picked up.
	Connect     func(ctx context.Context) (Clients, error)
	SessionName string // the instance id: CloudTrail shows assumed-role/ROLE/i-…
	ExternalID  string
	Duration    time.Duration
	// Window is how long before expiry credentials are replaced; 0 = auto.
	Window         time.Duration
	ProfileRecheck time.Duration
}

// Options are the manager's collaborators.
type Options struct {
	Clock       Clock
	Rand        func() float64 // uniform in [0,1); jitter
	Logger      *slog.Logger
	CallTimeout time.Duration
	// OnRefresh, if set, observes every AssumeRole attempt.
	OnRefresh func(err error, class Class, took time.Duration)
	// OnLookupFailure, if set, observes every failed look-up of the
	// instance profile's role (while it fails, no AssumeRole is tried).
	OnLookupFailure func(class Class)
	// OnStatus, if set, is called (on the manager's goroutine; it must not
	// block) whenever the status changes.
	OnStatus func(Status)
}

// Status is what operators see.
type Status struct {
	Target              string
	State               snapshot.State
	Role                snapshot.Role
	KeySuffix           string
	Expiration          time.Time
	LastRefresh         time.Time
	NextRefresh         time.Time
	LastError           string
	LastErrorClass      string
	LastErrorCode       string // as iam/info shows it: no text from outside
	LastErrorAt         time.Time
	ConsecutiveFailures int
	Refreshes           uint64
	Failures            uint64 // failed AssumeRole attempts
	LookupFailures      uint64 // failed look-ups of the instance profile's role
}

// Manager runs the credential lifecycle.
type Manager struct {
	opts Options
	log  *slog.Logger

	snap   atomic.Pointer[snapshot.Snapshot]
	status atomic.Pointer[Status]
	active atomic.Int64 // monotonic nanoseconds of the loop's last iteration
	ready  chan struct{}
	once   sync.Once

	force   chan chan error
	reload  chan struct{}
	stopped chan struct{} // closed when Run returns
	mu      sync.Mutex    // guards pending
	pending *Settings

	// Loop state, owned by the goroutine in Run.
	s        Settings
	clients  *Clients
	role     snapshot.Role
	attached bool
	resolved bool
	retarget bool // a reload changed the target: resolve it now
	// roleStale: the role was resolved for the target before a reload,
	// and the new target's look-up has not answered yet. It is not
	// renewed: its credentials are served while they are valid, then
	// nothing until the new target's role is obtained.
	roleStale      bool
	creds          *snapshot.Credentials
	credsRole      string    // ARN of the role creds belong to
	credsAt        time.Time // wall time they were obtained
	lifetime       time.Duration
	wallCheck      bool // the wall clock may bring the refresh forward (refreshIsDue)
	refreshDue     time.Duration
	profileDue     time.Duration
	failures       int
	profileFails   int
	lookupFailed   uint64        // look-ups failed in all
	rechecking     bool          // the target has resolved: a look-up of it is a recheck
	goneAnswers    int           // look-ups in a row answered "no such instance profile"
	goneSince      time.Duration // when the first of them was (monotonic)
	lastErr        error
	lastClass      Class
	lastErrAt      time.Time
	duration       time.Duration // asked of STS; may fall back to 1h
	warnedDuration bool
	refreshes      uint64
	failed         uint64
}

// New returns a manager that has not started; Snapshot reports Pending (or
// no role) until Run obtains credentials.
func New(s Settings, o Options) *Manager {
	if o.Clock == nil {
		o.Clock = SystemClock()
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = defaultCallTimeout
	}
	m := &Manager{
		opts:    o,
		log:     o.Logger,
		ready:   make(chan struct{}),
		force:   make(chan chan error),
		reload:  make(chan struct{}, 1),
		stopped: make(chan struct{}),
	}
	m.apply(s)
	if s.Target.RoleARN != "" {
		m.role, _ = profile.RoleFromARN(s.Target.RoleARN)
	}
	if s.Target.None() {
		m.publish(snapshot.None())
	} else {
		m.publish(snapshot.NewPending(m.role))
	}
	m.publishStatus()
	return m
}

// Snapshot returns the current credential snapshot. It never blocks.
func (m *Manager) Snapshot() *snapshot.Snapshot { return m.snap.Load() }

// Status returns the operator-facing state.
func (m *Manager) Status() Status { return *m.status.Load() }

// Ready is closed once the first definitive answer exists: credentials, or
// "no role attached".
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// Reload replaces the settings. It never blocks; the loop applies the
// newest settings as soon as it is free, re-resolving the profile, and a
// changed role is rotated to at once.
func (m *Manager) Reload(s Settings) {
	m.mu.Lock()
	m.pending = &s
	m.mu.Unlock()
	select {
	case m.reload <- struct{}{}:
	default:
	}
}

// Refresh reconnects with the source credentials, re-resolves the profile
// and obtains new credentials now, for an operator who just rotated the
// source credentials. It returns the outcome.
func (m *Manager) Refresh(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case m.force <- reply:
	case <-m.stopped:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-m.stopped:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ErrStopped is returned by Refresh once the manager has stopped.
var ErrStopped = errors.New("the credential manager is stopping")

// LastActive returns the monotonic time (Clock.Monotonic) at which the loop
// last ran; a watchdog uses it to tell a sleeping loop from a wedged one.
func (m *Manager) LastActive() time.Duration { return time.Duration(m.active.Load()) }

// MaxInactive is the longest the loop legitimately goes without running: a
// full sleep plus a profile look-up and an AssumeRole at their timeouts.
func (m *Manager) MaxInactive() time.Duration {
	return maxSleep + 2*m.opts.CallTimeout + 30*time.Second
}

// Run drives the lifecycle until ctx is done.
func (m *Manager) Run(ctx context.Context) error {
	defer close(m.stopped)
	for {
		m.active.Store(int64(m.opts.Clock.Monotonic()))
		wait := m.step(ctx)
		m.active.Store(int64(m.opts.Clock.Monotonic()))
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		case reply := <-m.force:
			timer.Stop()
			reply <- m.forced(ctx)
		case <-m.reload:
			timer.Stop()
			m.mu.Lock()
			s := m.pending
			m.pending = nil
			m.mu.Unlock()
			if s != nil {
				m.applyReload(*s)
			}
		}
	}
}

// step does whatever work is due and returns how long to sleep.
func (m *Manager) step(ctx context.Context) time.Duration {
	mono := m.opts.Clock.Monotonic()
	if m.retarget || m.roleStale || m.s.Target.NeedsIAM() || !m.resolved {
		if m.retarget || mono >= m.profileDue {
			m.retarget = false
			m.resolve(ctx)
			mono = m.opts.Clock.Monotonic()
		}
	}
	if m.attached && !m.roleStale && m.refreshIsDue(mono) {
		m.refresh(ctx)
	}
	if m.roleStale {
		m.expireStale()
	}
	m.expireOtherRole()
	m.publishStatus()
	return m.sleepFor()
}

// expireOtherRole stops serving the credentials of the role before a
// change of role (the instance profile's, or a reload's) once they have
// expired: they are not the new role's, and are never renewed. The new
// role's are awaited (503), with the failure that keeps them away.
func (m *Manager) expireOtherRole() {
	if m.creds == nil || m.credsRole == m.role.ARN || m.opts.Clock.Now().Before(m.creds.Expiration) {
		return
	}
	if snap := m.Snapshot(); snap.State != snapshot.Ready || snap.Role.ARN != m.credsRole {
		return
	}
	m.log.Warn("the credentials of the role before the change have expired; none are served until the new role's are obtained",
		"role", m.credsRole, "new_role", m.role.ARN)
	m.publish(m.awaiting(m.role))
}

// awaiting is the snapshot served while role's credentials are awaited:
// none, with the last failure (what keeps them away) in iam/info.
func (m *Manager) awaiting(role snapshot.Role) *snapshot.Snapshot {
	next := snapshot.NewPending(role)
	if m.lastErr != nil {
		code, msg := failureCode(m.lastClass, m.lastErr)
		next = next.WithFailure(code, msg, m.lastErrAt)
	}
	return next
}

// expireStale stops serving the credentials of the role before a reload
// once they have expired: they were never to be renewed, and the role the
// new target names is not known yet.
func (m *Manager) expireStale() {
	snap := m.Snapshot()
	if snap.State != snapshot.Ready || !snap.Expired(m.opts.Clock.Now()) {
		return
	}
	m.log.Warn("the credentials of the role before the reload have expired; none are served until the new target's role is obtained",
		"role", m.credsRole, "target", m.s.Target.String())
	m.publish(m.awaiting(snapshot.Role{}))
	m.role, m.attached, m.roleStale = snapshot.Role{}, false, false
}

// refreshIsDue: the schedule (monotonic) says so, or, while STS is
// healthy, the wall clock says the credentials are inside the window (the
// clock jumped forward, or the host was suspended) when it did not say so
// as they arrived.
func (m *Manager) refreshIsDue(mono time.Duration) bool {
	if mono >= m.refreshDue {
		return true
	}
	if m.creds == nil || m.failures > 0 || !m.wallCheck {
		return false
	}
	return !m.opts.Clock.Now().Before(m.creds.Expiration.Add(-m.window(m.lifetime)))
}

func (m *Manager) sleepFor() time.Duration {
	mono := m.opts.Clock.Monotonic()
	wait := maxSleep
	if m.attached && !m.roleStale {
		wait = min(wait, m.refreshDue-mono)
	}
	if m.s.Target.NeedsIAM() || !m.resolved || m.roleStale {
		wait = min(wait, m.profileDue-mono)
	}
	if m.creds != nil && (m.roleStale || m.credsRole != m.role.ARN) {
		// Another role's credentials stop being served when they expire.
		if left := m.creds.Expiration.Sub(m.opts.Clock.Now()); left > 0 {
			wait = min(wait, left)
		}
	}
	return max(wait, 0)
}

// resolve looks the role up. A changed role is rotated to at once; a
// detached one stops being served; an error keeps the previous answer, and
// is returned.
func (m *Manager) resolve(ctx context.Context) error {
	mono := m.opts.Clock.Monotonic()
	role, attached, err := m.lookup(ctx)
	if err != nil && ctx.Err() != nil {
		return err // stopping: not a failure
	}
	if err != nil {
		err = &lookupError{err}
		m.profileFails++
		m.lookupFailed++
		class := Classify(err)
		if m.opts.OnLookupFailure != nil {
			m.opts.OnLookupFailure(class)
		}
		delay := m.backoff(m.profileFails, class)
		if m.rechecking {
			// A recheck of a target that has resolved: what it gave is
			// served as usual meanwhile. It is tried again at its own
			// pace, not faster: IAM's quota is the account's, shared by
			// the fleet. A first look-up backs off as a refresh does.
			delay = max(delay, jittered(m.s.ProfileRecheck, m.opts.Rand()))
		}
		m.profileDue = mono + delay
		m.noteFailure(err, class)
		m.log.Error("resolving the instance profile failed", "target", m.s.Target.String(), "error", err,
			"class", class.String(), "failures", m.profileFails, "retry_in", delay.Round(time.Millisecond))
		m.noteGone(err)
		switch code, msg := failureCode(class, err); {
		case !m.resolved:
			m.publish(snapshot.NewPending(m.role).WithFailure(code, msg, m.opts.Clock.Now()))
		case m.roleStale && m.Snapshot().State == snapshot.Ready:
			// The old role's credentials stay while valid (expireStale),
			// with the reason the new target is not served in iam/info.
			m.publish(m.Snapshot().WithFailure(code, msg, m.opts.Clock.Now()))
		}
		return err
	}
	m.roleStale = false
	m.rechecking = true
	m.goneAnswers = 0
	if m.profileFails > 0 {
		m.log.Info("instance profile resolved again", "target", m.s.Target.String(), "after_failures", m.profileFails)
	}
	m.profileFails = 0
	m.profileDue = mono + jittered(m.s.ProfileRecheck, m.opts.Rand())
	first := !m.resolved
	m.resolved = true
	switch {
	case !attached:
		if m.attached || first {
			m.log.Warn("no role attached: the iam paths answer 404, as on EC2", "target", m.s.Target.String())
		}
		m.attached, m.role, m.creds, m.credsRole = false, role, nil, ""
		m.failures = 0 // nothing is attempted without a role
		m.publish(snapshot.None())
		m.signalReady()
	case !m.attached || role.ARN != m.role.ARN:
		if m.attached {
			m.log.Warn("the instance profile's role changed; rotating now", "from", m.role.ARN, "to", role.ARN)
		} else {
			m.log.Info("role resolved", "role", role.ARN, "instance_profile", role.ProfileARN)
		}
		m.attached, m.role = true, role
		m.refreshDue = mono
		m.failures = 0
		m.duration, m.warnedDuration = m.s.Duration, false // the new role's limit may differ
	default:
		if role != m.role {
			m.role = role
			// The same role under another profile (or a profile made
			// again): what is served is relabelled, unless it is still
			// the credentials of the role before a change, which keep
			// their own role's name until they expire.
			if m.creds != nil && m.credsRole == role.ARN {
				m.publish(snapshot.New(m.role, *m.creds, m.credsAt))
			}
		}
	}
	return nil
}

// noteGone counts the look-ups in a row that IAM answered it has no such
// instance profile. Once a recheck's worth of time has passed since the
// first (so that a refresh or reload asked for meanwhile does not count
// twice), the profile that resolved before is taken as deleted (a teardown
// removes the role, then deletes the profile, often within one recheck):
// like a profile whose role was removed, it has none to serve, and the
// role it had is no longer renewed. One answer is not enough: the same
// answer comes from source credentials of another account (keys rotated
// to the wrong ones, say), and what is served stays while that is put
// right. The failure stays in status.
func (m *Manager) noteGone(err error) {
	if !m.rechecking || !errors.Is(err, profile.ErrNoSuchProfile) {
		m.goneAnswers = 0
		return
	}
	mono := m.opts.Clock.Monotonic()
	if m.goneAnswers++; m.goneAnswers == 1 {
		m.goneSince = mono
	}
	recheck := time.Duration(float64(m.s.ProfileRecheck) * (1 - jitterFraction))
	if m.goneAnswers < 2 || mono-m.goneSince < recheck || !m.attached {
		return
	}
	m.log.Warn("the instance profile is gone (IAM answered twice that it has none by that name): serving no role, as for a profile without one, until it is back",
		"target", m.s.Target.String(), "role", m.role.ARN)
	m.attached, m.role, m.creds, m.credsRole, m.roleStale = false, snapshot.Role{}, nil, "", false
	m.failures = 0 // no AssumeRole is attempted without a role
	m.publish(snapshot.None())
}

func (m *Manager) lookup(ctx context.Context) (snapshot.Role, bool, error) {
	if !m.s.Target.NeedsIAM() {
		return profile.Resolve(ctx, nil, m.s.Target)
	}
	c, err := m.connect(ctx)
	if err != nil {
		return snapshot.Role{}, false, err
	}
	cctx, cancel := context.WithTimeout(ctx, m.opts.CallTimeout)
	defer cancel()
	role, attached, err := profile.Resolve(cctx, c.IAM, m.s.Target)
	if err != nil {
		m.dropClients(err)
	}
	return role, attached, err
}

func (m *Manager) connect(ctx context.Context) (*Clients, error) {
	if m.clients != nil {
		return m.clients, nil
	}
	c, err := m.s.Connect(ctx)
	if err != nil {
		return nil, err
	}
	m.clients = &c
	return m.clients, nil
}

// refresh calls AssumeRole once and publishes the outcome.
func (m *Manager) refresh(ctx context.Context) {
	start := m.opts.Clock.Monotonic()
	creds, err := m.assumeRole(ctx)
	took := m.opts.Clock.Monotonic() - start
	if m.opts.OnRefresh != nil {
		m.opts.OnRefresh(err, Classify(err), took)
	}
	now, mono := m.opts.Clock.Now(), m.opts.Clock.Monotonic()
	if err == nil {
		m.succeeded(creds, now, mono)
		return
	}
	if ctx.Err() != nil {
		return // stopping: not a failure
	}
	class := Classify(err)
	if class == DurationTooLong && m.duration > fallbackDuration {
		if !m.warnedDuration {
			m.log.Warn("the role's maximum session duration is below session_duration; asking for 1h instead",
				"role", m.role.ARN, "session_duration", m.duration, "error", err)
			m.warnedDuration = true
		}
		m.duration = fallbackDuration
		m.refreshDue = mono
		return
	}
	if class == DurationTooLong {
		class = Terminal // even one hour is refused: nothing to fall back to
	}
	m.failures++
	m.failed++
	delay := m.backoff(m.failures, class)
	m.refreshDue = mono + delay
	m.noteFailure(err, class)
	code, msg := failureCode(class, err)
	attrs := []any{"role", m.role.ARN, "error", err, "class", class.String(),
		"failures", m.failures, "retry_in", delay.Round(time.Millisecond)}
	// The credentials served stay: the role's own, even once expired (with
	// their true expiration), and those of the role before a change (a
	// reload, or another role in the instance profile) while they are
	// valid, so that a new role that cannot be assumed yet does not cut
	// every client off before the old credentials would have run out.
	if m.creds != nil && (m.credsRole == m.role.ARN || now.Before(m.creds.Expiration)) {
		attrs = append(attrs, "credentials_expire_in", m.creds.Expiration.Sub(now).Round(time.Second))
		if m.credsRole != m.role.ARN {
			attrs = append(attrs, "serving_role", m.credsRole)
		}
		m.publish(m.Snapshot().WithFailure(code, msg, now))
	} else {
		m.publish(snapshot.NewPending(m.role).WithFailure(code, msg, now))
	}
	if class == Terminal {
		m.log.Error("obtaining role credentials failed; this needs a change in IAM or in the source credentials", attrs...)
	} else {
		m.log.Warn("obtaining role credentials failed", attrs...)
	}
	m.dropClients(err)
}

// dropClients makes the next call reconnect, reading the source credentials
// again (they may have been rotated), unless err says the host's clock is
// off: the clients then keep the offset the SDK measured from STS's answer,
// and the next call, signed with STS's time, can succeed. Nor after
// throttling: the source credentials were accepted, and reading them again
// would cost a source whose credentials come from an AWS call of its own
// (web identity and chained roles call STS, SSO its portal) one more call
// for every retry.
func (m *Manager) dropClients(err error) {
	if Classify(err) == Throttled {
		return
	}
	if clockSkew(err) {
		m.log.Error("the host's clock is more than 4 minutes off from the AWS endpoint's: requests are signed with the endpoint's time from the next attempt, but the credentials' expiry is judged by this clock; fix the host's time synchronisation (chrony, systemd-timesyncd)",
			"host_time", m.opts.Clock.Now().UTC().Format(time.RFC3339), "error", err)
		return
	}
	m.clients = nil
}

func (m *Manager) assumeRole(ctx context.Context) (snapshot.Credentials, error) {
	c, err := m.connect(ctx)
	if err != nil {
		return snapshot.Credentials{}, err
	}
	s := m.s
	p := stscreds.NewAssumeRoleProvider(c.STS, m.role.ARN, func(o *stscreds.AssumeRoleOptions) {
		o.RoleSessionName = s.SessionName
		o.Duration = m.duration
		if s.ExternalID != "" {
			o.ExternalID = &s.ExternalID
		}
	})
	cctx, cancel := context.WithTimeout(ctx, m.opts.CallTimeout)
	defer cancel()
	v, err := p.Retrieve(cctx)
	if err != nil {
		return snapshot.Credentials{}, fmt.Errorf("sts:AssumeRole %s: %w", m.role.ARN, err)
	}
	if v.AccessKeyID == "" || v.SecretAccessKey == "" || v.SessionToken == "" || v.Expires.IsZero() {
		return snapshot.Credentials{}, fmt.Errorf("sts:AssumeRole %s: %w", m.role.ARN, errIncomplete)
	}
	return snapshot.Credentials{
		AccessKeyID:     v.AccessKeyID,
		SecretAccessKey: v.SecretAccessKey,
		SessionToken:    v.SessionToken,
		Expiration:      v.Expires.UTC(),
	}, nil
}

var errIncomplete = errors.New("the response lacks part of the credentials")

func (m *Manager) succeeded(creds snapshot.Credentials, now time.Time, mono time.Duration) {
	if m.failures > 0 {
		m.log.Info("role credentials obtained again", "role", m.role.ARN, "after_failures", m.failures)
	}
	m.failures = 0
	m.refreshes++
	m.creds, m.credsAt, m.credsRole = &creds, now, m.role.ARN
	m.publish(snapshot.New(m.role, creds, now))
	// STS set the expiration by its own clock; a host clock running behind
	// would make the credentials look longer-lived than they are, so the
	// lifetime is at most what was asked for.
	lifetime := min(creds.Expiration.Sub(now), m.duration)
	if lifetime <= 0 {
		// Expired on arrival by this host's clock, which must be ahead of
		// STS's by more than the session: refreshing sooner would bring
		// the same, so the schedule follows STS's view (the whole session).
		m.log.Error("the credentials are already expired by the host's clock, which is ahead of STS's by more than the session; fix the host's time synchronisation",
			"host_time", now.UTC().Format(time.RFC3339), "expires", creds.Expiration.Format(time.RFC3339))
		lifetime = m.duration
	}
	m.lifetime = lifetime
	w := m.window(lifetime)
	// Credentials that arrive inside their window by the wall clock mean a
	// clock ahead of STS's, not a jump since: the wall clock would ask for
	// a refresh at every wake-up, so only the schedule counts for them.
	m.wallCheck = now.Before(creds.Expiration.Add(-w))
	// Start a little early, so the credentials still have the whole window
	// left when the call returns.
	interval := max(lifetime-w-min(callMargin, lifetime/100), 0)
	next := max(time.Duration(float64(interval)*(1-jitterFraction*m.opts.Rand())), minRefreshInterval)
	m.refreshDue = mono + next
	m.log.Info("role credentials refreshed", "role", m.role.ARN, "access_key_suffix", snapshot.Suffix(creds.AccessKeyID),
		"expires", creds.Expiration.Format(time.RFC3339), "next_refresh_in", next.Round(time.Second))
	m.signalReady()
}

// window is how long before expiry credentials of the given lifetime are
// replaced: the configured window, or auto = min(30m, half the lifetime);
// credentials shorter than a configured window are replaced at half-life.
func (m *Manager) window(lifetime time.Duration) time.Duration {
	if w := m.s.Window; w > 0 && w < lifetime {
		return w
	}
	return min(autoWindowCap, lifetime/2)
}

// backoff is capped exponential backoff: full jitter for transient
// failures, at least half the step for throttling and terminal ones.
func (m *Manager) backoff(n int, c Class) time.Duration {
	base := transientBase
	switch c {
	case Throttled:
		base = throttledBase
	case Terminal:
		base = terminalBase
	}
	step := backoffCap
	if n < 30 {
		step = min(backoffCap, time.Duration(float64(base)*math.Pow(2, float64(n-1))))
	}
	r := m.opts.Rand()
	if c == Transient {
		return max(time.Duration(float64(step)*r), 100*time.Millisecond)
	}
	return step/2 + time.Duration(float64(step/2)*r)
}

func (m *Manager) noteFailure(err error, c Class) {
	m.lastErr, m.lastClass, m.lastErrAt = err, c, m.opts.Clock.Now()
}

// forced serves Refresh: reconnect, re-resolve, AssumeRole now.
func (m *Manager) forced(ctx context.Context) error {
	m.log.Info("refresh requested")
	m.clients = nil
	if m.retarget || m.roleStale || m.s.Target.NeedsIAM() || !m.resolved {
		m.retarget = false
		// A look-up that fails keeps the role it knew, if any: that
		// role's credentials are renewed, unless it belongs to the
		// target before a reload.
		if err := m.resolve(ctx); err != nil && (!m.attached || m.roleStale) {
			m.publishStatus()
			if ctx.Err() != nil {
				return ErrStopped
			}
			return err
		}
	}
	if !m.attached {
		m.publishStatus()
		return nil
	}
	m.refreshDue = m.opts.Clock.Monotonic()
	m.failures = 0
	before, asked := m.refreshes, m.duration
	m.refresh(ctx)
	if m.refreshes == before && (m.duration != asked || clockSkew(m.lastErr)) && ctx.Err() == nil {
		// The role's limit made it fall back to 1h, or the fresh client
		// has just learnt the host's clock offset: ask again now, as the
		// loop would.
		m.refresh(ctx)
	}
	m.publishStatus()
	if m.refreshes == before {
		if ctx.Err() != nil {
			return ErrStopped // the call was cut short, not failed
		}
		if m.lastErr == nil {
			return errors.New("no credentials were obtained")
		}
		return m.lastErr
	}
	return nil
}

func (m *Manager) apply(s Settings) {
	m.s = s
	m.duration = s.Duration
	m.warnedDuration = false
}

func (m *Manager) applyReload(s Settings) {
	old := m.s
	duration, warned := m.duration, m.warnedDuration
	m.apply(s)
	if s.Duration == old.Duration && s.Target == old.Target {
		// The role's limit that made the agent fall back to 1h still
		// holds: asking for session_duration again would only fail again.
		m.duration, m.warnedDuration = duration, warned
	}
	// A reload is the operator's answer to a failure as often as not (new
	// source credentials, a fixed profile): the look-up and, after a
	// failed AssumeRole, the call are tried again at once rather than at
	// the end of the backoff.
	m.clients = nil
	m.profileDue = m.opts.Clock.Monotonic()
	if m.failures > 0 {
		m.refreshDue = m.profileDue
	}
	if s.Target != old.Target {
		m.rechecking = false
		m.log.Info("reload: the attached role changed", "from", old.Target.String(), "to", s.Target.String())
		if s.Target.None() {
			m.resolved, m.attached, m.roleStale, m.creds, m.credsRole = true, false, false, nil, ""
			m.role, m.failures, m.profileFails = snapshot.Role{}, 0, 0
			m.publish(snapshot.None())
			m.signalReady() // "no role" is a final answer
			return
		}
		// Resolve the new target at once; until its role's credentials
		// are obtained, what is served now stays while it is valid (a
		// failed look-up or AssumeRole must not drop credentials), and
		// the old role is not renewed.
		m.retarget = true
		m.roleStale = m.attached
		return
	}
	spread := m.opts.Clock.Monotonic() + time.Duration(float64(reloadSpread)*m.opts.Rand())
	switch {
	case m.creds == nil || m.failures > 0:
		// Nothing to reschedule, or a retry due at once (above).
	case s.SessionName != old.SessionName || s.ExternalID != old.ExternalID:
		// New credentials within reloadSpread, or sooner if due sooner:
		// CloudTrail names the session after the instance id, and a
		// wrong external id shows at once. Spread, since a fleet takes a
		// new file together.
		m.refreshDue = min(m.refreshDue, spread)
	case s.Window != old.Window || s.Duration != old.Duration:
		// Reschedule from the current credentials under the new window,
		// with the jitter of a scheduled refresh: hosts that got their
		// credentials together (a fleet's boot or refresh) and take the
		// same new file would otherwise call STS in the same second.
		m.refreshDue = spread
		if w := m.window(m.lifetime); m.opts.Clock.Now().Before(m.creds.Expiration.Add(-w)) {
			until := m.creds.Expiration.Add(-w).Sub(m.opts.Clock.Now())
			m.refreshDue = m.opts.Clock.Monotonic() + time.Duration(float64(until)*(1-jitterFraction*m.opts.Rand()))
		}
	}
}

func (m *Manager) publish(s *snapshot.Snapshot) { m.snap.Store(s) }

func (m *Manager) signalReady() { m.once.Do(func() { close(m.ready) }) }

func (m *Manager) publishStatus() {
	snap := m.Snapshot()
	// The role whose credentials are served, with their key and expiry;
	// while none are, the role being assumed. During a change of role
	// the old one is served until the new one can be assumed, and the
	// failure says why.
	role := snap.Role
	if role.ARN == "" {
		role = m.role
	}
	st := &Status{
		Target:              m.s.Target.String(),
		State:               snap.State,
		Role:                role,
		KeySuffix:           snap.KeySuffix,
		Expiration:          snap.Expiration,
		ConsecutiveFailures: max(m.failures, m.profileFails),
		Refreshes:           m.refreshes,
		Failures:            m.failed,
		LookupFailures:      m.lookupFailed,
	}
	if m.creds != nil {
		st.LastRefresh = m.credsAt
	}
	if m.attached {
		st.NextRefresh = m.opts.Clock.Now().Add(m.refreshDue - m.opts.Clock.Monotonic())
	}
	if m.lastErr != nil {
		st.LastError, st.LastErrorClass, st.LastErrorAt = m.lastErr.Error(), m.lastClass.String(), m.lastErrAt
		st.LastErrorCode, _ = failureCode(m.lastClass, m.lastErr)
	}
	old := m.status.Swap(st)
	if m.opts.OnStatus != nil && (old == nil || old.State != st.State || old.KeySuffix != st.KeySuffix ||
		old.LastError != st.LastError || old.ConsecutiveFailures != st.ConsecutiveFailures || old.Role.ARN != st.Role.ARN) {
		m.opts.OnStatus(*st)
	}
}

// reloadSpread spreads the AssumeRole a reload asks for at once over a
// fleet that takes the new file together.
const reloadSpread = time.Minute

// jittered returns d varied by up to ±10%.
func jittered(d time.Duration, r float64) time.Duration {
	return time.Duration(float64(d) * (1 - jitterFraction + 2*jitterFraction*r))
}

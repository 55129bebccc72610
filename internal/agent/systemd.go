package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"github.com/imds-agent/imds-agent/internal/refresh"
	"github.com/imds-agent/imds-agent/internal/snapshot"
)

// StartupWait bounds how long READY=1 waits for the first credentials:
// units ordered after the agent then find working credentials, but a dead
// STS does not hold the boot.
const StartupWait = 20 * time.Second

// notify sends a state to systemd. Outside systemd (no NOTIFY_SOCKET) it
// does nothing. The environment variable is kept, so watchdog pings keep
// working after the first message.
func (a *Agent) notify(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		a.log.Debug("sd_notify failed", "error", err)
	}
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Sec*1_000_000 + ts.Nsec/1_000
}

// statusLine is the one-line STATUS= systemctl shows. Every user of the
// host may read it, so a failure appears as its code (as iam/info gives
// it), never as its text: STS's names the source user and account, a
// credential helper's may say more. The text is for `imds-agent status`
// (root and the agent's group) and the journal. reloadRefused is when a
// reload of the configuration file was last refused, zero if the last one
// took.
func statusLine(st refresh.Status, reloadRefused, now time.Time) string {
	line := credentialsLine(st, now)
	if !reloadRefused.IsZero() {
		line += "; configuration reload refused " + reloadRefused.UTC().Format(time.RFC3339) + ", the running one stays (imds-agent status says more)"
	}
	return line
}

// credentialsLine is the STATUS= line's account of the credentials.
func credentialsLine(st refresh.Status, now time.Time) string {
	st.LastError = ""
	if st.LastErrorCode != "" {
		st.LastError = st.LastErrorCode + " (imds-agent status says more)"
	}
	switch st.State {
	case snapshot.NoRole:
		return "serving metadata; no role attached (" + st.Target + ")"
	case snapshot.Pending:
		if st.LastError != "" {
			return fmt.Sprintf("waiting for credentials of %s; %d failures, last: %s", st.Target, st.ConsecutiveFailures, st.LastError)
		}
		return "waiting for credentials of " + st.Target
	}
	// Times are absolute: the line is sent when the state changes, and
	// systemctl shows it until the next change.
	verb := "expire"
	if !now.Before(st.Expiration) {
		verb = "EXPIRED"
	}
	line := fmt.Sprintf("serving role %s; credentials %s %s", st.Role.Name, verb, st.Expiration.UTC().Format(time.RFC3339))
	if st.ConsecutiveFailures > 0 {
		line += fmt.Sprintf("; refresh failing (%d): %s", st.ConsecutiveFailures, st.LastError)
	}
	return line
}

// statusLine is the STATUS= line for st and the last reload, now.
func (a *Agent) statusLine(st refresh.Status) string {
	a.mu.Lock()
	refused := a.reload.failedAt
	a.mu.Unlock()
	return statusLine(st, refused, a.o.Clock.Now())
}

// superviseSystemd sends READY=1 once listening and holding credentials
// (or once StartupWait has passed, saying what is missing), keeps STATUS=
// current, and pings the watchdog while the agent is really healthy.
func (a *Agent) superviseSystemd(ctx context.Context) error {
	select {
	case <-a.manager.Ready():
	case <-time.After(StartupWait):
	case <-ctx.Done():
		return nil
	}
	if !a.notifyReady() {
		return nil // stopping
	}
	a.memory.releaseNow(true) // what starting up left behind
	var (
		tick    <-chan time.Time
		timeout time.Duration
		failed  int // health checks failed in a row
	)
	if interval, err := daemon.SdWatchdogEnabled(false); err == nil && interval > 0 {
		period, t := watchdogSchedule(interval)
		ticker := time.NewTicker(period)
		defer ticker.Stop()
		tick, timeout = ticker.C, t
		a.log.Info("watchdog enabled", "interval", interval, "check_every", period)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case st := <-a.statusChanged:
			a.notify("STATUS=" + a.statusLine(st))
		case <-tick:
			if err := a.healthy(ctx, timeout); err != nil {
				failed++
				a.log.Error("health check failed; not pinging the watchdog", "error", err,
					"failed_in_a_row", failed, "restart_when_failed_in_a_row", watchdogMisses+1)
				continue
			}
			if failed > 0 {
				a.log.Info("health check passed again; pinging the watchdog", "failed_in_a_row", failed)
				failed = 0
			}
			a.notify("WATCHDOG=1")
		}
	}
}

// watchdogMisses is how many health checks in a row may fail without a
// restart: one slow answer (a stalled disk, a burst of load) must not cost
// every client its connection and the agent an AssumeRole, while an agent
// that stays unhealthy is still restarted within systemd's watchdog
// interval.
const watchdogMisses = 2

// maxProbeTimeout bounds how long one health check may take.
const maxProbeTimeout = 2 * time.Second

// watchdogSchedule returns how often to check health (and ping, if the
// check passes) for systemd's watchdog interval, and how long one check
// may take. After a ping, watchdogMisses failed checks and then a passing
// one that takes its whole timeout still ping within the interval, with
// half a period to spare for scheduling: (watchdogMisses+1)·period +
// timeout < interval.
func watchdogSchedule(interval time.Duration) (period, timeout time.Duration) {
	period = interval / (watchdogMisses + 2)
	return period, min(maxProbeTimeout, period/2)
}

// healthy checks the agent the way a client would see it: a new
// connection to the real listener is accepted and the handler answers
// within timeout, and the credential loop is not wedged.
func (a *Agent) healthy(ctx context.Context, timeout time.Duration) error {
	mono := a.o.Clock.Monotonic()
	if idle := mono - a.manager.LastActive(); idle > a.manager.MaxInactive() {
		return fmt.Errorf("the credential loop has not run for %v", idle.Round(time.Second))
	}
	addrs := a.Addrs()
	if len(addrs) == 0 {
		return fmt.Errorf("not listening")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addrs[0].String()+"/", nil)
	if err != nil {
		return err
	}
	req.Header.Set(probeHeader, a.gate.probe)
	seen := a.gate.probes.Load()
	res, err := a.probeClient.Do(req)
	if err != nil {
		return fmt.Errorf("probing %s: %w", addrs[0], err)
	}
	// Any answer of this agent's will do: the handler answered. (With
	// http_endpoint disabled, or an access policy that leaves the agent's
	// own user out, the answer is a refusal.) An answer the gate did not
	// see came from elsewhere: with the link gone, the address leads to
	// whatever the network has there.
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if a.gate.probes.Load() == seen {
		return fmt.Errorf("probing %s: the answer did not come from this agent (is the link gone?)", addrs[0])
	}
	return nil
}

func newProbe() (string, *http.Client) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	// A new connection per probe: accepting is part of being healthy. The
	// check's context bounds the dial and the answer.
	tr := &http.Transport{
		Proxy:             nil,
		DialContext:       (&net.Dialer{}).DialContext,
		DisableKeepAlives: true,
	}
	return hex.EncodeToString(b), &http.Client{Transport: tr}
}

// notifyReady tells systemd the agent is ready, with its status, unless
// the agent is stopping; it reports whether it did.
func (a *Agent) notifyReady() bool {
	a.lifecycle.Lock()
	defer a.lifecycle.Unlock()
	if a.stopping.Load() {
		return false
	}
	a.notify("READY=1\nSTATUS=" + a.statusLine(a.manager.Status()))
	a.readySent.Store(true)
	return true
}

// notifyStopping marks the agent as stopping and tells systemd.
func (a *Agent) notifyStopping() {
	a.lifecycle.Lock()
	defer a.lifecycle.Unlock()
	a.stopping.Store(true)
	a.notify("STOPPING=1")
}

// reloading tells systemd a reload has begun, and reports whether it did:
// not before READY=1 (a reload during the start-up wait is part of the
// start, whose READY=1 is still to come) nor after STOPPING=1. A reload
// that did must end with READY=1.
func (a *Agent) reloading() bool {
	a.lifecycle.Lock()
	defer a.lifecycle.Unlock()
	if !a.readySent.Load() || a.stopping.Load() {
		return false
	}
	a.notify("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(monotonicUsec(), 10))
	return true
}

package refresh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials/processcreds"
	"github.com/aws/smithy-go"

	"github.com/imds-agent/imds-agent/internal/awsemu"
	"github.com/imds-agent/imds-agent/internal/profile"
	"github.com/imds-agent/imds-agent/internal/snapshot"
)

// runManager runs the sim's manager on the real clock.
func runManager(t *testing.T, s *sim) {
	t.Helper()
	s.m.opts.Clock = SystemClock()
	s.clock.advance(time.Since(simOrigin)) // STS's clock: about now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	select {
	case <-s.m.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready after 10s")
	}
}

func TestRunForcedRefresh(t *testing.T) {
	s := newSim(t, simOptions{target: profile.Target{InstanceProfile: "web"}})
	runManager(t, s)
	before := s.m.Snapshot()
	if before.State != snapshot.Ready {
		t.Fatalf("state %v", before.State)
	}
	if err := s.m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	after := s.m.Snapshot()
	if after.KeySuffix == before.KeySuffix && string(after.Credentials.Bytes) == string(before.Credentials.Bytes) {
		t.Error("forced refresh served the same credentials")
	}
	// Rotated source keys: the old key is gone; a forced refresh reports it.
	s.emu.RemoveUser(s.user.AccessKeyID)
	err := s.m.Refresh(context.Background())
	if err == nil || Classify(err) != Terminal {
		t.Errorf("refresh with revoked source keys: %v", err)
	}
	if s.m.Snapshot().Credentials.Bytes == nil {
		t.Error("a failed forced refresh dropped the credentials")
	}
}

func TestRunReloadSwapsRole(t *testing.T) {
	s := newSim(t, simOptions{})
	runManager(t, s)
	if got := s.m.Snapshot().Role.ARN; got != roleA {
		t.Fatalf("role %s", got)
	}
	set := s.settings(simOptions{target: profile.Target{RoleARN: roleB}, duration: time.Hour, recheck: time.Minute})
	s.m.Reload(set)
	deadline := time.Now().Add(10 * time.Second)
	for s.m.Snapshot().Role.ARN != roleB || s.m.Snapshot().State != snapshot.Ready {
		if time.Now().After(deadline) {
			t.Fatalf("reload did not rotate to %s: %+v", roleB, s.m.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.m.Reload(Settings{ProfileRecheck: time.Minute})
	for s.m.Snapshot().State != snapshot.NoRole {
		if time.Now().After(deadline) {
			t.Fatalf("reload to no role: %+v", s.m.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRefreshCancelled(t *testing.T) {
	s := newSim(t, simOptions{})
	// Not running: Refresh must give up with its context.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.m.Refresh(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Refresh without a loop: %v", err)
	}
}

// TestRefreshCaughtByStop: a refresh that the manager's stop interrupts
// (its AssumeRole in flight) says the manager is stopping, not that no
// credentials were obtained or what failed before.
func TestRefreshCaughtByStop(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target profile.Target
		action string // the call in flight when the stop comes
		first  bool   // the manager has run before
	}{
		{"AssumeRole", profile.Target{RoleARN: roleA}, "AssumeRole", true},
		{"the first look-up", profile.Target{InstanceProfile: "web"}, "GetInstanceProfile", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, simOptions{target: tc.target})
			if tc.first {
				s.run(time.Minute, nil)
			}
			hung := make(chan struct{})
			var once sync.Once
			s.emu.Inject(func(action string) *awsemu.Fault {
				if action != tc.action {
					return nil
				}
				once.Do(func() { close(hung) })
				return &awsemu.Fault{Hang: true}
			})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.m.forced(ctx) }()
			<-hung
			cancel()
			if err := <-done; !errors.Is(err, ErrStopped) {
				t.Errorf("refresh caught by the stop: %v, want ErrStopped", err)
			}
		})
	}
}

// TestRefreshAfterStop: a refresh asked of a stopped manager says so at
// once instead of waiting for its deadline.
func TestRefreshAfterStop(t *testing.T) {
	s := newSim(t, simOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.m.Run(ctx) }()
	cancel()
	<-done
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	if err := s.m.Refresh(rctx); !errors.Is(err, ErrStopped) {
		t.Errorf("Refresh after stop: %v, want ErrStopped", err)
	}
}

func TestClassify(t *testing.T) {
	if Classify(context.DeadlineExceeded) != Transient {
		t.Error("deadline not transient")
	}
	if Classify(ErrNoSourceCredentials) != Terminal {
		t.Error("no source credentials not terminal")
	}
	if Classify(profile.ErrProfileNotFound) != Terminal {
		t.Error("profile not found not terminal")
	}
	// A source the host's setup lacks is terminal; one that may answer
	// differently next time is worth retrying soon. Either is reported as
	// the source's failure, not STS's.
	source := func(err error) error {
		return fmt.Errorf("get identity: getting the source credentials: %w: %w", ErrNoSourceCredentials, err)
	}
	const (
		setup = "The host has no usable source credentials. See the agent's log."
		retry = "The host's source credentials could not be obtained; retrying. See the agent's log."
	)
	for _, tc := range []struct {
		err   error
		class Class
		msg   string
	}{
		{source(errors.New("open /var/run/token: no such file or directory")), Terminal, setup},
		{source(&processcreds.ProviderError{Err: fmt.Errorf("error in credential_process: %w", exitError(t, 1))}), Transient, retry},
		{source(&processcreds.ProviderError{Err: fmt.Errorf("error in credential_process: %w", exitError(t, 127))}), Terminal, setup},
		{source(&processcreds.ProviderError{Err: errors.New("missing AccessKeyId in process output")}), Terminal, setup},
		{source(&smithy.GenericAPIError{Code: "UnauthorizedException", Message: "Session token not found or invalid"}), Terminal, setup},
		{source(&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}), Transient, retry},
		{source(&smithy.GenericAPIError{Code: "IDPCommunicationError", Message: "the IdP could not be reached"}), Transient, retry},
		// STS could not fetch the IdP's keys, say: the SDK's own web
		// identity provider retries it.
		{source(&smithy.GenericAPIError{Code: "InvalidIdentityToken", Message: "Couldn't retrieve verification key from your identity provider"}), Transient, retry},
	} {
		c := Classify(tc.err)
		code, msg := failureCode(c, tc.err)
		if c != tc.class || code != "InvalidSourceCredentials" || msg != tc.msg {
			t.Errorf("%v: %v, %s %q; want %v, InvalidSourceCredentials %q", tc.err, c, code, msg, tc.class, tc.msg)
		}
	}
}

// exitError returns the error of a process that exited with code.
func exitError(t *testing.T, code int) error {
	t.Helper()
	err := exec.Command("/bin/sh", "-c", "exit "+strconv.Itoa(code)).Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != code {
		t.Fatalf("sh exit %d: %v", code, err)
	}
	return err
}

package caller

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeKernel stands in for sock_diag: the resolver's one socket is one end
// of a socketpair, and the test answers (or not) on the other.
type fakeKernel struct {
	peer int
	r    *Resolver
}

func newFakeKernel(t *testing.T, timeout time.Duration, log *slog.Logger) *fakeKernel {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[1]) })
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fds[0], unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	r := &Resolver{log: log, timeout: timeout, conns: make(chan *diagConn, 1), size: 1, done: make(chan struct{})}
	r.conns <- &diagConn{fd: fds[0]}
	t.Cleanup(func() { r.Close() })
	return &fakeKernel{peer: fds[1], r: r}
}

// request reads one request and returns its sequence number.
func (k *fakeKernel) request(t *testing.T) uint32 {
	t.Helper()
	b := make([]byte, 256)
	n, err := unix.Read(k.peer, b)
	if err != nil || n != requestLen {
		t.Errorf("request: %d bytes, %v", n, err)
		return 0
	}
	return binary.NativeEndian.Uint32(b[8:])
}

func (k *fakeKernel) reply(t *testing.T, b []byte) {
	t.Helper()
	if _, err := unix.Write(k.peer, b); err != nil {
		t.Errorf("reply: %v", err)
	}
}

// recordHandler keeps the messages of the records it handles.
type recordHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

func TestExchange(t *testing.T) {
	const timeout = 30 * time.Millisecond
	logs := &recordHandler{}
	k := newFakeKernel(t, timeout, slog.New(logs))
	answer := func(seq uint32, inode uint32) []byte {
		o := goodReply()
		o.seq, o.inode, o.attrs = seq, inode, nil
		return diagReply(o)
	}

	// No answer: after the timeout the caller is unknown (ErrTimeout,
	// not "not local"), and the miss is logged at debug.
	start := time.Now()
	got, err := k.r.Lookup(testAgent, testClient)
	if took := time.Since(start); !errors.Is(err, ErrTimeout) || got != (Info{}) || took < timeout || took > 20*timeout {
		t.Fatalf("unanswered Lookup = %+v, %v after %v; want ErrTimeout after %v", got, err, took, timeout)
	}
	if seq := k.request(t); seq != 1 {
		t.Errorf("first request has sequence %d, want 1", seq)
	}
	if len(logs.msgs) != 1 {
		t.Errorf("logged %q, want one timeout record", logs.msgs)
	}

	// The late answer to request 1 arrives before request 2 is sent: it
	// is skipped, and request 2's own answer is taken.
	k.reply(t, answer(1, 111))
	done := make(chan struct{})
	go func() {
		defer close(done)
		seq := k.request(t)
		k.reply(t, answer(seq, 222))
	}()
	got, err = k.r.Lookup(testAgent, testClient)
	<-done
	if err != nil || got != (Info{Local: true, UID: 1000, Inode: 222}) {
		t.Errorf("Lookup after a late answer = %+v, %v; want inode 222", got, err)
	}

	// A kernel error is the lookup's error.
	go func() {
		seq := k.request(t)
		k.reply(t, errReply(seq, unix.EPERM))
	}()
	if _, err := k.r.Lookup(testAgent, testClient); !errors.Is(err, unix.EPERM) {
		t.Errorf("Lookup with a kernel error: %v, want EPERM", err)
	}

	// A garbled answer is an error too, never a found socket.
	go func() {
		k.request(t)
		k.reply(t, []byte{1, 2, 3})
	}()
	if got, err := k.r.Lookup(testAgent, testClient); !errors.Is(err, errMalformed) || got != (Info{}) {
		t.Errorf("Lookup with a garbled answer = %+v, %v; want errMalformed", got, err)
	}
}

// Close while lookups run: every lookup ends (answered or ErrClosed) and
// Close returns once the sockets are idle.
func TestCloseDuringLookups(t *testing.T) {
	r, err := NewResolver(Options{Sockets: 2})
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t, "tcp4", "127.0.0.1:0")
	_, server := connect(t, "tcp4", ln)
	local, remote := ends(server)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				info, err := r.Lookup(local, remote)
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil || !info.Local {
					t.Errorf("Lookup = %+v, %v", info, err)
					return
				}
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	wg.Wait()
	if _, err := r.Lookup(netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2")); !errors.Is(err, ErrClosed) {
		t.Errorf("Lookup after Close: %v", err)
	}
}

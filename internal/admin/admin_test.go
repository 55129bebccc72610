package admin

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

type backend struct{}

func (backend) Status() Status                    { return Status{State: "ready", Role: "web"} }
func (backend) Refresh(ctx context.Context) error { return nil }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func serve(t *testing.T, path string) *Server {
	t.Helper()
	s, err := Listen(path, backend{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve() }()
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s
}

// TestListenLeavesOtherFiles: a path that names anything but a socket is
// refused and left as it was, whatever kind of file it is.
func TestListenLeavesOtherFiles(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(file, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, kind string }{
		{file, "a regular file"},
		{dir, "a directory"},
		{link, "a symbolic link"},
	} {
		_, err := Listen(tc.path, backend{}, quiet)
		if err == nil || !strings.Contains(err.Error(), tc.kind) || !strings.Contains(err.Error(), "left alone") {
			t.Errorf("Listen(%s) = %v, want a refusal naming %s", tc.path, err, tc.kind)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Errorf("the file now holds %q (%v)", b, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Errorf("the link is gone or changed: %v", err)
	}
}

// TestListenReplacesStaleSocket: a socket nobody answers on is replaced; a
// live agent's is not; Shutdown removes the agent's own.
func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the socket file stays, with nobody behind it

	s := serve(t, path)
	st, err := NewClient(path).Status(context.Background())
	if err != nil || st.Role != "web" {
		t.Fatalf("Status through the new socket = %+v, %v", st, err)
	}
	if _, err := Listen(path, backend{}, quiet); err == nil || !strings.Contains(err.Error(), "another agent is answering") {
		t.Errorf("a second Listen = %v, want 'another agent is answering'", err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("after Shutdown the socket is still there (%v)", err)
	}
}

// TestShutdownKeepsAnotherAgentsSocket: a socket another agent has opened
// at the path since (after removing this one's, say) is not removed by
// this one's Shutdown.
func TestShutdownKeepsAnotherAgentsSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	s := serve(t, path)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	other := serve(t, path)
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := NewClient(path).Status(context.Background()); err != nil {
		t.Errorf("the other agent's socket is gone after the first one's Shutdown: %v", err)
	}
	_ = other.Shutdown(context.Background())
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("after the other's Shutdown its socket is still there (%v)", err)
	}
}

// TestClientErrors: a failed connection says what is wrong in the user's
// terms.
func TestClientErrors(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "none.sock"), "no agent is answering (is it running? A running agent keeps the admin.socket it started with until a restart)"},
		{stale, "no agent is answering (is it running? A running agent keeps the admin.socket it started with until a restart)"},
	} {
		_, err := NewClient(tc.path).Status(ctx)
		if err == nil || err.Error() != "admin socket "+tc.path+": "+tc.want {
			t.Errorf("Status(%s) = %v, want %q", tc.path, err, tc.want)
		}
	}
	// Root passes any file mode, so the kernel's refusal is made here as
	// connect(2) reports it.
	path := filepath.Join(dir, "admin.sock")
	denied := &url.Error{Op: "Get", URL: "http://imds-agent/status", Err: &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)}}
	if err := NewClient(path).dialError(denied); err.Error() != "admin socket "+path+": permission denied; run as root or as a member of the agent's group" {
		t.Errorf("dialError(EACCES) = %v", err)
	}
	// An agent that accepts and never answers (stopped with SIGSTOP, say).
	hung := filepath.Join(dir, "hung.sock")
	hl, err := net.Listen("unix", hung)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	go func() {
		for {
			c, err := hl.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	short, cancelShort := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelShort()
	if _, err := NewClient(hung).Status(short); err == nil || !strings.Contains(err.Error(), "admin socket "+hung+": the agent did not answer in time") {
		t.Errorf("Status of an agent that never answers = %v", err)
	}
}

// TestIdleConnectionClosed: a kept-alive connection that sends nothing
// more is closed once idle for idleTimeout.
func TestIdleConnectionClosed(t *testing.T) {
	defer func(d time.Duration) { idleTimeout = d }(idleTimeout)
	idleTimeout = 200 * time.Millisecond
	path := filepath.Join(t.TempDir(), "admin.sock")
	serve(t, path)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /status HTTP/1.1\r\nHost: imds-agent\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("status: %v %v", res, err)
	}
	if _, err := io.Copy(io.Discard, res.Body); err != nil {
		t.Fatal(err)
	}
	// Well before the read deadline, the server closes the idle connection.
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("reading an idle connection: %v, want EOF (closed by the server)", err)
	}
}

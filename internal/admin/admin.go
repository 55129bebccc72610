// Package admin owns the agent's local control socket: a Unix socket
// speaking HTTP, for `imds-agent status` and `imds-agent refresh`. Only root
// and the agent's own group may connect (file mode 0660, and the peer's
// credentials are checked). Trouble with the socket is never fatal: the
// agent serves metadata without it.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Status is what `imds-agent status` shows. It never holds a secret: an
// access key id appears as its last four characters only.
type Status struct {
	Version             string    `json:"version"`
	PID                 int       `json:"pid"`
	Started             time.Time `json:"started"`
	InstanceID          string    `json:"instance_id"`
	Region              string    `json:"region"`
	Target              string    `json:"target"`
	State               string    `json:"state"`
	Role                string    `json:"role,omitempty"`
	RoleARN             string    `json:"role_arn,omitempty"`
	InstanceProfile     string    `json:"instance_profile,omitempty"`
	AccessKeySuffix     string    `json:"access_key_suffix,omitempty"`
	Expiration          time.Time `json:"expiration,omitzero"`
	LastRefresh         time.Time `json:"last_refresh,omitzero"`
	NextRefresh         time.Time `json:"next_refresh,omitzero"`
	LastError           string    `json:"last_error,omitempty"`
	LastErrorClass      string    `json:"last_error_class,omitempty"`
	LastErrorAt         time.Time `json:"last_error_at,omitzero"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	Refreshes           uint64    `json:"refreshes"`
	Failures            uint64    `json:"failures"`
	LookupFailures      uint64    `json:"profile_lookup_failures"`
	Listen              []string  `json:"listen"`
	Link                string    `json:"link,omitempty"`
	Clients             int64     `json:"clients"`
	ClientsShed         uint64    `json:"clients_shed"`
	TokensRequired      bool      `json:"tokens_required"`
	EndpointEnabled     bool      `json:"endpoint_enabled"`
	Metrics             string    `json:"metrics,omitempty"`
	AuditDropped        uint64    `json:"audit_dropped"`
	// ConfigLoaded is when the running configuration was read: at start,
	// or by the last reload that took. ReloadError and ReloadFailedAt
	// describe a reload refused since (the running configuration stayed).
	ConfigLoaded   time.Time `json:"config_loaded"`
	ReloadError    string    `json:"reload_error,omitempty"`
	ReloadFailedAt time.Time `json:"reload_failed_at,omitzero"`
	// RestartPending names the settings the file changes that take
	// effect only on restart.
	RestartPending []string `json:"restart_pending,omitempty"`
}

// Backend is what the socket exposes.
type Backend interface {
	Status() Status
	Refresh(ctx context.Context) error
}

// RefreshTimeout bounds a refresh requested over the socket.
const RefreshTimeout = 60 * time.Second

// A connection that has sent no request for idleTimeout is closed, and one
// that takes longer than readTimeout to send a whole request is cut off:
// clients that linger cannot hold connections, and so file descriptors,
// without bound.
var idleTimeout = 30 * time.Second

const readTimeout = 10 * time.Second

// Server serves the control socket.
type Server struct {
	path string
	ours fs.FileInfo // the socket file Listen made
	log  *slog.Logger
	ln   net.Listener
	http *http.Server
}

// Listen opens the socket at path, replacing a stale one (a socket file no
// agent answers on). Another agent already answering is an error, and so is
// anything at path that is not a socket: a mistyped path must never cost
// the file it names.
func Listen(path string, b Backend, log *slog.Logger) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("admin socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("admin socket %s: something other than a socket is there (%s); it is left alone", path, describeMode(fi.Mode()))
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		switch {
		case err == nil:
			c.Close()
			return nil, fmt.Errorf("admin socket %s: another agent is answering on it", path)
		case !errors.Is(err, syscall.ECONNREFUSED):
			// Not stale for sure (a socket this user may not use, say).
			return nil, fmt.Errorf("admin socket %s: cannot tell whether another agent is answering on it, so it is left alone: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale admin socket: %w", err)
		}
		log.Info("replaced a stale admin socket", "path", path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// Closing the listener would remove whatever is at path by then; Shutdown
	// removes the socket only if it is still this one.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ours, err := os.Lstat(path)
	if err == nil {
		err = os.Chmod(path, 0o660)
	}
	if err != nil {
		ln.Close()
		os.Remove(path)
		return nil, fmt.Errorf("admin socket permissions: %w", err)
	}
	s := &Server{path: path, log: log, ln: ln, ours: ours}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, b.Status())
	})
	mux.HandleFunc("POST /refresh", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), RefreshTimeout)
		defer cancel()
		if err := b.Refresh(ctx); err != nil {
			writeJSON(w, http.StatusBadGateway, result{Error: err.Error()})
			return
		}
		st := b.Status()
		writeJSON(w, http.StatusOK, result{Status: &st})
	})
	s.http = &http.Server{
		Handler:           peerCheck(mux, log),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       readTimeout,
		WriteTimeout:      RefreshTimeout + 5*time.Second,
		IdleTimeout:       idleTimeout,
		ConnContext:       withPeer,
	}
	return s, nil
}

// Serve answers until Shutdown.
func (s *Server) Serve() error {
	if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server and removes its socket file, if the path still
// holds it: a socket another agent has opened there since is kept.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if fi, lerr := os.Lstat(s.path); lerr == nil && os.SameFile(fi, s.ours) {
		_ = os.Remove(s.path)
	}
	return err
}

// describeMode names the kind of file a mode says.
func describeMode(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "a regular file"
	case fs.ModeDir:
		return "a directory"
	case fs.ModeSymlink:
		return "a symbolic link"
	case fs.ModeNamedPipe:
		return "a named pipe"
	case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
		return "a device"
	}
	return "a special file"
}

type result struct {
	Status *Status `json:"status,omitempty"`
	Error  string  `json:"error,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

type peerKey struct{}

// withPeer records the connecting process's credentials (SO_PEERCRED).
func withPeer(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *syscall.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, *cred)
}

// peerCheck admits root, the agent's own user, and members of the agent's
// group (whom the file mode already limits it to).
func peerCheck(next http.Handler, log *slog.Logger) http.Handler {
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cred, ok := r.Context().Value(peerKey{}).(syscall.Ucred)
		if !ok || (cred.Uid != 0 && cred.Uid != uid && cred.Gid != gid && !inGroup(cred.Pid, gid)) {
			log.Warn("admin socket: refused a caller", "uid", cred.Uid, "pid", cred.Pid)
			writeJSON(w, http.StatusForbidden, result{Error: "only root and the agent's group may use the admin socket"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// inGroup reports whether process pid has gid among its groups. The file
// mode already restricts connections to the group, so a process that got
// in is a member unless /proc says otherwise.
func inGroup(pid int32, gid uint32) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return true // hidden by ProtectProc: trust the file mode
	}
	for _, l := range strings.Split(string(data), "\n") {
		if groups, ok := strings.CutPrefix(l, "Groups:"); ok {
			return slices.Contains(strings.Fields(groups), strconv.FormatUint(uint64(gid), 10))
		}
	}
	return false
}

// Client talks to a running agent's socket.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{path: path, http: &http.Client{
		Timeout: RefreshTimeout + 10*time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// Status asks the agent for its status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var r Status
	err := c.do(ctx, http.MethodGet, "/status", &r)
	return r, err
}

// Refresh asks the agent to refresh credentials now and returns its status
// afterwards.
func (c *Client) Refresh(ctx context.Context) (Status, error) {
	var r result
	if err := c.do(ctx, http.MethodPost, "/refresh", &r); err != nil {
		return Status{}, err
	}
	if r.Status == nil {
		return Status{}, errors.New("the agent sent no status")
	}
	return *r.Status, nil
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://imds-agent"+path, nil)
	if err != nil {
		return err
	}
	res, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			return fmt.Errorf("admin socket %s: the agent did not answer in time (it may be stopped, hung or busy; journalctl -u imds-agent says more)", c.path)
		}
		return c.dialError(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		var r result
		if json.Unmarshal(body, &r) == nil && r.Error != "" {
			return errors.New(r.Error)
		}
		return fmt.Errorf("the agent answered %s", res.Status)
	}
	return json.Unmarshal(body, out)
}

// dialError says what a failed request to the socket means for the user.
func (c *Client) dialError(err error) error {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		return fmt.Errorf("admin socket %s: %w", c.path, err)
	}
	switch {
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("admin socket %s: permission denied; run as root or as a member of the agent's group", c.path)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("admin socket %s: no agent is answering (is it running? A running agent keeps the admin.socket it started with until a restart)", c.path)
	}
	return fmt.Errorf("admin socket %s: %w", c.path, op.Err)
}

package imds

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"
)

// Server timeouts. Metadata clients send tiny requests and give up after a
// second or two, so anything slower is a stuck or hostile client.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	WriteTimeout      = 10 * time.Second
	IdleTimeout       = 30 * time.Second
	MaxHeaderBytes    = 8 << 10
)

// Server is the HTTP server of the metadata service.
type Server struct {
	http  *http.Server
	conns atomic.Int64
	shed  *shedder
	quiet func()
}

// conn is the server's record of one client connection, found with one
// context look-up per request: the connection itself (what net/http
// serves), its place among the idle connections, the token it last
// verified, what the hooks keep about it, and the Request the handler
// fills for each of its requests.
type conn struct {
	net.Conn
	prev, next *conn // in the shedder's idle list; nil when not in it
	shedded    bool  // closed to make room; never listed again
	tokens     tokenMemo
	value      any     // what the server's connValue returned for it
	req        Request // the request being served; zero between requests
}

// CloseWrite half-closes a TCP connection, as net/http does before closing
// one it answered with an error.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// SyscallConn gives access to the socket (its options), where the
// accepted connection has one.
func (c *conn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

type connKey struct{}

// connOf returns the record of r's connection; nil when r did not come
// through a Server (or WithConn).
func connOf(r *http.Request) *conn {
	c, _ := r.Context().Value(connKey{}).(*conn)
	return c
}

// WithConn returns ctx carrying a record for the connection c, as a Server
// keeps for each one, with v as what the hooks see in Request.Conn: for
// serving a Handler without a Server (tests and benchmarks).
func WithConn(ctx context.Context, c net.Conn, v any) context.Context {
	return context.WithValue(ctx, connKey{}, &conn{Conn: c, value: v})
}

// listener hands net/http connection records instead of bare connections.
type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c}, nil
}

// NewServer returns a server for h. connValue, if not nil, is called once
// for each new connection, on the accept loop, and what it returns is
// handed to the hooks with every request on that connection
// (Request.Conn): the caller lookup keeps its answer there.
func NewServer(h http.Handler, log *slog.Logger, connValue func(net.Conn) any) *Server {
	s := &Server{shed: newShedder(MaxIdleConns)}
	s.http = &http.Server{
		Handler:           withoutBodies(h),
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		// net/http would answer OPTIONS * itself, after reading up to
		// 4 KiB of its body, and the connection would wait for a body
		// that never comes as an active one, outside the idle cap: every
		// request goes to the handler, and withoutBodies, instead.
		DisableGeneralOptionsHandler: true,
		ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
			c, ok := nc.(*conn) // Serve's listener made it
			if !ok {
				return ctx
			}
			if connValue != nil {
				c.value = connValue(c)
			}
			return context.WithValue(ctx, connKey{}, c)
		},
		// What net/http logs here is about the service, not one client:
		// a failing accept (out of file descriptors, say), a handler's
		// panic or its misuse of the ResponseWriter.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError),
		ConnState: func(nc net.Conn, st http.ConnState) {
			if c, ok := nc.(*conn); ok {
				s.shed.track(c, st)
			}
			switch st {
			case http.StateNew:
				s.conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				if s.conns.Add(-1) == 0 && s.quiet != nil {
					s.quiet()
				}
			}
		},
	}
	return s
}

// withoutBodies answers a request that carries a body (no SDK sends one)
// and then closes its connection, instead of letting net/http wait up to
// ReadTimeout for the rest of the body after the answer: such a connection
// counts as active, so the idle-connection cap would not bound how many a
// client holds that way.
func withoutBodies(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 || r.TransferEncoding != nil {
			w.Header()["Connection"] = connectionClose
			_ = http.NewResponseController(w).SetReadDeadline(time.Now())
		}
		h.ServeHTTP(w, r)
	})
}

var connectionClose = []string{"close"}

// OnQuiet sets f to be called, on the closing connection's goroutine, each
// time the last open client connection closes. It must be set before Serve,
// and f must return quickly.
func (s *Server) OnQuiet(f func()) { s.quiet = f }

// Shed returns how many idle or incomplete connections were closed to make
// room for new ones.
func (s *Server) Shed() uint64 { return s.shed.Shed() }

// Connections returns the number of open client connections.
func (s *Server) Connections() int64 { return s.conns.Load() }

// Serve accepts connections on ln until Shutdown; it then returns nil.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.http.Serve(listener{ln}); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting, lets requests in progress finish until ctx is
// done, then closes what remains.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return s.http.Close()
	}
	return err
}

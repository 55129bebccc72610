package imds

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
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

// connState is what the handler keeps about one client connection.
type connState struct {
	tokens tokenMemo
}

type connStateKey struct{}

// connStateOf returns the state of r's connection; nil when r did not come
// through a Server.
func connStateOf(r *http.Request) *connState {
	c, _ := r.Context().Value(connStateKey{}).(*connState)
	return c
}

// NewServer returns a server for h. connContext, if not nil, derives each
// connection's context (the caller lookup hangs its answer there).
func NewServer(h http.Handler, log *slog.Logger, connContext func(context.Context, net.Conn) context.Context) *Server {
	s := &Server{shed: newShedder(MaxIdleConns)}
	withState := func(ctx context.Context, c net.Conn) context.Context {
		ctx = context.WithValue(ctx, connStateKey{}, &connState{})
		if connContext != nil {
			ctx = connContext(ctx, c)
		}
		return ctx
	}
	s.http = &http.Server{
		Handler:           withoutBodies(h),
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ConnContext:       withState,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnState: func(c net.Conn, st http.ConnState) {
			s.shed.track(c, st)
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
	if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
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

package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/imds-agent/imds-agent/internal/audit"
	"github.com/imds-agent/imds-agent/internal/caller"
	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/imds"
	"github.com/imds-agent/imds-agent/internal/metrics"
	"github.com/imds-agent/imds-agent/internal/servebench"
	"github.com/imds-agent/imds-agent/internal/snapshot"
)

type staticCreds struct{ s *snapshot.Snapshot }

func (c staticCreds) Snapshot() *snapshot.Snapshot { return c.s }

// discardWriter is the cheapest http.ResponseWriter: its header map is
// reused, so what the benchmark counts is the handler's and the gate's work.
type discardWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(s int)   { w.status = s }
func (w *discardWriter) Write(b []byte) (int, error) {
	w.n += len(b)
	return len(b), nil
}

// gateBench is the metadata handler with the agent's real hooks, for a
// credential GET with a valid token on a loopback connection: the caller
// found by sock_diag (once, for the connection), the Host check, the
// default access policy, metrics and an audit record written by the audit
// writer to out.
type gateBench struct {
	h      *imds.Handler
	g      *gate
	creds  staticCreds
	listen netip.AddrPort
	server net.Conn // the connection's server side
	conn   any      // what connValue recorded for it
	token  string
}

func newGateBench(b *testing.B, out io.Writer) *gateBench {
	log := slog.New(slog.DiscardHandler)
	now := time.Now
	role := snapshot.Role{Name: DevRole, ARN: "arn:aws:iam::" + DevAccount + ":role/" + DevRole, AccountID: DevAccount}
	gb := &gateBench{creds: staticCreds{snapshot.New(role, snapshot.Credentials{AccessKeyID: "ASIAEXAMPLEKEY000001",
		SecretAccessKey: "secret", SessionToken: "token", Expiration: now().Add(time.Hour)}, now())}}

	_, gb.server = loopbackPair(b)
	g := &gate{log: log}
	var err error
	if g.resolver, err = caller.NewResolver(caller.Options{Logger: log}); err != nil {
		b.Logf("no caller lookup: %v", err)
		g.resolver = nil
	} else {
		b.Cleanup(func() { g.resolver.Close() })
	}
	g.metrics = metrics.New(metrics.Sources{Snapshot: gb.creds.Snapshot, Now: now, Connections: func() int64 { return 1 }})
	g.audit = audit.New(out, "text", g.metrics.AuditDropped)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- g.audit.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
		if d := g.audit.Dropped(); d != 0 {
			b.Logf("%d audit records dropped", d)
		}
	})
	cfg := config.Default()
	gb.listen = gb.server.LocalAddr().(*net.TCPAddr).AddrPort()
	rules, err := compileRules(cfg, []netip.AddrPort{gb.listen}, log)
	if err != nil {
		b.Fatal(err)
	}
	g.rules.Store(rules)

	tokens, err := imds.NewTokens(now)
	if err != nil {
		b.Fatal(err)
	}
	gb.h = imds.NewHandler(imds.NewMetadata(imds.Instance{ID: "i-0123456789abcdef0", Region: "eu-west-1"},
		imds.Options{Enabled: true, TokensRequired: true, HopLimit: 1}), gb.creds, tokens, now, g)
	gb.g = g
	gb.conn = g.connValue(gb.server)
	gb.token = tokens.Issue(21600, imds.Binding{})
	return gb
}

// credentialsPath is the dev role's credential document.
const credentialsPath = "/latest/meta-data/iam/security-credentials/" + DevRole

// BenchmarkCredentialsGETGate: a credential GET with a valid token on a
// keep-alive connection, through the metadata handler and the agent's real
// hooks (gateBench), the audit trail written to io.Discard. The request
// carries the connection's record as imds.Server gives it, so the token's
// MAC is checked once and remembered, as on an SDK's kept-alive connection.
func BenchmarkCredentialsGETGate(b *testing.B) {
	gb := newGateBench(b, io.Discard)
	connCtx := imds.WithConn(context.Background(), gb.server, gb.conn)
	r := httptest.NewRequestWithContext(connCtx, http.MethodGet, "http://"+gb.listen.String()+credentialsPath, nil)
	r.RemoteAddr = gb.server.RemoteAddr().String()
	r.Header.Set("X-aws-ec2-metadata-token", gb.token)
	w := &discardWriter{h: http.Header{}}
	serve := func() {
		clear(w.h)
		w.status, w.n = 0, 0
		gb.h.ServeHTTP(w, r)
		if w.status != http.StatusOK || w.n != len(gb.creds.s.Credentials.Bytes) {
			b.Fatalf("credentials GET: status %d, %d bytes", w.status, w.n)
		}
	}
	serve() // identifies the caller, once for the connection
	b.ReportAllocs()
	for b.Loop() {
		serve()
	}
}

// BenchmarkCredentialsGETServedGate: the same request served through
// net/http (servebench) as the agent serves it, by its Server with the
// handler and the real hooks; and by the floor, a bare http.Server with
// the same timeouts and bench/floor's handler. The connection is held in
// memory: the hooks see the loopback connection's record, with its
// caller. The audit trail goes to /dev/null: one write(2) a batch, as to
// a file, without the file system's share (which the harness measures)
// or its stalls (which at this rate would make the writer drop records).
func BenchmarkCredentialsGETServedGate(b *testing.B) {
	request := func(listen netip.AddrPort, token string) []byte {
		return []byte("GET " + credentialsPath + " HTTP/1.1\r\nHost: " + listen.String() +
			"\r\nUser-Agent: aws-sdk-go-v2/1.41.0\r\nX-aws-ec2-metadata-token: " + token + "\r\n\r\n")
	}
	b.Run("agent", func(b *testing.B) {
		out, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { out.Close() }) // after the audit writer's last flush
		gb := newGateBench(b, out)
		s := imds.NewServer(gb.h, slog.New(slog.DiscardHandler), func(net.Conn) any { return gb.conn })
		servebench.Run(b, request(gb.listen, gb.token), servebench.Serve(s))
		if d := gb.g.audit.Dropped(); d != 0 {
			b.Fatalf("%d audit records dropped", d) // a dropped record costs less than one written
		}
	})
	b.Run("floor", func(b *testing.B) {
		gb := newGateBench(b, io.Discard) // for the document
		servebench.Run(b, request(gb.listen, gb.token), servebench.Serve(&http.Server{
			Handler:           servebench.Floor(gb.creds.s.Credentials.Bytes),
			ReadHeaderTimeout: imds.ReadHeaderTimeout, ReadTimeout: imds.ReadTimeout, WriteTimeout: imds.WriteTimeout,
			IdleTimeout: imds.IdleTimeout, MaxHeaderBytes: imds.MaxHeaderBytes}))
	})
}

package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/imds-agent/imds-agent/internal/audit"
	"github.com/imds-agent/imds-agent/internal/caller"
	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/imds"
	"github.com/imds-agent/imds-agent/internal/metrics"
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

// BenchmarkCredentialsGETGate: a credential GET with a valid token on a
// keep-alive connection, through the metadata handler and the agent's real
// hooks: the caller found by sock_diag (once, for the connection), the Host
// check, the default access policy, metrics and an audit record written by
// the audit writer (to io.Discard). The request carries the connection's
// record as imds.Server gives it, so the token's MAC is checked once and
// remembered, as on an SDK's kept-alive connection.
func BenchmarkCredentialsGETGate(b *testing.B) {
	log := slog.New(slog.DiscardHandler)
	now := time.Now
	role := snapshot.Role{Name: DevRole, ARN: "arn:aws:iam::" + DevAccount + ":role/" + DevRole, AccountID: DevAccount}
	creds := staticCreds{snapshot.New(role, snapshot.Credentials{AccessKeyID: "ASIAEXAMPLEKEY000001",
		SecretAccessKey: "secret", SessionToken: "token", Expiration: now().Add(time.Hour)}, now())}

	_, server := loopbackPair(b)
	g := &gate{log: log}
	var err error
	if g.resolver, err = caller.NewResolver(caller.Options{Logger: log}); err != nil {
		b.Logf("no caller lookup: %v", err)
		g.resolver = nil
	} else {
		defer g.resolver.Close()
	}
	g.metrics = metrics.New(metrics.Sources{Snapshot: creds.Snapshot, Now: now, Connections: func() int64 { return 1 }})
	g.audit = audit.New(io.Discard, "text", g.metrics.AuditDropped)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- g.audit.Run(ctx) }()
	defer func() { cancel(); <-done }()
	cfg := config.Default()
	listen := server.LocalAddr().(*net.TCPAddr).AddrPort()
	rules, err := compileRules(cfg, []netip.AddrPort{listen}, log)
	if err != nil {
		b.Fatal(err)
	}
	g.rules.Store(rules)

	tokens, err := imds.NewTokens(now)
	if err != nil {
		b.Fatal(err)
	}
	h := imds.NewHandler(imds.NewMetadata(imds.Instance{ID: "i-0123456789abcdef0", Region: "eu-west-1"},
		imds.Options{Enabled: true, TokensRequired: true, HopLimit: 1}), creds, tokens, now, g)

	connCtx := imds.WithConn(context.Background(), server, g.connValue(server))
	r := httptest.NewRequestWithContext(connCtx, http.MethodGet, "http://"+listen.String()+"/latest/meta-data/iam/security-credentials/"+DevRole, nil)
	r.RemoteAddr = server.RemoteAddr().String()
	r.Header.Set("X-aws-ec2-metadata-token", tokens.Issue(21600, imds.Binding{}))
	w := &discardWriter{h: http.Header{}}
	serve := func() {
		clear(w.h)
		w.status, w.n = 0, 0
		h.ServeHTTP(w, r)
		if w.status != http.StatusOK || w.n != len(creds.s.Credentials.Bytes) {
			b.Fatalf("credentials GET: status %d, %d bytes", w.status, w.n)
		}
	}
	serve() // identifies the caller, once for the connection
	b.ReportAllocs()
	for b.Loop() {
		serve()
	}
	b.StopTimer()
	if d := g.audit.Dropped(); d != 0 {
		b.Logf("%d audit records dropped", d)
	}
}

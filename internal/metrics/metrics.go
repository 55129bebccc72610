// Package metrics owns the agent's Prometheus metrics and the endpoint
// that serves them. Counters on the request path are resolved to their
// label values once, at start, so counting a request costs one atomic add.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/imds-agent/imds-agent/internal/imds"
	"github.com/imds-agent/imds-agent/internal/refresh"
	"github.com/imds-agent/imds-agent/internal/snapshot"
)

// statuses are the HTTP statuses the metadata handler sends.
var statuses = []int{200, 400, 401, 403, 404, 405, 429, 503}

func statusIndex(s int) int {
	for i, v := range statuses {
		if v == s {
			return i
		}
	}
	return -1
}

// Metrics holds every metric the agent exports.
type Metrics struct {
	reg            *prometheus.Registry
	requests       [][]prometheus.Counter // [route][status]
	refusals       []prometheus.Counter   // [reason]
	tokens         prometheus.Counter
	refreshOK      prometheus.Counter
	refreshFailed  *prometheus.CounterVec
	lookupFailed   *prometheus.CounterVec
	refreshLatency prometheus.Histogram
	auditDropped   prometheus.Counter
	reloadOK       prometheus.Gauge
	reloadTime     prometheus.Gauge
}

// Sources are read at scrape time.
type Sources struct {
	Snapshot    func() *snapshot.Snapshot
	Now         func() time.Time
	Connections func() int64
	Version     string
}

// New registers every metric.
func New(src Sources) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{reg: reg}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "imds_agent_requests_total",
		Help: "Metadata requests answered, by route and HTTP status.",
	}, []string{"route", "status"})
	for _, r := range imds.Routes() {
		row := make([]prometheus.Counter, len(statuses))
		for i, s := range statuses {
			row[i] = requests.WithLabelValues(r.String(), fmt.Sprint(s))
		}
		m.requests = append(m.requests, row)
	}
	refusals := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "imds_agent_refusals_total",
		Help: "Metadata requests refused, by reason.",
	}, []string{"reason"})
	for _, r := range imds.Reasons() {
		var c prometheus.Counter
		if r != imds.ReasonNone {
			c = refusals.WithLabelValues(r.String())
		}
		m.refusals = append(m.refusals, c)
	}
	m.tokens = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "imds_agent_tokens_issued_total",
		Help: "IMDSv2 session tokens issued.",
	})
	m.refreshOK = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "imds_agent_refresh_success_total",
		Help: "Successful sts:AssumeRole calls.",
	})
	m.refreshFailed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "imds_agent_refresh_failures_total",
		Help: "Failed sts:AssumeRole calls, by failure class.",
	}, []string{"class"})
	// Every class from the start, at 0, so that rate() and alerts see a
	// series before the first failure.
	m.lookupFailed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "imds_agent_profile_lookup_failures_total",
		Help: "Failed look-ups of the instance profile's role (iam:GetInstanceProfile), by failure class.",
	}, []string{"class"})
	for _, c := range refresh.ClassNames() {
		m.refreshFailed.WithLabelValues(c)
		m.lookupFailed.WithLabelValues(c)
	}
	m.refreshLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "imds_agent_refresh_duration_seconds",
		Help:    "Duration of sts:AssumeRole calls.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15},
	})
	m.auditDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "imds_agent_audit_records_dropped_total",
		Help: "Audit records dropped because the audit writer fell behind.",
	})
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "imds_agent_credentials_expiry_seconds",
		Help: "Seconds until the served credentials expire (negative once expired; absent state reads 0).",
	}, func() float64 {
		s := src.Snapshot()
		if s.State != snapshot.Ready {
			return 0
		}
		return s.Expiration.Sub(src.Now()).Seconds()
	})
	ready := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "imds_agent_credentials_ready",
		Help: "1 while unexpired credentials are served, else 0.",
	}, func() float64 {
		s := src.Snapshot()
		if s.State == snapshot.Ready && !s.Expired(src.Now()) {
			return 1
		}
		return 0
	})
	conns := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "imds_agent_client_connections",
		Help: "Open client connections to the metadata service.",
	}, func() float64 { return float64(src.Connections()) })
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "imds_agent_build_info",
		Help:        "The agent's version.",
		ConstLabels: prometheus.Labels{"version": src.Version},
	})
	info.Set(1)
	// Named as Prometheus names its own, so that one alert rule can
	// cover both.
	m.reloadOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "imds_agent_config_last_reload_successful",
		Help: "1 if the last reload of the configuration file took (or none was asked since the start), 0 if it was refused and the running configuration stayed.",
	})
	m.reloadTime = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "imds_agent_config_last_reload_success_timestamp_seconds",
		Help: "When the running configuration was loaded (Unix time): at start, or by the last reload that took.",
	})
	reg.MustRegister(requests, refusals, m.tokens, m.refreshOK, m.refreshFailed, m.lookupFailed, m.refreshLatency,
		m.auditDropped, expiry, ready, conns, info, m.reloadOK, m.reloadTime)
	return m
}

// Request counts one answered request.
func (m *Metrics) Request(route imds.Route, status int, reason imds.Reason) {
	if i := statusIndex(status); i >= 0 && int(route) < len(m.requests) {
		m.requests[route][i].Inc()
	}
	if reason != imds.ReasonNone && int(reason) < len(m.refusals) {
		m.refusals[reason].Inc()
	}
	if route == imds.RouteToken && status == http.StatusOK {
		m.tokens.Inc()
	}
}

// Refresh records one AssumeRole attempt.
func (m *Metrics) Refresh(err error, class string, took time.Duration) {
	m.refreshLatency.Observe(took.Seconds())
	if err == nil {
		m.refreshOK.Inc()
		return
	}
	m.refreshFailed.WithLabelValues(class).Inc()
}

// LookupFailed counts a failed look-up of the instance profile's role.
func (m *Metrics) LookupFailed(class string) { m.lookupFailed.WithLabelValues(class).Inc() }

// ConfigReload records the outcome of a reload of the configuration file
// at t (or of the start's load).
func (m *Metrics) ConfigReload(ok bool, t time.Time) {
	if !ok {
		m.reloadOK.Set(0)
		return
	}
	m.reloadOK.Set(1)
	m.reloadTime.Set(float64(t.UnixNano()) / 1e9)
}

// AuditDropped counts audit records the writer could not keep up with.
func (m *Metrics) AuditDropped() { m.auditDropped.Inc() }

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Listen binds the metrics address (a loopback one: the configuration
// refuses others, since the endpoint has no authentication and tells when
// this host's credentials fail or expire, and which requests it refuses).
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return ln, nil
}

// Serve serves /metrics on ln until ctx is done.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	log.Info("serving metrics", "address", ln.Addr().String())
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

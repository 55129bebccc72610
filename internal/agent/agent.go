// Package agent wires the parts of the daemon together: configuration,
// host facts, the credential manager, the metadata handler and its
// listeners, caller identification and policy, metrics, the audit trail,
// the admin socket, systemd notification and reloads. It owns their
// goroutines and their shutdown.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/imds-agent/imds-agent/internal/access"
	"github.com/imds-agent/imds-agent/internal/admin"
	"github.com/imds-agent/imds-agent/internal/audit"
	"github.com/imds-agent/imds-agent/internal/caller"
	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/hostinfo"
	"github.com/imds-agent/imds-agent/internal/imds"
	"github.com/imds-agent/imds-agent/internal/metrics"
	"github.com/imds-agent/imds-agent/internal/profile"
	"github.com/imds-agent/imds-agent/internal/refresh"
	"github.com/imds-agent/imds-agent/internal/source"
)

// ShutdownGrace is how long requests in progress may take to finish when
// the agent stops.
const ShutdownGrace = 5 * time.Second

// Options configure an agent.
type Options struct {
	Config *config.Config
	// ConfigPath is where Reload reads from; "" disables reloading.
	ConfigPath string
	Logger     *slog.Logger
	// LogLevel, if set, follows log.level across reloads.
	LogLevel *slog.LevelVar
	// AuditOutput receives audit records (default: standard error, where
	// journald collects them with the log).
	AuditOutput io.Writer
	Host        hostinfo.Host
	// Connect, if set, replaces loading the source credentials from the
	// SDK's shared configuration (dev mode connects to its emulator).
	Connect func(ctx context.Context) (refresh.Clients, error)
	Clock   refresh.Clock
	// CallTimeout bounds each STS and IAM call (0: the manager's default).
	CallTimeout time.Duration
	Version     string
	// Force claims the metadata address even where it looks taken (a real
	// EC2 instance, a route sending it elsewhere).
	Force bool
}

// Agent is the running daemon.
type Agent struct {
	o       Options
	log     *slog.Logger
	tokens  *imds.Tokens
	handler *imds.Handler
	manager *refresh.Manager
	server  *imds.Server
	metrics *metrics.Metrics
	audit   *audit.Logger
	gate    *gate
	memory  *releaser
	started time.Time

	statusChanged chan refresh.Status
	probeClient   *http.Client

	// boot is the configuration the agent started with: listen, link,
	// admin, metrics and audit settings keep its values until a restart.
	boot      *config.Config
	readySent atomic.Bool // READY=1 was sent; set under lifecycle
	stopping  atomic.Bool // set when shutdown begins: reloads are ignored from then on
	// lifecycle orders READY=1 and STOPPING=1: once STOPPING=1 is sent,
	// no READY=1 follows it (a reload that was running as the stop began).
	lifecycle sync.Mutex

	mu          sync.Mutex
	cfg         *config.Config // the newest valid configuration
	listeners   []net.Listener
	metricsAddr string
	listening   chan struct{}
	reload      reloadRecord
}

// reloadRecord says what became of the configuration file: when the
// running configuration was loaded (at start, or by the last reload that
// took), and the error of a reload refused since, with its time.
type reloadRecord struct {
	loaded   time.Time
	err      error
	failedAt time.Time
}

// New builds an agent from its configuration; nothing runs until Run.
func New(o Options) (*Agent, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = refresh.SystemClock()
	}
	if o.AuditOutput == nil {
		o.AuditOutput = os.Stderr
	}
	a := &Agent{
		o:             o,
		log:           o.Logger,
		boot:          o.Config,
		cfg:           o.Config,
		listening:     make(chan struct{}),
		statusChanged: make(chan refresh.Status, 1),
		started:       o.Clock.Now(),
	}
	meta, err := a.metadata(o.Config)
	if err != nil {
		return nil, err
	}
	a.tokens, err = imds.NewTokens(o.Clock.Now)
	if err != nil {
		return nil, err
	}
	a.manager = refresh.New(a.settings(o.Config, meta.Instance().ID), refresh.Options{
		Clock:       o.Clock,
		Logger:      o.Logger.With("component", "refresh"),
		CallTimeout: o.CallTimeout,
		OnRefresh: func(err error, class refresh.Class, took time.Duration) {
			a.metrics.Refresh(err, class.String(), took)
		},
		OnLookupFailure: func(class refresh.Class) { a.metrics.LookupFailed(class.String()) },
		OnStatus: func(st refresh.Status) {
			select {
			case <-a.statusChanged: // keep only the newest
			default:
			}
			a.statusChanged <- st
		},
	})
	a.gate = &gate{log: o.Logger.With("component", "http"), auditLog: o.Logger.With("component", "audit"), refusals: newRefusalLimiter(), denials: newRefusalLimiter()}
	a.gate.probe, a.probeClient = newProbe()
	a.metrics = metrics.New(metrics.Sources{
		Snapshot:    a.manager.Snapshot,
		Now:         o.Clock.Now,
		Connections: func() int64 { return a.server.Connections() },
		Version:     o.Version,
	})
	a.gate.metrics = a.metrics
	a.noteReload(nil, a.started)
	if o.Config.Log.Audit {
		a.audit = audit.New(o.AuditOutput, o.Config.Log.Format, a.metrics.AuditDropped)
		a.gate.audit = a.audit
	}
	rules, err := compileRules(o.Config, o.Config.ListenAddrPorts(), o.Logger)
	if err != nil {
		return nil, err
	}
	a.gate.rules.Store(rules)
	a.handler = imds.NewHandler(meta, a.manager, a.tokens, o.Clock.Now, a.gate)
	a.server = imds.NewServer(a.handler, o.Logger.With("component", "http"), a.gate.connValue)
	a.memory = newReleaser(a.server.Connections)
	a.server.OnQuiet(a.memory.quiet)
	return a, nil
}

// Manager returns the credential manager.
func (a *Agent) Manager() *refresh.Manager { return a.manager }

// Handler returns the metadata handler.
func (a *Agent) Handler() *imds.Handler { return a.handler }

// Listening is closed once every listen address is bound.
func (a *Agent) Listening() <-chan struct{} { return a.listening }

// Addrs returns the bound listen addresses (after Listening).
func (a *Agent) Addrs() []net.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]net.Addr, len(a.listeners))
	for i, ln := range a.listeners {
		out[i] = ln.Addr()
	}
	return out
}

// Run binds the listen addresses, then serves and refreshes until ctx is
// done, and shuts down gracefully.
func (a *Agent) Run(ctx context.Context) error {
	resolver, err := caller.NewResolver(caller.Options{Logger: a.log.With("component", "caller")})
	if err == nil {
		err = selfTest(resolver)
		if err != nil {
			resolver.Close()
		}
	}
	if err != nil {
		a.log.Warn("callers cannot be identified: each counts as a local process of an unknown user, so access rules fail closed (deny rules about users, groups and units refuse everyone, no allow rule admits anyone) and the hop limit for containers does not apply", "error", err)
	} else {
		a.gate.resolver = resolver
		defer resolver.Close()
	}
	if err := a.listen(); err != nil {
		return err
	}
	// The audit writer outlives the server: requests still being answered
	// while it drains are recorded too, and it stops once the server has.
	auditCtx, stopAudit := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAudit()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.manager.Run(ctx) })
	if a.audit != nil {
		g.Go(func() error { return a.audit.Run(auditCtx) })
	}
	a.mu.Lock()
	for _, ln := range a.listeners {
		g.Go(func() error {
			if err := a.server.Serve(ln); err != nil {
				return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
			}
			return nil
		})
	}
	a.mu.Unlock()
	if srv := a.startAdmin(); srv != nil {
		g.Go(srv.Serve)
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownGrace)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				a.log.Warn("admin socket: a request did not finish before shutdown", "error", err)
			}
			return nil
		})
	}
	if addr := a.boot.Metrics.Listen; addr != "" {
		ln, err := metrics.Listen(addr)
		if err != nil {
			a.log.Warn("metrics are off", "error", err)
		} else {
			a.mu.Lock()
			a.metricsAddr = ln.Addr().String()
			a.mu.Unlock()
			g.Go(func() error { return a.metrics.Serve(ctx, ln, a.log.With("component", "metrics")) })
		}
	}
	g.Go(func() error { return a.superviseSystemd(ctx) })
	g.Go(func() error {
		<-ctx.Done()
		a.notifyStopping()
		a.log.Info("stopping")
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownGrace)
		defer cancel()
		defer a.memory.stop() // the connections closing would arm it
		defer stopAudit()     // the last answers are recorded: flush them
		err := a.server.Shutdown(sctx)
		a.gate.noticeSuppressed()
		return err
	})
	err = g.Wait()
	a.log.Info("stopped")
	return err
}

// selfTest checks that the resolver finds the agent's own loopback
// connection: a kernel without TCP sock_diag would report every caller as
// not local, and the hop limit would then refuse everyone.
func selfTest(r *caller.Resolver) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("caller self-test: %w", err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return fmt.Errorf("caller self-test: %w", err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("caller self-test: %w", err)
	}
	defer s.Close()
	info, err := r.Lookup(s.LocalAddr().(*net.TCPAddr).AddrPort(), s.RemoteAddr().(*net.TCPAddr).AddrPort())
	if err != nil {
		return fmt.Errorf("caller self-test: %w", err)
	}
	if !info.Local || info.UID != uint32(os.Getuid()) {
		return fmt.Errorf("caller self-test: the kernel did not report the agent's own connection (sock_diag for TCP missing?)")
	}
	return nil
}

func (a *Agent) listen() error {
	addrs, err := a.prepareLink(a.boot)
	if err != nil {
		return err
	}
	var lns []net.Listener
	var bound []netip.AddrPort
	for _, ap := range addrs {
		ln, err := listenTCP(ap)
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			return fmt.Errorf("listening on %s: %w", ap, err)
		}
		lns = append(lns, ln)
		bound = append(bound, ln.Addr().(*net.TCPAddr).AddrPort())
		a.log.Info("serving instance metadata", "address", ln.Addr().String())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.listeners = lns
	// The rules New compiled name the configured addresses; a port of 0
	// became a real one, so the Host check is given the bound addresses.
	rules := *a.gate.rules.Load()
	rules.hosts = allowedHosts(bound)
	a.gate.rules.Store(&rules)
	close(a.listening)
	return nil
}

// maxBacklog asks for the longest accept queue the host allows: the
// kernel lowers it to net.core.somaxconn.
const maxBacklog = 65535

// listenTCP opens a metadata listener. Go sizes the accept queue from
// /proc/sys/net/core/somaxconn, and falls back to 128 when it cannot read
// it, as under the unit's ProcSubset=pid; a burst of SDK processes
// starting together would then find connections refused. So the queue is
// set again, as long as the host allows, on the listening socket itself
// (listen(2) on a listening socket only changes its backlog).
//
// No TCP keep-alive probes: clients are on this host, and idle connections
// are closed after IdleTimeout anyway. That saves the socket options net
// would set on every accepted connection.
func listenTCP(ap netip.AddrPort) (net.Listener, error) {
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", ap.String())
	if err != nil {
		return nil, err
	}
	raw, err := ln.(*net.TCPListener).SyscallConn()
	if err == nil {
		cerr := raw.Control(func(fd uintptr) { err = unix.Listen(int(fd), maxBacklog) })
		err = errors.Join(cerr, err)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("setting the accept queue: %w", err)
	}
	return ln, nil
}

// startAdmin opens the admin socket; trouble is a warning, never fatal.
func (a *Agent) startAdmin() *admin.Server {
	srv, err := admin.Listen(a.boot.Admin.Socket, a, a.log.With("component", "admin"))
	if err != nil {
		a.log.Warn("the admin socket is unavailable; status and refresh will not reach this agent", "error", err)
		return nil
	}
	a.log.Info("admin socket open", "path", a.boot.Admin.Socket)
	return srv
}

// Status implements admin.Backend.
func (a *Agent) Status() admin.Status {
	st := a.manager.Status()
	a.mu.Lock()
	metricsAddr := a.metricsAddr
	reload := a.reload
	pending := restartOnly(a.boot, a.cfg)
	a.mu.Unlock()
	in := a.handler.Metadata().Instance()
	opts := a.handler.Metadata().Options()
	out := admin.Status{
		Version:             a.o.Version,
		PID:                 os.Getpid(),
		Started:             a.started,
		InstanceID:          in.ID,
		Region:              in.Region,
		Target:              st.Target,
		State:               st.State.String(),
		Role:                st.Role.Name,
		RoleARN:             st.Role.ARN,
		InstanceProfile:     st.Role.ProfileARN,
		AccessKeySuffix:     st.KeySuffix,
		Expiration:          st.Expiration,
		LastRefresh:         st.LastRefresh,
		NextRefresh:         st.NextRefresh,
		LastError:           st.LastError,
		LastErrorClass:      st.LastErrorClass,
		LastErrorAt:         st.LastErrorAt,
		ConsecutiveFailures: st.ConsecutiveFailures,
		Refreshes:           st.Refreshes,
		Failures:            st.Failures,
		LookupFailures:      st.LookupFailures,
		Link:                a.boot.Listen.Link,
		Clients:             a.server.Connections(),
		ClientsShed:         a.server.Shed(),
		TokensRequired:      opts.TokensRequired,
		EndpointEnabled:     opts.Enabled,
		Metrics:             metricsAddr,
		ConfigLoaded:        reload.loaded,
		ReloadFailedAt:      reload.failedAt,
		RestartPending:      pending,
	}
	if reload.err != nil {
		out.ReloadError = reload.err.Error()
	}
	for _, ad := range a.Addrs() {
		out.Listen = append(out.Listen, ad.String())
	}
	if a.audit != nil {
		out.AuditDropped = a.audit.Dropped()
	}
	return out
}

// Refresh implements admin.Backend.
func (a *Agent) Refresh(ctx context.Context) error { return a.manager.Refresh(ctx) }

// Reload re-reads the configuration file. An invalid file is reported and
// the running configuration stays.
func (a *Agent) Reload() error {
	if a.o.ConfigPath == "" {
		err := errors.New("this agent was not started from a configuration file")
		a.log.Error("reload refused", "error", err)
		return err
	}
	select {
	case <-a.listening:
	default:
		a.log.Warn("reload ignored: the agent is still starting")
		return errors.New("still starting")
	}
	if a.stopping.Load() {
		// A reload now would tell systemd READY=1 after STOPPING=1 and
		// hold up the exit while the file is read.
		a.log.Warn("reload ignored: the agent is stopping")
		return errors.New("stopping")
	}
	if a.reloading() {
		defer a.notifyReady()
	}
	cfg, err := config.Load(a.o.ConfigPath)
	if err == nil {
		err = a.apply(cfg)
	}
	a.noteReload(err, a.o.Clock.Now())
	if err != nil {
		a.log.Error("reload failed; the running configuration stays", "error", err)
		return err
	}
	a.log.Info("configuration reloaded", "path", a.o.ConfigPath)
	return nil
}

// noteReload records what a reload (or the start, with nil) at t did, for
// status, STATUS= and the metrics: systemctl reload only sends a signal,
// and cannot tell that the file was refused.
func (a *Agent) noteReload(err error, t time.Time) {
	a.mu.Lock()
	if err != nil {
		a.reload.err, a.reload.failedAt = err, t
	} else {
		a.reload = reloadRecord{loaded: t}
	}
	a.mu.Unlock()
	a.metrics.ConfigReload(err == nil, t)
}

func (a *Agent) apply(cfg *config.Config) error {
	meta, err := a.metadata(cfg)
	if err != nil {
		return err
	}
	settings := a.settings(cfg, meta.Instance().ID)
	a.mu.Lock()
	running := a.cfg
	a.mu.Unlock()
	if err := a.checkSource(cfg, running, settings); err != nil {
		return err
	}
	a.mu.Lock()
	var bound []netip.AddrPort
	for _, ln := range a.listeners {
		bound = append(bound, ln.Addr().(*net.TCPAddr).AddrPort())
	}
	rules, err := compileRules(cfg, bound, a.log)
	if err != nil {
		a.mu.Unlock()
		return err
	}
	a.cfg = cfg
	a.mu.Unlock()
	if keys := restartOnly(a.boot, cfg); len(keys) > 0 {
		attrs := []any{"keys", strings.Join(keys, ", ")}
		if a.boot.Admin.Socket != cfg.Admin.Socket {
			// `imds-agent status` reads the file's socket, where no
			// agent answers until the restart.
			attrs = append(attrs, "admin_socket_in_use", a.boot.Admin.Socket)
		}
		a.log.Warn("these settings change only on restart; the running ones stay", attrs...)
	}
	a.gate.rules.Store(rules)
	a.handler.SetMetadata(meta)
	a.manager.Reload(settings)
	if a.o.LogLevel != nil {
		a.o.LogLevel.Set(Level(cfg.Log.Level))
	}
	return nil
}

// Check makes the checks of cfg that a start makes beyond config.Load's,
// without starting anything: the instance data (a user_data_file that
// cannot be read, say) and the access rules (a user or group that does not
// exist). The source credentials are not among them: a start goes on
// without them, and a reload loads them only when their settings change.
// It returns the instance the agent would present.
func Check(cfg *config.Config, host hostinfo.Host, log *slog.Logger) (imds.Instance, error) {
	in, err := host.Instance(cfg.Instance, cfg.Listen.Link)
	if err != nil {
		return imds.Instance{}, err
	}
	if _, err := access.Compile(cfg.Access, log); err != nil {
		return imds.Instance{}, err
	}
	return in, nil
}

func (a *Agent) metadata(cfg *config.Config) (*imds.Metadata, error) {
	in, err := a.o.Host.Instance(cfg.Instance, cfg.Listen.Link)
	if err != nil {
		return nil, err
	}
	if in.AccountID == "" {
		// The identity document names the role's account once the role
		// is known; before, the one the configuration names, so that it
		// does not change under a client that read it at its start.
		in.AccountID = profile.ConfiguredAccount(cfg.Credentials.RoleARN, cfg.Credentials.InstanceProfile)
	}
	m := cfg.MetadataOptions
	return imds.NewMetadata(in, imds.Options{
		Enabled:        m.HTTPEndpoint == config.Enabled,
		TokensRequired: m.HTTPTokens == config.Required,
		HopLimit:       m.HTTPPutResponseHopLimit,
	}), nil
}

// sourceCheckTimeout bounds loading new source settings on reload (local
// files only: no call leaves the host).
const sourceCheckTimeout = 10 * time.Second

// restartOnly names the settings of cfg that differ from those the agent
// started with (boot) and take effect only on restart: the listen, link,
// admin, metrics and audit settings, log.format, and http_protocol_ipv6,
// which decides the addresses bound.
func restartOnly(boot, cfg *config.Config) []string {
	var keys []string
	for _, k := range []struct {
		key     string
		differs bool
	}{
		{"listen.addresses", !slices.Equal(boot.Listen.Addresses, cfg.Listen.Addresses)},
		{"listen.link", boot.Listen.Link != cfg.Listen.Link},
		{"admin.socket", boot.Admin.Socket != cfg.Admin.Socket},
		{"metrics.listen", boot.Metrics.Listen != cfg.Metrics.Listen},
		{"log.audit", boot.Log.Audit != cfg.Log.Audit},
		{"log.format", boot.Log.Format != cfg.Log.Format},
		{"metadata_options.http_protocol_ipv6", boot.MetadataOptions.HTTPProtocolIPv6 != cfg.MetadataOptions.HTTPProtocolIPv6},
	} {
		if k.differs {
			keys = append(keys, k.key)
		}
	}
	return keys
}

// checkSource refuses new source settings (a region, profile or shared
// file) that do not load while the running ones do: the running clients
// are dropped on reload, and new settings that cannot be loaded (a profile
// that does not exist, a file others can read) would leave nothing to call
// STS with, with the error showing only at the next refresh. Without a
// role nothing calls STS, and when the running settings do not load
// either, the reload loses nothing: it goes ahead, with a warning.
func (a *Agent) checkSource(cfg, running *config.Config, settings refresh.Settings) error {
	if settings.Target.None() || reflect.DeepEqual(SourceSettings(cfg), SourceSettings(running)) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), sourceCheckTimeout)
	defer cancel()
	_, err := settings.Connect(ctx)
	if err == nil {
		return nil
	}
	if _, rerr := a.settings(running, "").Connect(ctx); rerr != nil {
		a.log.Warn("the new source credential settings do not load, nor do the running ones; applying them", "error", err)
		return nil
	}
	return fmt.Errorf("credentials: the new source credential settings (region, source_profile, shared files) do not load, while the running ones do: %w", err)
}

// SourceSettings says where cfg finds the host's source credentials.
func SourceSettings(cfg *config.Config) source.Settings {
	c := cfg.Credentials
	return source.Settings{
		Region:                 cfg.Instance.Region,
		Profile:                c.SourceProfile,
		SharedConfigFiles:      c.SharedConfigFiles,
		SharedCredentialsFiles: c.SharedCredentialsFiles,
	}
}

func (a *Agent) settings(cfg *config.Config, instanceID string) refresh.Settings {
	c := cfg.Credentials
	connect := a.o.Connect
	if connect == nil {
		connect = source.Connector(SourceSettings(cfg))
	}
	return refresh.Settings{
		Target:         profile.Target{InstanceProfile: c.InstanceProfile, RoleARN: c.RoleARN},
		Connect:        connect,
		SessionName:    instanceID,
		ExternalID:     c.ExternalID,
		Duration:       c.SessionDuration.D(),
		Window:         time.Duration(c.RefreshBeforeExpiry),
		ProfileRecheck: c.ProfileRecheck.D(),
	}
}

// Level maps a log.level value to a slog level.
func Level(s string) slog.Level {
	switch s {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

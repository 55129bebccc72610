// Package agent wires the parts of the daemon together: configuration,
// host facts, the credential manager, the metadata handler and its
// listeners, and reloads. It owns their goroutines and their shutdown.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"golang.org/x/sync/errgroup"

	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/hostinfo"
	"github.com/imds-agent/imds-agent/internal/imds"
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
	Host     hostinfo.Host
	// SourceOptions are added to the SDK options the source credentials are
	// loaded with (dev mode points them at its emulator).
	SourceOptions []func(*awsconfig.LoadOptions) error
	Clock         refresh.Clock
	// CallTimeout bounds each STS and IAM call (0: the manager's default).
	CallTimeout time.Duration
}

// Agent is the running daemon.
type Agent struct {
	o       Options
	log     *slog.Logger
	tokens  *imds.Tokens
	handler *imds.Handler
	manager *refresh.Manager
	server  *imds.Server

	mu        sync.Mutex
	cfg       *config.Config
	listeners []net.Listener
	listening chan struct{}
}

// New builds an agent from its configuration; nothing runs until Run.
func New(o Options) (*Agent, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = refresh.SystemClock()
	}
	a := &Agent{o: o, log: o.Logger, cfg: o.Config, listening: make(chan struct{})}
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
	})
	a.handler = imds.NewHandler(meta, a.manager, a.tokens, o.Clock.Now, nil)
	a.server = imds.NewServer(a.handler, o.Logger.With("component", "http"), nil)
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
	if err := a.listen(); err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.manager.Run(ctx) })
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
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownGrace)
		defer cancel()
		return a.server.Shutdown(sctx)
	})
	err := g.Wait()
	a.log.Info("stopped")
	return err
}

func (a *Agent) listen() error {
	var lns []net.Listener
	for _, ap := range a.cfg.ListenAddrPorts() {
		ln, err := net.Listen("tcp", ap.String())
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			return fmt.Errorf("listening on %s: %w", ap, err)
		}
		lns = append(lns, ln)
		a.log.Info("serving instance metadata", "address", ln.Addr().String())
	}
	a.mu.Lock()
	a.listeners = lns
	a.mu.Unlock()
	close(a.listening)
	return nil
}

// Reload re-reads the configuration file. An invalid file is reported and
// the running configuration stays.
func (a *Agent) Reload() error {
	if a.o.ConfigPath == "" {
		return errors.New("this agent was not started from a configuration file")
	}
	cfg, err := config.Load(a.o.ConfigPath)
	if err == nil {
		err = a.apply(cfg)
	}
	if err != nil {
		a.log.Error("reload failed; the running configuration stays", "error", err)
		return err
	}
	a.log.Info("configuration reloaded", "path", a.o.ConfigPath)
	return nil
}

func (a *Agent) apply(cfg *config.Config) error {
	meta, err := a.metadata(cfg)
	if err != nil {
		return err
	}
	a.mu.Lock()
	old := a.cfg
	a.cfg = cfg
	a.mu.Unlock()
	if !slices.Equal(old.Listen.Addresses, cfg.Listen.Addresses) || old.Listen.Link != cfg.Listen.Link {
		a.log.Warn("listen settings change only on restart", "running", old.Listen.Addresses, "configured", cfg.Listen.Addresses)
	}
	a.handler.SetMetadata(meta)
	a.manager.Reload(a.settings(cfg, meta.Instance().ID))
	if a.o.LogLevel != nil {
		a.o.LogLevel.Set(Level(cfg.Log.Level))
	}
	return nil
}

func (a *Agent) metadata(cfg *config.Config) (*imds.Metadata, error) {
	in, err := a.o.Host.Instance(cfg.Instance, cfg.Listen.Link)
	if err != nil {
		return nil, err
	}
	m := cfg.MetadataOptions
	return imds.NewMetadata(in, imds.Options{
		Enabled:        m.HTTPEndpoint == config.Enabled,
		TokensRequired: m.HTTPTokens == config.Required,
		HopLimit:       m.HTTPPutResponseHopLimit,
	}), nil
}

func (a *Agent) settings(cfg *config.Config, instanceID string) refresh.Settings {
	c := cfg.Credentials
	return refresh.Settings{
		Target: profile.Target{InstanceProfile: c.InstanceProfile, RoleARN: c.RoleARN},
		Connect: source.Connector(source.Settings{
			Region:                 cfg.Instance.Region,
			Profile:                c.SourceProfile,
			SharedConfigFiles:      c.SharedConfigFiles,
			SharedCredentialsFiles: c.SharedCredentialsFiles,
			Extra:                  a.o.SourceOptions,
		}),
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

// Command imds-agent makes a Linux host look like an EC2 instance with an
// instance profile to every AWS SDK on it. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/imds-agent/imds-agent/internal/agent"
	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/hostinfo"
	"github.com/imds-agent/imds-agent/internal/imds"
	"github.com/imds-agent/imds-agent/internal/service"
	"github.com/imds-agent/imds-agent/internal/source"
	"github.com/imds-agent/imds-agent/systemd"
)

// Set at build time with -ldflags "-X main.version=… -X main.commit=…".
var (
	version = "0.0.0-dev"
	commit  = ""
)

const usage = `imds-agent: the EC2 instance metadata service, with instance-profile
credentials, for any Linux host.

Usage:
  imds-agent run [--config PATH] [--force]   run the daemon (default config ` + config.DefaultPath + `)
  imds-agent setup-link [--config PATH] [--force]
                                             create the link and addresses, then exit (needs CAP_NET_ADMIN)
  imds-agent cleanup [--config PATH]         remove the link and its addresses
  imds-agent dev [--listen ADDR]             everything on loopback with a built-in AWS emulator
  imds-agent check-config [--config PATH]    validate the config and print the effective one
  imds-agent status [--config PATH | --socket PATH] [--json]
                                             show the running agent's role, credentials and errors
  imds-agent refresh [--config PATH | --socket PATH]
                                             make the running agent obtain new credentials now
  imds-agent install|start|stop              manage the systemd service where no package is used
  imds-agent uninstall [--config PATH]       remove it, with the link the config names
  imds-agent version                         print version, commit and Go version
`

// exitUsage is the exit status for a command line that cannot be run.
const exitUsage = 2

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("imds-agent "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFlag := func() *string { return fs.String("config", config.DefaultPath, "configuration file") }
	var err error
	switch cmd {
	case "run":
		configPath := configFlag()
		force := fs.Bool("force", false, "claim the metadata address even on what looks like a real EC2 instance")
		if code, ok := parse(fs, args); !ok {
			return code
		}
		err = runDaemon(*configPath, *force, stderr)
	case "setup-link":
		configPath := configFlag()
		force := fs.Bool("force", false, "claim the metadata address even on what looks like a real EC2 instance")
		if code, ok := parse(fs, args); !ok {
			return code
		}
		err = setupLink(*configPath, *force, stdout, stderr)
	case "cleanup":
		configPath := configFlag()
		if code, ok := parse(fs, args); !ok {
			return code
		}
		err = cleanup(*configPath, stdout, stderr)
	case "dev":
		listen := fs.String("listen", "127.0.0.1:1338", "address to serve instance metadata on")
		if code, ok := parse(fs, args); !ok {
			return code
		}
		err = runDev(*listen, stdout, stderr)
	case "check-config":
		configPath := configFlag()
		if code, ok := parse(fs, args); !ok {
			return code
		}
		err = checkConfig(*configPath, stdout, stderr)
	case "status":
		configPath := configFlag()
		asJSON := fs.Bool("json", false, "print the status as JSON")
		socket := fs.String("socket", "", "the agent's admin socket (default: admin.socket from the config)")
		if code, ok := parse(fs, args); !ok {
			return code
		}
		err = showStatus(*configPath, *socket, *asJSON, stdout, stderr)
	case "refresh":
		configPath := configFlag()
		socket := fs.String("socket", "", "the agent's admin socket (default: admin.socket from the config)")
		if code, ok := parse(fs, args); !ok {
			return code
		}
		err = requestRefresh(*configPath, *socket, stdout, stderr)
	case "version":
		if code, ok := parse(fs, args); !ok {
			return code
		}
		fmt.Fprintln(stdout, versionString())
	case "install", "uninstall", "start", "stop":
		configPath := new(string)
		if cmd == "uninstall" { // for the link it removes
			configPath = configFlag()
		}
		if code, ok := parse(fs, args); !ok {
			return code
		}
		err = controlService(cmd, *configPath, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "imds-agent: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
	if err != nil {
		fmt.Fprintf(stderr, "imds-agent %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

// parse parses a command's flags. When it returns false the command is
// not run, and the process exits with code: 0 after -h, which printed the
// flags, and exitUsage after a bad command line.
func parse(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return exitUsage, false
	}
	return 0, true
}

func versionString() string {
	var settings []debug.BuildSetting
	if bi, ok := debug.ReadBuildInfo(); ok {
		settings = bi.Settings
	}
	return fmt.Sprintf("imds-agent %s (commit %s, %s, %s/%s)", version, revision(commit, settings), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// revision names the commit built: the one the Makefile stamped (marked
// -dirty there when tracked files differed from it), else the one go build
// recorded, marked -dirty the same way when the tree was modified.
func revision(stamped string, settings []debug.BuildSetting) string {
	if stamped != "" {
		return stamped
	}
	rev, modified := "", false
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	switch {
	case rev == "":
		return "unknown"
	case modified:
		return rev + "-dirty"
	}
	return rev
}

func setupLink(path string, force bool, stdout, stderr io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	if cfg.Listen.Link == "" {
		fmt.Fprintln(stdout, "listen.link is empty: no link to set up")
		return nil
	}
	res, err := agent.SetupLink(cfg, force, newLogger(stderr, cfg.Log.Format, levelOf(cfg.Log.Level)))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "link %s (%s) holds %v; changed: %v\n", res.Link, res.Kind, res.Addrs, res.Changed)
	return nil
}

// cleanup removes the link, and any other the agent marked as its own (an
// earlier listen.link's). It works without a readable config (a package
// being purged): the default link name is used then.
func cleanup(path string, stdout, stderr io.Writer) error {
	link := config.DefaultLink
	cfg, err := config.Load(path)
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "imds-agent cleanup: %v; removing the default link %s\n", err, link)
	default:
		link = cfg.Listen.Link
	}
	if err := agent.CleanupLink(link, newLogger(stderr, "text", levelOf("info"))); err != nil {
		return err
	}
	if link == "" {
		fmt.Fprintln(stdout, "listen.link is empty: removed the links the agent marked as its own, if any")
		return nil
	}
	fmt.Fprintf(stdout, "link %s removed (or was not there), with any other the agent marked as its own\n", link)
	return nil
}

// controlService installs, removes, starts or stops the service on a host
// without the package. Uninstalling also removes the link, which the agent
// keeps when it merely stops.
func controlService(action, path string, stdout, stderr io.Writer) error {
	return service.Control(action, service.Options{
		Out: stdout,
		Cleanup: func() error {
			return cleanup(path, stdout, stderr)
		},
	})
}

func levelOf(s string) *slog.LevelVar {
	v := new(slog.LevelVar)
	v.Set(agent.Level(s))
	return v
}

// checkConfig validates the file as a start of the agent would (but for
// what only the running agent can find out: the addresses it can claim and
// whether STS takes the source credentials), with the ownership and modes
// of the source credential files, and prints the effective configuration.
func checkConfig(path string, stdout, stderr io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	in, err := agent.Check(cfg, hostinfo.System(), newLogger(stderr, cfg.Log.Format, levelOf(cfg.Log.Level)))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	// A start goes on without source credentials it refuses, and serves
	// none: for whoever checks a file (an upgrade deciding whether to
	// restart the agent, say), that is no valid configuration.
	settings := agent.SourceSettings(cfg)
	err = source.CheckSettings(settings, source.Service())
	if err == nil && (cfg.Credentials.InstanceProfile != "" || cfg.Credentials.RoleARN != "") {
		// What a start loads next (an agent without a role loads nothing):
		// a source_profile the files do not have, say.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err = source.LoadProfile(ctx, settings)
		cancel()
		switch {
		case errors.Is(err, source.ErrExcludedSource):
			// Nothing in the files or in this environment; the
			// service's (an EnvironmentFile) may have some.
			fmt.Fprintf(stderr, "imds-agent check-config: warning: no source credentials in the shared files or in this environment: the agent will serve none unless its own environment has some\n")
			err = nil
		case err != nil && cfg.Credentials.SourceProfile == "":
			// Without a source_profile the SDK takes AWS_PROFILE from the
			// environment, and this one (an administrator's shell, a
			// package script) need not be the service's.
			fmt.Fprintf(stderr, "imds-agent check-config: warning: the default source profile does not load in this environment (%v); the service's environment decides which profile it loads\n", err)
			err = nil
		}
	}
	switch {
	case errors.Is(err, fs.ErrPermission):
		fmt.Fprintf(stderr, "imds-agent check-config: warning: the source credential files (and what they name) were not checked (%v); root can check them\n", err)
	case err != nil:
		return fmt.Errorf("%s: the agent would start but serve no credentials: %w", path, err)
	}
	sandboxWarnings(cfg, stderr)
	out, err := cfg.Marshal(fromHost(cfg, in))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# %s is valid; the effective configuration:\n%s", path, out)
	return nil
}

// sandboxWarnings warns of the files cfg names that the service unit's
// sandbox hides from the agent: they pass the check, run as root outside
// the sandbox, and the service would not find them.
func sandboxWarnings(cfg *config.Config, stderr io.Writer) {
	warn := func(key, path string) {
		if dir := systemd.SandboxHidden(path); dir != "" {
			fmt.Fprintf(stderr, "imds-agent check-config: warning: %s: %s is under %s, which the sandbox of %s hides (ProtectHome, PrivateTmp): the service will not find it there\n",
				key, path, dir, systemd.UnitName)
		}
	}
	c := cfg.Credentials
	warn("instance.user_data_file", cfg.Instance.UserDataFile)
	for _, p := range c.SharedConfigFiles {
		warn("credentials.shared_config_files", p)
	}
	for _, p := range c.SharedCredentialsFiles {
		warn("credentials.shared_credentials_files", p)
	}
	for _, p := range source.NamedFiles(agent.SourceSettings(cfg)) {
		warn("a file the source credentials' profile names", p)
	}
}

// fromHost fills the instance values the file leaves to the host with what
// the agent would derive from it now, and returns their notes: they follow
// the host, and are not worth copying into a file shared by hosts.
func fromHost(cfg *config.Config, in imds.Instance) map[string]string {
	notes := map[string]string{}
	for _, f := range []struct {
		path    string
		set     *string
		derived string
	}{
		{"instance.id", &cfg.Instance.ID, in.ID},
		{"instance.ami_id", &cfg.Instance.AMIID, in.AMIID},
		{"instance.hostname", &cfg.Instance.Hostname, in.Hostname},
		{"instance.local_hostname", &cfg.Instance.LocalHostname, in.LocalHostname},
		{"instance.local_ipv4", &cfg.Instance.LocalIPv4, in.LocalIPv4},
		{"instance.mac", &cfg.Instance.MAC, in.MAC},
	} {
		if *f.set == "" && f.derived != "" {
			*f.set = f.derived
			notes[f.path] = "from this host"
		}
	}
	if cfg.Instance.Type == "" {
		cfg.Instance.Type = in.Type // the default, the same on every host
	}
	return notes
}

// newLogger returns the agent's logger, writing to w (journald captures
// stderr) at a level that reloads can change.
func newLogger(w io.Writer, format string, level *slog.LevelVar) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// signals returns a context cancelled by SIGINT or SIGTERM and a channel of
// SIGHUPs. The SIGHUP handler is installed before anything else runs: Go's
// default action for SIGHUP is to exit.
func signals() (context.Context, context.CancelFunc, <-chan os.Signal) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	return ctx, func() { stop(); signal.Stop(hup) }, hup
}

func runDaemon(path string, force bool, stderr io.Writer) error {
	agent.TuneGC()
	ctx, stop, hup := signals()
	defer stop()
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	level := levelOf(cfg.Log.Level)
	log := newLogger(stderr, cfg.Log.Format, level)
	if removed := source.SealEnvironment(); removed != nil {
		log.Warn("the environment holds variables of a container credentials endpoint, which the agent never uses; removed, so that no credential_process it starts uses one either", "variables", removed)
	}
	a, err := agent.New(agent.Options{
		Config:     cfg,
		ConfigPath: path,
		Logger:     log,
		LogLevel:   level,
		Host:       hostinfo.System(),
		Version:    version,
		Force:      force,
	})
	if err != nil {
		return err
	}
	log.Info("starting", "version", version, "config", path)
	return serve(ctx, a, hup)
}

// serve runs a until ctx is done, reloading on SIGHUP.
func serve(ctx context.Context, a *agent.Agent, hup <-chan os.Signal) error {
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	for {
		select {
		case err := <-done:
			return err
		case <-hup:
			_ = a.Reload() // a failed reload is logged and changes nothing
		}
	}
}

// devUnset are the settings that would make an SDK take credentials from
// somewhere other than the metadata service (or not ask it at all), or send
// STS and IAM calls elsewhere than the emulator: dev's banner unsets them.
var devUnset = []string{
	"AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
	"AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
	"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
	"AWS_EC2_METADATA_DISABLED", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_IAM",
}

func runDev(listen string, stdout, stderr io.Writer) error {
	agent.TuneGC()
	ctx, stop, hup := signals()
	defer stop()
	level := new(slog.LevelVar)
	log := newLogger(stderr, "text", level)
	host := hostinfo.System()
	dev, err := agent.StartDev(listen, host, log)
	if err != nil {
		return err
	}
	defer dev.Close()
	a, err := agent.New(agent.Options{
		Config:   dev.Config,
		Logger:   log,
		LogLevel: level,
		Host:     host,
		Connect:  dev.Connect,
		Version:  version,
	})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- serve(ctx, a, hup) }()
	select {
	case <-a.Listening():
	case err := <-done:
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%w (another program has the port: choose another with --listen 127.0.0.1:PORT)", err)
		}
		return err
	}
	addr := a.Addrs()[0].String()
	self, err := os.Executable() // under go run, a binary that lasts as long as this one
	if err != nil {
		self = "imds-agent"
	}
	fmt.Fprintf(stdout, `imds-agent dev: instance metadata on http://%[1]s (tokens required), AWS emulator (STS, IAM) on %[2]s
Instance profile %[3]s, role %[4]s, account %[5]s. Ctrl-C stops.

In another shell (the unset and the empty config files keep your own AWS settings out of the way):
  unset %[8]s
  export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://%[1]s/ AWS_ENDPOINT_URL=%[2]s AWS_REGION=%[6]s AWS_DEFAULT_REGION=%[6]s AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null NO_PROXY='*'
  aws sts get-caller-identity --endpoint-url %[2]s
Status: %[9]s status --socket %[7]s
`, addr, dev.Emulator.URL, dev.Config.Credentials.InstanceProfile, agent.DevRole, agent.DevAccount, dev.Config.Instance.Region, dev.Config.Admin.Socket,
		strings.Join(devUnset, " "), self)
	err = <-done
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

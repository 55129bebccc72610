// Command bench measures what serving credentials costs the agent beyond
// what the kernel and net/http must spend anyway. In one run on one machine
// it starts the agent (`imds-agent dev`, the built binary, audit on) and a
// floor server (bench/floor: bare net/http answering the same requests with
// fixed bytes), drives both in turn over several interleaved rounds with
// the same load generator, and prints medians and agent/floor ratios for
// the cold flow of a fresh SDK process and the warm flow of a long-lived
// one, with the agent's resource figures. It exits non-zero if any answer
// was not a 200 or an audit record is missing. See bench/README.md.
//
// Everything stays on 127.0.0.1; the agent always runs as `dev --listen
// 127.0.0.1:PORT`.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

func main() {
	name, cmd, args := "bench", run, os.Args[1:]
	if len(args) > 0 && args[0] == "loadgen" {
		name, cmd, args = "loadgen", loadgenMain, args[1:]
	}
	switch err := cmd(args); {
	case errors.Is(err, flag.ErrHelp): // -h: the flags were printed
	case err != nil:
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

type options struct {
	rounds      int
	duration    time.Duration
	warmup      time.Duration
	coldClients int
	warmConns   int
	tokens      int64
	idle        time.Duration
	readyStarts int
	pin         bool
	serverCPU   string
	genCPU      string
	serverProcs int
	genProcs    int
	keep        bool
	sideRounds  int
}

// parseOptions reads the command line.
func parseOptions(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o options
	fs.IntVar(&o.rounds, "rounds", 6, "rounds (each: floor and agent, warm and cold); an even number lets each server go first in as many pairs as the other")
	fs.DurationVar(&o.duration, "duration", 8*time.Second, "measured window of each load run")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured start of each load run")
	fs.IntVar(&o.coldClients, "cold-clients", 32, "concurrent fresh SDK processes in the cold flow")
	fs.IntVar(&o.warmConns, "warm-conns", 32, "keep-alive connections in the warm flow")
	fs.Int64Var(&o.tokens, "tokens", 1_000_000, "tokens issued before the second RSS reading")
	fs.DurationVar(&o.idle, "idle", 60*time.Second, "idle period for the idle CPU figure")
	fs.IntVar(&o.readyStarts, "ready-starts", 5, "agent starts timed to READY=1 (the last one is benchmarked)")
	fs.BoolVar(&o.pin, "pin", true, "pin servers and generator to separate CPUs with taskset")
	fs.StringVar(&o.serverCPU, "server-cpu", "1", "CPU list for the servers (with -pin)")
	fs.StringVar(&o.genCPU, "gen-cpu", "0", "CPU list for the load generator (with -pin)")
	fs.IntVar(&o.serverProcs, "server-procs", 1, "GOMAXPROCS of the servers (0: Go's default)")
	fs.IntVar(&o.genProcs, "gen-procs", 1, "GOMAXPROCS of the load generator (0: Go's default)")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory (binaries, agent log)")
	fs.IntVar(&o.sideRounds, "side-rounds", 6, "rounds of the side-by-side check after the load rounds (both servers loaded at once; 0: none)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (flags only; -h lists them)", fs.Arg(0))
	}
	return o, o.validate()
}

func run(args []string) error {
	o, err := parseOptions(args)
	if err != nil {
		return err
	}
	if o.pin {
		if _, err := exec.LookPath("taskset"); err != nil {
			return errors.New("taskset (util-linux) not found: install it, or run with -pin=false")
		}
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "imds-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Println("work directory:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	b := &bench{o: o, dir: dir}
	printMachine(o)
	fmt.Println("\n== build")
	if err := b.build(root); err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	return b.run(ctx)
}

// firstTokens is how many tokens are issued before the first RSS reading
// after load: what serving itself costs in memory (buffers, stacks, the
// heap reaching its first GC goal) shows after it, what the number of
// tokens costs after the rest.
const firstTokens = 1000

// validate refuses settings the run cannot measure anything with.
func (o *options) validate() error {
	var errs []error
	bad := func(cond bool, format string, args ...any) {
		if cond {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	bad(o.rounds < 1, "-rounds %d: at least 1 is needed", o.rounds)
	bad(o.duration <= 0, "-duration %s: the measured window must be longer than 0", o.duration)
	bad(o.warmup < 0, "-warmup %s: must not be negative", o.warmup)
	bad(o.coldClients < 1, "-cold-clients %d: at least 1 is needed", o.coldClients)
	bad(o.warmConns < 1, "-warm-conns %d: at least 1 is needed", o.warmConns)
	bad(o.sideRounds < 0, "-side-rounds %d: must not be negative (0 skips the side-by-side check)", o.sideRounds)
	bad(o.sideRounds > 0 && o.warmConns < 2,
		"-warm-conns %d: the side-by-side check gives each server half the connections, so it needs at least 2 (or -side-rounds 0)", o.warmConns)
	bad(o.tokens <= firstTokens, "-tokens %d: must be more than %d, the tokens issued before the first RSS reading", o.tokens, firstTokens)
	bad(o.idle <= 0, "-idle %s: the idle period must be longer than 0", o.idle)
	bad(o.readyStarts < 1, "-ready-starts %d: at least 1 start is needed (the last one is benchmarked)", o.readyStarts)
	bad(o.serverProcs < 0, "-server-procs %d: must not be negative (0: Go's default)", o.serverProcs)
	bad(o.genProcs < 0, "-gen-procs %d: must not be negative (0: Go's default)", o.genProcs)
	return errors.Join(errs...)
}

// settle is how long the agent is left alone before an RSS reading after
// load: its connections closed, it returns memory a second later.
const settle = 5 * time.Second

type bench struct {
	o        options
	dir      string
	agentBin string
	floorBin string
	self     string
	agent    *process
	floor    *process
	failures []string
}

// process is a server the harness started.
type process struct {
	name   string
	cmd    *exec.Cmd
	addr   string
	socket string // the agent's admin socket
	log    string // the agent's standard error: its log and audit trail
	done   bool
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) stop() {
	if p == nil || p.done {
		return
	}
	p.done = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

func moduleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/imds-agent/imds-agent\n")) {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("run from inside the imds-agent repository")
		}
		d = parent
	}
}

func printMachine(o options) {
	fmt.Println("== machine")
	model := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	fmt.Printf("cpus %d (%s), kernel %s, %s %s/%s\n", runtime.NumCPU(), model, kernel, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if o.pin {
		fmt.Printf("servers on CPU %s (GOMAXPROCS=%s), load generator on CPU %s (GOMAXPROCS=%s)\n",
			o.serverCPU, procsString(o.serverProcs), o.genCPU, procsString(o.genProcs))
	} else {
		fmt.Printf("unpinned; servers GOMAXPROCS=%s, load generator GOMAXPROCS=%s\n", procsString(o.serverProcs), procsString(o.genProcs))
	}
}

func procsString(n int) string {
	if n <= 0 {
		return "default"
	}
	return strconv.Itoa(n)
}

func (b *bench) build(root string) error {
	b.agentBin = filepath.Join(b.dir, "imds-agent")
	b.floorBin = filepath.Join(b.dir, "floor")
	for _, t := range []struct{ out, pkg string }{{b.agentBin, "./cmd/imds-agent"}, {b.floorBin, "./bench/floor"}} {
		cmd := exec.Command("go", "build", "-trimpath", "-o", t.out, t.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", t.pkg, err, out)
		}
		fmt.Println("built", t.pkg)
	}
	var err error
	b.self, err = os.Executable()
	return err
}

// command runs bin pinned to cpus with GOMAXPROCS=procs.
func (b *bench) command(ctx context.Context, cpus string, procs int, bin string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if b.o.pin {
		cmd = exec.CommandContext(ctx, "taskset", append([]string{"-c", cpus, bin}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, bin, args...)
	}
	env := []string{}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "GOMAXPROCS=") && !strings.HasPrefix(e, "NOTIFY_SOCKET=") &&
			!strings.HasPrefix(e, "WATCHDOG_") && !strings.HasPrefix(e, "TMPDIR=") {
			env = append(env, e)
		}
	}
	if procs > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(procs))
	}
	cmd.Env = env
	return cmd
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startAgent starts `imds-agent dev` on a free loopback port with its own
// TMPDIR (so its admin socket is its own) and a NOTIFY_SOCKET, and returns
// once READY=1 arrives, with the time from exec to that datagram.
func (b *bench) startAgent(ctx context.Context, n int) (*process, time.Duration, error) {
	port, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	tmp := filepath.Join(b.dir, fmt.Sprintf("agent%d", n))
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, 0, err
	}
	ns, err := listenNotify(filepath.Join(tmp, "notify.sock"))
	if err != nil {
		return nil, 0, err
	}
	defer ns.Close()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p := &process{name: "agent", addr: addr, log: filepath.Join(tmp, "agent.log")}
	logf, err := os.Create(p.log)
	if err != nil {
		return nil, 0, err
	}
	defer logf.Close()
	p.cmd = b.command(ctx, b.o.serverCPU, b.o.serverProcs, b.agentBin, "dev", "--listen", addr)
	p.cmd.Env = append(p.cmd.Env, "TMPDIR="+tmp, "NOTIFY_SOCKET="+ns.path)
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, 0, err
	}
	p.cmd.Stderr = logf
	start := time.Now()
	if err := p.cmd.Start(); err != nil {
		return nil, 0, err
	}
	// The banner names the admin socket: "Status: BINARY status --socket PATH".
	socket := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		found := false
		for sc.Scan() {
			if _, path, ok := strings.Cut(sc.Text(), "status --socket "); ok && !found {
				socket <- strings.TrimSpace(path)
				found = true
			}
		}
	}()
	at, err := ns.waitReady(30 * time.Second)
	if err == nil {
		select {
		case p.socket = <-socket:
		case <-time.After(10 * time.Second):
			err = errors.New("the dev banner named no admin socket")
		}
	}
	if err != nil {
		p.stop()
		return nil, 0, fmt.Errorf("agent: %w (log: %s)", err, p.log)
	}
	return p, at.Sub(start), nil
}

func (b *bench) startFloor(ctx context.Context) (*process, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &process{name: "floor", addr: "127.0.0.1:" + strconv.Itoa(port)}
	p.cmd = b.command(ctx, b.o.serverCPU, b.o.serverProcs, b.floorBin, "-listen", p.addr)
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != p.addr {
		p.stop()
		return nil, fmt.Errorf("floor did not start (%q, %v)", line, err)
	}
	return p, nil
}

// load runs the load generator against p and returns its result; an
// answer that was not a 200, or a failed connection, invalidates the run.
func (b *bench) load(ctx context.Context, p *process, mode string, conns int, extra ...string) (*loadResult, error) {
	res, err := b.loadgen(ctx, p, mode, conns, extra...)
	if err != nil {
		return nil, err
	}
	b.check(p, mode, res)
	return res, nil
}

// check records a load run's refused answers and failed connections as
// failures of the whole run.
func (b *bench) check(p *process, mode string, res *loadResult) {
	if res.Non200 > 0 || res.Errors > 0 {
		b.failures = append(b.failures, fmt.Sprintf("%s %s: %d non-200 answers, %d errors; first: %s",
			p.name, mode, res.Non200, res.Errors, res.FirstIssue))
	}
}

// loadgen runs the load generator against p.
func (b *bench) loadgen(ctx context.Context, p *process, mode string, conns int, extra ...string) (*loadResult, error) {
	bound := b.o.warmup + b.o.duration + time.Minute
	if mode == "tokens" {
		bound = 6 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	args := append([]string{"loadgen", "-mode", mode, "-addr", p.addr, "-conns", strconv.Itoa(conns),
		"-warmup", b.o.warmup.String(), "-duration", b.o.duration.String(),
		"-server-pid", strconv.Itoa(p.pid())}, extra...)
	cmd := b.command(ctx, b.o.genCPU, b.o.genProcs, b.self, args...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("loadgen %s against %s: %w", mode, p.name, err)
	}
	var res loadResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return nil, fmt.Errorf("loadgen output: %w", err)
	}
	return &res, nil
}

// sideBySide loads both servers at once, warm, each with half the
// connections and a generator of its own on the generators' CPU, and
// returns each one's samples. Whatever the host does during a round it
// does to both, so the servers' CPU time a request, compared round by
// round, moves far less with the host's drift than the runs in turn do:
// a diagnostic beside them, with no target of its own.
func (b *bench) sideBySide(ctx context.Context, rounds int) (agent, floor []sample, creds int64, err error) {
	conns := b.o.warmConns / 2
	for r := range rounds {
		servers := []*process{b.agent, b.floor}
		res := make([]*loadResult, len(servers))
		// A generator that fails stops the other: its round is lost anyway.
		g, gctx := errgroup.WithContext(ctx)
		for i, p := range servers {
			g.Go(func() (err error) {
				res[i], err = b.loadgen(gctx, p, "warm", conns)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return nil, nil, 0, fmt.Errorf("side-by-side round %d: %w", r+1, err)
		}
		line := fmt.Sprintf("round %d", r+1)
		for i, p := range servers {
			b.check(p, "side-by-side warm", res[i])
			s := sampleOf(res[i])
			if p == b.agent {
				agent, creds = append(agent, s), creds+res[i].CredsOK
			} else {
				floor = append(floor, s)
			}
			line += fmt.Sprintf("  %s %7.0f req/s, server CPU %3.0f %% (%5.1f µs each)", p.name, s.perSec, 100*s.serverCPU, s.serverUS)
		}
		fmt.Printf("%s  ratio %s\n", line, formatRatio(agent[r].serverUS, floor[r].serverUS))
	}
	return agent, floor, creds, nil
}

// agentStatus is the part of `imds-agent status --json` the harness reads.
type agentStatus struct {
	Refreshes    uint64    `json:"refreshes"`
	Failures     uint64    `json:"failures"`
	NextRefresh  time.Time `json:"next_refresh"`
	AuditDropped uint64    `json:"audit_dropped"`
	ClientsShed  uint64    `json:"clients_shed"`
}

func (b *bench) status(ctx context.Context) (*agentStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.agentBin, "status", "--socket", b.agent.socket, "--json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("imds-agent status: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var st agentStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("imds-agent status: %w", err)
	}
	return &st, nil
}

// sample is one load run's figures.
type sample struct {
	perSec, p50, p99  float64
	serverCPU, genCPU float64 // share of one CPU over the window
	serverUS          float64 // server CPU µs per unit (request or flow)
}

// sampleOf is a load run's figures.
func sampleOf(res *loadResult) sample {
	return sample{perSec: res.PerSec, p50: res.P50, p99: res.P99,
		serverCPU: res.ServerCPU / res.Elapsed, genCPU: res.GenCPU / res.Elapsed,
		serverUS: 1e6 * res.ServerCPU / float64(max(res.Units, 1))}
}

func (b *bench) run(ctx context.Context) error {
	o := b.o
	defer func() {
		b.agent.stop()
		b.floor.stop()
	}()

	fmt.Println("\n== start to READY=1 (exec to the sd_notify datagram, STS/IAM emulator on loopback)")
	var ready []float64
	for i := range o.readyStarts {
		p, d, err := b.startAgent(ctx, i)
		if err != nil {
			return err
		}
		ready = append(ready, float64(d.Microseconds())/1e3)
		if i == o.readyStarts-1 {
			b.agent = p
		} else {
			p.stop()
		}
	}
	fmt.Printf("start to ready: median %.1f ms, max %.1f ms over %d starts %v\n", median(ready), slices.Max(ready), len(ready), ready)

	var err error
	if b.floor, err = b.startFloor(ctx); err != nil {
		return err
	}
	fmt.Printf("agent pid %d on %s; floor pid %d on %s\n", b.agent.pid(), b.agent.addr, b.floor.pid(), b.floor.addr)

	fmt.Printf("\n== idle (%s)\n", o.idle)
	time.Sleep(2 * time.Second) // let start-up settle
	cpu0 := procCPU(b.agent.pid())
	time.Sleep(o.idle)
	idleCPU := procCPU(b.agent.pid()) - cpu0
	idlePct := 100 * idleCPU / o.idle.Seconds()
	rssIdle, err := rssKiB(b.agent.pid())
	if err != nil {
		return err
	}
	fmt.Printf("agent CPU over %s idle: %.2f s (%.3f %%)\n", o.idle, idleCPU, idlePct)
	fmt.Printf("agent RSS idle: %.1f MiB\n", mib(rssIdle))

	before, err := b.status(ctx)
	if err != nil {
		return err
	}
	loadStart := time.Now()

	// First a thousand tokens, then the rest (see firstTokens).
	fmt.Printf("\n== %d tokens (%d, then the rest)\n", o.tokens, firstTokens)
	var rss1k int64
	var issued int64
	var took float64
	for _, n := range []int64{firstTokens, o.tokens - firstTokens} {
		tok, err := b.load(ctx, b.agent, "tokens", o.warmConns, "-tokens", strconv.FormatInt(n, 10))
		if err != nil {
			return err
		}
		issued += tok.Units
		took += tok.Elapsed
		time.Sleep(settle)
		if rss1k == 0 {
			if rss1k, err = rssKiB(b.agent.pid()); err != nil {
				return err
			}
		}
	}
	rssTokens, err := rssKiB(b.agent.pid())
	if err != nil {
		return err
	}
	fmt.Printf("issued %d tokens in %.1f s (%.0f/s); agent RSS idle %.1f MiB, after %d tokens %.1f MiB, after %d tokens %.1f MiB\n",
		issued, took, float64(issued)/took, mib(rssIdle), firstTokens, mib(rss1k), issued, mib(rssTokens))

	fmt.Printf("\n== load: %d rounds, each %s warm-up + %s measured; cold %d clients, warm %d connections\n",
		o.rounds, o.warmup, o.duration, o.coldClients, o.warmConns)
	results := map[string][]sample{}
	var agentCreds int64
	for r := range o.rounds {
		// The two servers' runs of a mode are back to back, and which goes
		// first alternates: drift in the host's other load then moves both
		// runs of a pair alike, and each round's ratio is its own measure.
		for i, mode := range []string{"warm", "cold"} {
			order := []*process{b.floor, b.agent}
			if (r+i)%2 == 1 {
				order = []*process{b.agent, b.floor}
			}
			for _, p := range order {
				conns := o.warmConns
				if mode == "cold" {
					conns = o.coldClients
				}
				res, err := b.load(ctx, p, mode, conns)
				if err != nil {
					return err
				}
				if p == b.agent {
					agentCreds += res.CredsOK
				}
				s := sampleOf(res)
				key := p.name + " " + mode
				results[key] = append(results[key], s)
				unit := "req/s"
				if mode == "cold" {
					unit = "flows/s"
				}
				fmt.Printf("round %d %-11s %9.0f %-7s p50 %7.1f µs  p99 %7.1f µs  server CPU %3.0f %% (%5.1f µs each)  generator CPU %3.0f %%\n",
					r+1, key, s.perSec, unit, s.p50, s.p99, 100*s.serverCPU, s.serverUS, 100*s.genCPU)
			}
		}
	}
	var side [2][]sample // agent, floor
	if o.sideRounds > 0 {
		fmt.Printf("\n== side by side: %d rounds, both servers loaded at once, warm, %d connections each (a diagnostic, no target)\n",
			o.sideRounds, o.warmConns/2)
		var creds int64
		if side[0], side[1], creds, err = b.sideBySide(ctx, o.sideRounds); err != nil {
			return err
		}
		agentCreds += creds
	}
	loadEnd := time.Now()
	after, err := b.status(ctx)
	if err != nil {
		return err
	}
	// The peak under load, and the agent back at rest: it hands memory
	// back once no client has been connected for a second.
	rssPeak, err := peakRSSKiB(b.agent.pid())
	if err != nil {
		return err
	}
	time.Sleep(settle)
	rssRest, err := rssKiB(b.agent.pid())
	if err != nil {
		return err
	}

	fmt.Println("\n== over rounds: each server's median, and the verdict, the median of each round's ratio agent / floor")
	tpRatio, p99Ratio := map[string]float64{}, map[string]float64{}
	sus := func(s sample) float64 { return s.serverUS }
	for _, mode := range []string{"warm", "cold"} {
		a, f := results["agent "+mode], results["floor "+mode]
		line := func(what, format string, g func(sample) float64) float64 {
			med, desc := perRound(a, f, g)
			fmt.Printf("%s  %-10s  agent "+format+"  floor "+format+"  ratio %.3f  (%s; ratio of the medians %s)\n",
				mode, what, medianOf(a, g), medianOf(f, g), med, desc, formatRatio(medianOf(a, g), medianOf(f, g)))
			return med
		}
		tpRatio[mode] = line("throughput", "%9.0f", func(s sample) float64 { return s.perSec })
		line("p50 µs", "%9.1f", func(s sample) float64 { return s.p50 })
		p99Ratio[mode] = line("p99 µs", "%9.1f", func(s sample) float64 { return s.p99 })
		line("server µs", "%9.1f", sus)
		scpu := func(s sample) float64 { return s.serverCPU }
		gcpu := func(s sample) float64 { return s.genCPU }
		fmt.Printf("%s  server µs is the server's CPU time per %s; CPU %%: server: agent %3.0f floor %3.0f; generator: with agent %3.0f with floor %3.0f\n",
			mode, map[string]string{"warm": "request", "cold": "flow"}[mode],
			100*medianOf(a, scpu), 100*medianOf(f, scpu), 100*medianOf(a, gcpu), 100*medianOf(f, gcpu))
	}
	if a, f := side[0], side[1]; len(a) > 0 {
		med, desc := perRound(a, f, sus)
		fmt.Printf("warm  server µs side by side, agent / floor %.3f (%s); medians agent %.1f, floor %.1f\n",
			med, desc, medianOf(a, sus), medianOf(f, sus))
	}

	fmt.Println("\n== STS calls during the load run (status --json, refreshes + failures)")
	sts := (after.Refreshes + after.Failures) - (before.Refreshes + before.Failures)
	scheduled := 0
	if !before.NextRefresh.IsZero() && before.NextRefresh.Before(loadEnd) {
		scheduled = 1 // at most one rotation fits a run this short with 1 h sessions
	}
	fmt.Printf("STS calls %d (refreshes %d→%d, failures %d→%d); scheduled rotations in [%s, %s]: %d (next refresh %s)\n",
		sts, before.Refreshes, after.Refreshes, before.Failures, after.Failures,
		loadStart.Format(time.TimeOnly), loadEnd.Format(time.TimeOnly), scheduled, before.NextRefresh.Format(time.TimeOnly))
	if sts != uint64(scheduled) {
		b.failures = append(b.failures, fmt.Sprintf("%d STS calls during the load run, %d scheduled", sts, scheduled))
	}

	fmt.Println("\n== audit trail")
	b.agent.stop() // flushes the audit writer
	records, err := countLines(b.agent.log, []byte(`msg="credentials served"`))
	if err != nil {
		return err
	}
	fmt.Printf("credential answers %d, audit records %d, dropped %d\n", agentCreds, records, after.AuditDropped)
	if records != agentCreds || after.AuditDropped != 0 {
		b.failures = append(b.failures, fmt.Sprintf("audit: %d records for %d credential answers, %d dropped", records, agentCreds, after.AuditDropped))
	}

	fmt.Println("\n== resources")
	fmt.Printf("RSS idle %.1f MiB; after %d tokens %.1f MiB (%+.1f MiB); after %d tokens %.1f MiB (%+.1f MiB from idle, %+.1f MiB from %d tokens)\n",
		mib(rssIdle), firstTokens, mib(rss1k), mib(rss1k-rssIdle), o.tokens, mib(rssTokens), mib(rssTokens-rssIdle), mib(rssTokens-rss1k), firstTokens)
	fmt.Printf("RSS peak during the whole run %.1f MiB; %s after the last load run %.1f MiB\n", mib(rssPeak), settle, mib(rssRest))
	fmt.Printf("idle CPU %.3f %% over %s\n", idlePct, o.idle)
	fmt.Printf("start to ready %.1f ms (median of %d)\n", median(ready), len(ready))

	fmt.Println("\n== targets (benchmarks: a miss is reported, it does not fail the run)")
	target := func(name string, ok bool, got string) {
		verdict := "met"
		if !ok {
			verdict = "MISSED"
		}
		fmt.Printf("%-48s %-7s %s\n", name, verdict, got)
	}
	target("warm throughput >= 0.95 x floor", tpRatio["warm"] >= 0.95, fmt.Sprintf("%.3f", tpRatio["warm"]))
	target("cold throughput >= 0.90 x floor", tpRatio["cold"] >= 0.90, fmt.Sprintf("%.3f", tpRatio["cold"]))
	target("warm p99 <= 1.2 x floor", p99Ratio["warm"] <= 1.2, fmt.Sprintf("%.3f", p99Ratio["warm"]))
	target("cold p99 <= 1.2 x floor", p99Ratio["cold"] <= 1.2, fmt.Sprintf("%.3f", p99Ratio["cold"]))
	target("RSS idle <= 20 MiB", mib(rssIdle) <= 20, fmt.Sprintf("%.1f MiB", mib(rssIdle)))
	target(fmt.Sprintf("RSS after %d tokens within 2 MiB of idle", o.tokens), math.Abs(mib(rssTokens-rssIdle)) <= 2, fmt.Sprintf("%+.1f MiB", mib(rssTokens-rssIdle)))
	target(fmt.Sprintf("  ... and of RSS after %d tokens", firstTokens), math.Abs(mib(rssTokens-rss1k)) <= 2, fmt.Sprintf("%+.1f MiB", mib(rssTokens-rss1k)))
	target("idle CPU <= 0.1 %", idlePct <= 0.1, fmt.Sprintf("%.3f %%", idlePct))
	target("start to ready <= 100 ms", median(ready) <= 100, fmt.Sprintf("%.1f ms", median(ready)))
	target("STS calls = scheduled rotations", sts == uint64(scheduled), fmt.Sprintf("%d / %d", sts, scheduled))

	if len(b.failures) > 0 {
		fmt.Println("\n== FAILED")
		for _, f := range b.failures {
			fmt.Println(f)
		}
		return errors.New("the run is invalid")
	}
	return nil
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// perRound compares the servers round by round: the ratio agent/floor of
// each round's back-to-back pair of runs. Their median is the verdict, since
// the host's other load moves both runs of a pair alike but the rounds
// apart; their range shows how far it moved the figure. The ratio of the
// two servers' medians, printed beside, takes each median from whichever
// round it falls in, and a host that slows down in mid-run moves it (run
// 49: 1.039 against a per-round median of 0.967). med is NaN without a
// round to compare.
func perRound(agent, floor []sample, g func(sample) float64) (med float64, desc string) {
	var r []float64
	n := min(len(agent), len(floor))
	for i := range n {
		// A figure of 0 (CPU time is read in clock ticks) has no ratio.
		if a, f := g(agent[i]), g(floor[i]); a > 0 && f > 0 {
			r = append(r, a/f)
		}
	}
	if len(r) == 0 {
		return math.NaN(), "no round to compare"
	}
	desc = fmt.Sprintf("per round, range %.3f–%.3f", slices.Min(r), slices.Max(r))
	if len(r) < n {
		desc += fmt.Sprintf("; %d of %d rounds left out, a server's figure being 0", n-len(r), n)
	}
	return median(r), desc
}

// formatRatio is a/b with three decimals, or "n/a" when either is 0: a
// figure a server did not register (CPU time is read in clock ticks) has
// no ratio.
func formatRatio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "n/a"
	}
	return strconv.FormatFloat(a/b, 'f', 3, 64)
}

// medianOf is the median of g over samples.
func medianOf(ss []sample, g func(sample) float64) float64 {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = g(s)
	}
	return median(v)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// countLines counts the lines of the file at path that contain sub.
func countLines(path string, sub []byte) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var n int64
	for sc.Scan() {
		if bytes.Contains(sc.Bytes(), sub) {
			n++
		}
	}
	return n, sc.Err()
}

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The load generator speaks HTTP/1.1 over plain sockets with requests
// rendered once, so that a request costs it one write and one read
// system call and a few hundred nanoseconds of parsing: far less than a
// server spends on the same request. The harness runs it as a child
// process (the harness binary with the "loadgen" argument) pinned to its
// own CPU.

// loadResult is what one load generator run reports, as JSON on stdout.
type loadResult struct {
	Mode string `json:"mode"`
	// Units completed inside the measured window: flows (cold), requests
	// (warm) or tokens.
	Units   int64   `json:"units"`
	Elapsed float64 `json:"elapsed_s"` // the measured window
	PerSec  float64 `json:"per_sec"`
	P50     float64 `json:"p50_us"`
	P99     float64 `json:"p99_us"`
	// Every answer, warm-up included.
	Requests   int64  `json:"requests"`
	CredsOK    int64  `json:"creds_ok"` // 200s to a credential GET
	Non200     int64  `json:"non_200"`
	Errors     int64  `json:"errors"` // connection or protocol failures
	FirstIssue string `json:"first_issue,omitempty"`
	// CPU seconds over the measured window, of the generator itself and
	// of the server (from /proc/PID/stat).
	GenCPU    float64 `json:"gen_cpu_s"`
	ServerCPU float64 `json:"server_cpu_s"`
}

type loadConfig struct {
	mode      string // cold, warm, tokens
	addr      string
	conns     int
	warmup    time.Duration
	duration  time.Duration
	tokens    int64
	serverPID int
	timeout   time.Duration
}

func loadgenMain(args []string) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	var c loadConfig
	fs.StringVar(&c.mode, "mode", "warm", "cold, warm or tokens")
	fs.StringVar(&c.addr, "addr", "", "server address (loopback)")
	fs.IntVar(&c.conns, "conns", 64, "concurrent connections (clients)")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured warm-up")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "measured window")
	fs.Int64Var(&c.tokens, "tokens", 1_000_000, "tokens to request (mode tokens)")
	fs.IntVar(&c.serverPID, "server-pid", 0, "server process, for its CPU time")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Minute, "bound on a tokens run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return err
	}
	res, err := runLoad(c)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// checkLoopback refuses any address but a loopback one: the generator must
// never send traffic to a real metadata service.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q is not a loopback address", addr)
	}
	return nil
}

// requests are the rendered requests of an SDK's credential fetch.
type requests struct {
	put      []byte
	listHead []byte // up to the token value
	tail     []byte // after the token value
	credPath []byte // the credential path without the role
}

func newRequests(addr string) requests {
	host := "Host: " + addr + "\r\nUser-Agent: imds-bench\r\n"
	return requests{
		put:      []byte("PUT /latest/api/token HTTP/1.1\r\n" + host + "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n"),
		listHead: []byte("GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\n" + host + "X-aws-ec2-metadata-token: "),
		tail:     []byte("\r\n\r\n"),
		credPath: []byte("GET /latest/meta-data/iam/security-credentials/"),
	}
}

// credRequest renders the credential GET for role with token.
func (rq requests) credRequest(addr string, role, token []byte) []byte {
	var b bytes.Buffer
	b.Write(rq.credPath)
	b.Write(role)
	b.WriteString(" HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: imds-bench\r\nX-aws-ec2-metadata-token: ")
	b.Write(token)
	b.Write(rq.tail)
	return b.Bytes()
}

// listRequest renders the role-list GET with token into buf.
func (rq requests) listRequest(buf, token []byte) []byte {
	buf = append(buf[:0], rq.listHead...)
	buf = append(buf, token...)
	return append(buf, rq.tail...)
}

// conn is one client connection.
type conn struct {
	c    net.Conn
	br   *bufio.Reader
	body []byte
	// closing: the server said Connection: close.
	closing bool
}

var errProtocol = errors.New("malformed response")

// do sends req and reads the answer; body is valid until the next call.
func (c *conn) do(req []byte) (status int, body []byte, err error) {
	if _, err := c.c.Write(req); err != nil {
		return 0, nil, err
	}
	return c.read()
}

// read parses one HTTP/1.1 response with a Content-Length.
func (c *conn) read() (status int, body []byte, err error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return 0, nil, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, nil, errProtocol
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, errProtocol
	}
	n := -1
	for {
		line, err = c.br.ReadSlice('\n')
		if err != nil {
			return 0, nil, err
		}
		if len(line) <= 2 {
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, nil, errProtocol
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if n, err = strconv.Atoi(string(v)); err != nil || n < 0 {
				return 0, nil, errProtocol
			}
		case bytes.EqualFold(k, []byte("Connection")) && bytes.EqualFold(v, []byte("close")):
			c.closing = true
		}
	}
	if n < 0 {
		return 0, nil, errProtocol
	}
	if cap(c.body) < n {
		c.body = make([]byte, n)
	}
	c.body = c.body[:n]
	if _, err := io.ReadFull(c.br, c.body); err != nil {
		return 0, nil, err
	}
	return status, c.body, nil
}

func dial(addr string) (*conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &conn{c: c, br: bufio.NewReaderSize(c, 4096), body: make([]byte, 0, 1024)}, nil
}

// worker is one simulated client's tally.
type worker struct {
	lat                               []int64 // measured latencies, ns
	units, requests, credsOK, non200s int64
	errors                            int64
	issue                             string
}

func (w *worker) fail(err error) {
	w.errors++
	if w.issue == "" {
		w.issue = err.Error()
	}
}

// check counts an answer; it returns false when it was not a 200.
func (w *worker) check(status int, body []byte, what string) bool {
	w.requests++
	if status == 200 {
		return true
	}
	w.non200s++
	if w.issue == "" {
		w.issue = fmt.Sprintf("%s: status %d: %.80q", what, status, body)
	}
	return false
}

// window is the measured interval; workers keep going until stop.
type window struct {
	start, end time.Time
	stop       atomic.Bool
}

func (wd *window) in(t time.Time) bool { return !t.Before(wd.start) && t.Before(wd.end) }

// validate refuses a run that could not measure anything, or that would
// leave loopback.
func (c *loadConfig) validate() error {
	var errs []error
	if err := checkLoopback(c.addr); err != nil {
		errs = append(errs, err)
	}
	switch c.mode {
	case "cold", "warm":
		if c.duration <= 0 {
			errs = append(errs, fmt.Errorf("-duration %s: the measured window must be longer than 0", c.duration))
		}
		if c.warmup < 0 {
			errs = append(errs, fmt.Errorf("-warmup %s: must not be negative", c.warmup))
		}
	case "tokens":
		if c.tokens < 1 || c.timeout <= 0 {
			errs = append(errs, fmt.Errorf("-tokens %d -timeout %s: a token run needs at least 1 token and a bound longer than 0", c.tokens, c.timeout))
		}
	default:
		errs = append(errs, fmt.Errorf("-mode %q: cold, warm or tokens", c.mode))
	}
	if c.conns < 1 {
		errs = append(errs, fmt.Errorf("-conns %d: at least 1 is needed", c.conns))
	}
	return errors.Join(errs...)
}

func runLoad(c loadConfig) (*loadResult, error) {
	rq := newRequests(c.addr)
	workers := make([]*worker, c.conns)
	for i := range workers {
		workers[i] = &worker{lat: make([]int64, 0, 1<<16)}
	}
	now := time.Now()
	wd := &window{start: now.Add(c.warmup), end: now.Add(c.warmup + c.duration)}
	var remaining atomic.Int64
	remaining.Store(c.tokens)
	var run func(w *worker)
	switch c.mode {
	case "cold":
		run = func(w *worker) { coldWorker(c.addr, rq, wd, w) }
	case "warm":
		run = func(w *worker) { warmWorker(c.addr, rq, wd, w) }
	case "tokens":
		wd.start, wd.end = now, now.Add(c.timeout)
		run = func(w *worker) { tokenWorker(c.addr, rq, wd, &remaining, w) }
	default:
		return nil, fmt.Errorf("unknown mode %q", c.mode)
	}
	// CPU at the window's edges, taken by a timer so workers never wait.
	var genStart, genEnd, srvStart, srvEnd float64
	var edges sync.WaitGroup
	if c.mode != "tokens" {
		edges.Add(1)
		go func() {
			defer edges.Done()
			time.Sleep(time.Until(wd.start))
			genStart, srvStart = selfCPU(), procCPU(c.serverPID)
			time.Sleep(time.Until(wd.end))
			genEnd, srvEnd = selfCPU(), procCPU(c.serverPID)
			wd.stop.Store(true)
		}()
	} else {
		genStart, srvStart = selfCPU(), procCPU(c.serverPID)
		timer := time.AfterFunc(c.timeout, func() { wd.stop.Store(true) })
		defer timer.Stop()
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() { defer wg.Done(); run(w) }()
	}
	wg.Wait()
	edges.Wait()
	elapsed := c.duration.Seconds()
	if c.mode == "tokens" {
		genEnd, srvEnd = selfCPU(), procCPU(c.serverPID)
		elapsed = time.Since(now).Seconds()
	}
	res := &loadResult{Mode: c.mode, Elapsed: elapsed, GenCPU: genEnd - genStart, ServerCPU: srvEnd - srvStart}
	var lat []int64
	for _, w := range workers {
		res.Units += w.units
		res.Requests += w.requests
		res.CredsOK += w.credsOK
		res.Non200 += w.non200s
		res.Errors += w.errors
		if res.FirstIssue == "" {
			res.FirstIssue = w.issue
		}
		lat = append(lat, w.lat...)
	}
	res.PerSec = float64(res.Units) / elapsed
	res.P50, res.P99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return res, nil
}

// percentile returns the q-quantile of ns values, in microseconds.
func percentile(ns []int64, q float64) float64 {
	if len(ns) == 0 {
		return 0
	}
	slices.Sort(ns)
	i := int(q*float64(len(ns))+0.5) - 1
	i = max(0, min(i, len(ns)-1))
	return float64(ns[i]) / 1e3
}

// coldWorker is a stream of fresh SDK processes, one after another: each
// connects, asks for a token, the role name and the credentials, and
// closes. A flow's latency runs from before the connect to the last byte.
func coldWorker(addr string, rq requests, wd *window, w *worker) {
	list := make([]byte, 0, 256)
	var token []byte
	for !wd.stop.Load() {
		t0 := time.Now()
		c, err := dial(addr)
		if err != nil {
			w.fail(err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		ok := func() bool {
			st, body, err := c.do(rq.put)
			if err != nil {
				w.fail(err)
				return false
			}
			if !w.check(st, body, "token PUT") {
				return false
			}
			token = append(token[:0], body...)
			st, body, err = c.do(rq.listRequest(list, token))
			if err != nil {
				w.fail(err)
				return false
			}
			if !w.check(st, body, "role list GET") {
				return false
			}
			st, body, err = c.do(rq.credRequest(addr, body, token))
			if err != nil {
				w.fail(err)
				return false
			}
			if !w.check(st, body, "credentials GET") {
				return false
			}
			w.credsOK++
			return true
		}()
		_ = c.c.Close()
		t1 := time.Now()
		if ok && wd.in(t1) {
			w.units++
			w.lat = append(w.lat, int64(t1.Sub(t0)))
		}
	}
}

// warmWorker is a long-lived SDK: one connection, one token, then
// credential GETs back to back.
func warmWorker(addr string, rq requests, wd *window, w *worker) {
	var c *conn
	var cred []byte
	for !wd.stop.Load() {
		if c == nil || c.closing {
			if c != nil {
				_ = c.c.Close()
			}
			var err error
			if c, cred, err = warmConnect(addr, rq, w); err != nil {
				c = nil
				w.fail(err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if cred == nil {
				return // refused: counted; retrying would only repeat it
			}
		}
		t0 := time.Now()
		st, body, err := c.do(cred)
		t1 := time.Now()
		if err != nil {
			w.fail(err)
			_ = c.c.Close()
			c = nil
			continue
		}
		if !w.check(st, body, "credentials GET") {
			continue
		}
		w.credsOK++
		if wd.in(t1) {
			w.units++
			w.lat = append(w.lat, int64(t1.Sub(t0)))
		}
	}
	if c != nil {
		_ = c.c.Close()
	}
}

// warmConnect opens a connection and fetches a token and the role name on
// it, returning the credential request to repeat (nil if refused).
func warmConnect(addr string, rq requests, w *worker) (*conn, []byte, error) {
	c, err := dial(addr)
	if err != nil {
		return nil, nil, err
	}
	st, body, err := c.do(rq.put)
	if err != nil {
		_ = c.c.Close()
		return nil, nil, err
	}
	if !w.check(st, body, "token PUT") {
		return c, nil, nil
	}
	token := slices.Clone(body)
	st, body, err = c.do(rq.listRequest(nil, token))
	if err != nil {
		_ = c.c.Close()
		return nil, nil, err
	}
	if !w.check(st, body, "role list GET") {
		return c, nil, nil
	}
	return c, rq.credRequest(addr, body, token), nil
}

// tokenWorker asks for tokens on a keep-alive connection until remaining
// runs out.
func tokenWorker(addr string, rq requests, wd *window, remaining *atomic.Int64, w *worker) {
	var c *conn
	for !wd.stop.Load() && remaining.Add(-1) >= 0 {
		if c == nil || c.closing {
			if c != nil {
				_ = c.c.Close()
			}
			var err error
			if c, err = dial(addr); err != nil {
				remaining.Add(1)
				w.fail(err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		t0 := time.Now()
		st, body, err := c.do(rq.put)
		if err != nil {
			remaining.Add(1)
			w.fail(err)
			_ = c.c.Close()
			c = nil
			continue
		}
		if w.check(st, body, "token PUT") && len(body) > 0 {
			w.units++
			if w.units%64 == 0 {
				w.lat = append(w.lat, int64(time.Since(t0)))
			}
		}
	}
	if c != nil {
		_ = c.c.Close()
	}
}

// selfCPU is this process's user and system CPU seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

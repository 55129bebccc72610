package main

import (
	"bufio"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestReadResponse(t *testing.T) {
	const raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello" +
		"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nConnection: close\r\n\r\n"
	c := &conn{br: bufio.NewReader(strings.NewReader(raw))}
	st, body, err := c.read()
	if err != nil || st != 200 || string(body) != "hello" || c.closing {
		t.Fatalf("first = %d %q %v closing %v", st, body, err, c.closing)
	}
	st, body, err = c.read()
	if err != nil || st != 401 || len(body) != 0 || !c.closing {
		t.Fatalf("second = %d %q %v closing %v", st, body, err, c.closing)
	}
	for _, bad := range []string{"HTTP/1.0 200 OK\r\n\r\n", "HTTP/1.1 2x0 OK\r\n\r\n", "HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"} {
		c := &conn{br: bufio.NewReader(strings.NewReader(bad))}
		if _, _, err := c.read(); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestStatCPUTicks(t *testing.T) {
	line := "1234 (imds agent) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 0 0\n"
	n, err := statCPUTicks([]byte(line))
	if err != nil || n != 325 {
		t.Fatalf("statCPUTicks = %d, %v; want 325", n, err)
	}
}

func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:1338": true, "[::1]:80": true,
		"169.254.169.254:80": false, "[fd00:ec2::254]:80": false, "localhost:80": false, "10.0.0.1:80": false,
	} {
		if err := checkLoopback(addr); (err == nil) != ok {
			t.Errorf("checkLoopback(%q) = %v", addr, err)
		}
	}
}

// TestFlows runs each load generator mode briefly against the floor's
// handler on loopback: every answer is a 200 and every flow is counted.
func TestFlows(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveFloorForTest(ln)
	for _, mode := range []string{"warm", "cold", "tokens"} {
		res, err := runLoad(loadConfig{mode: mode, addr: ln.Addr().String(), conns: 2, warmup: 0,
			duration: 200 * time.Millisecond, tokens: 100, timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.Non200 != 0 || res.Errors != 0 || res.Units == 0 {
			t.Errorf("%s: %+v", mode, res)
		}
		if mode == "tokens" && res.Units != 100 {
			t.Errorf("tokens: %d issued, want 100", res.Units)
		}
		if mode != "tokens" && res.CredsOK < res.Units {
			t.Errorf("%s: %d credential answers for %d units", mode, res.CredsOK, res.Units)
		}
	}
}

// serveFloorForTest answers like bench/floor.
func serveFloorForTest(ln net.Listener) {
	_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/latest/api/token":
			_, _ = w.Write([]byte(strings.Repeat("A", 56)))
		case "/latest/meta-data/iam/security-credentials/":
			_, _ = w.Write([]byte("role"))
		case "/latest/meta-data/iam/security-credentials/role":
			_, _ = w.Write([]byte(`{"Code":"Success"}`))
		default:
			http.NotFound(w, r)
		}
	}))
}

func TestPerRound(t *testing.T) {
	tp := func(s sample) float64 { return s.perSec }
	agent := []sample{{perSec: 90}, {perSec: 50}, {perSec: 99}}
	floor := []sample{{perSec: 100}, {perSec: 100}, {perSec: 100}}
	if med, desc := perRound(agent, floor, tp); med != 0.9 || desc != "per round, range 0.500–0.990" {
		t.Errorf("perRound = %v, %q", med, desc)
	}
	// The verdict is the rounds' median, not the medians' ratio. Run 49's
	// warm rounds: the host slowed down after round 2, and the medians of
	// six runs each (the means of the third and fourth) came from
	// different rounds.
	agent49 := []sample{{perSec: 43451}, {perSec: 43371}, {perSec: 32045}, {perSec: 30713}, {perSec: 34243}, {perSec: 29288}}
	floor49 := []sample{{perSec: 47451}, {perSec: 44525}, {perSec: 31748}, {perSec: 31999}, {perSec: 31803}, {perSec: 31253}}
	if med, _ := perRound(agent49, floor49, tp); math.Abs(med-0.967) > 0.0005 {
		t.Errorf("perRound over run 49 = %.4f, want 0.967 (the medians' ratio is %.3f)", med, medianOf(agent49, tp)/medianOf(floor49, tp))
	}
	if med, desc := perRound(nil, floor, tp); !math.IsNaN(med) || desc != "no round to compare" {
		t.Errorf("perRound without agent runs = %v, %q", med, desc)
	}
	// A round the floor registered no figure in has no ratio: it is left
	// out, and said to be.
	floor[1].perSec = 0
	if med, desc := perRound(agent, floor, tp); math.Abs(med-0.945) > 1e-9 || desc != "per round, range 0.900–0.990; 1 of 3 rounds left out, a server's figure being 0" {
		t.Errorf("perRound with the floor's zero = %v, %q", med, desc)
	}
	floor[1].perSec, agent[2].perSec = 100, 0
	if med, desc := perRound(agent, floor, tp); math.Abs(med-0.7) > 1e-9 || desc != "per round, range 0.500–0.900; 1 of 3 rounds left out, a server's figure being 0" {
		t.Errorf("perRound with the agent's zero = %v, %q", med, desc)
	}
	if got, got2 := formatRatio(27, 0), formatRatio(0, 27); got != "n/a" || got2 != "n/a" {
		t.Errorf("formatRatio(27, 0), (0, 27) = %q, %q", got, got2)
	}
	if got := formatRatio(27, 25); got != "1.080" {
		t.Errorf("formatRatio(27, 25) = %q", got)
	}
}

// TestParseOptions: the defaults make a run, and every setting that could
// not measure anything is refused with the flag named.
func TestParseOptions(t *testing.T) {
	o, err := parseOptions(nil)
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if o.rounds != 6 || o.warmConns != 32 || o.sideRounds != 6 || o.tokens != 1_000_000 {
		t.Errorf("defaults = %+v", o)
	}
	for _, ok := range [][]string{
		{"-warm-conns", "1", "-side-rounds", "0"},
		{"-rounds", "1", "-duration", "2s", "-warmup", "0s", "-tokens", "2000", "-ready-starts", "1", "-side-rounds", "2", "-server-procs", "0"},
	} {
		if _, err := parseOptions(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range [][]string{
		{"-rounds", "0"}, {"-duration", "0s"}, {"-warmup", "-1s"}, {"-cold-clients", "0"},
		{"-warm-conns", "0"}, {"-warm-conns", "1"}, {"-side-rounds", "-1"}, {"-tokens", "1000"},
		{"-idle", "0s"}, {"-ready-starts", "0"}, {"-server-procs", "-1"}, {"-gen-procs", "-2"},
	} {
		_, err := parseOptions(bad)
		if err == nil || !strings.Contains(err.Error(), bad[0]+" "+bad[1]) {
			t.Errorf("%q: error %v, want one naming %s %s", bad, err, bad[0], bad[1])
		}
	}
	if _, err := parseOptions([]string{"-rounds", "2", "warm"}); err == nil || !strings.Contains(err.Error(), `"warm"`) {
		t.Errorf("a stray argument: %v", err)
	}
}

// TestLoadConfigValidate: the generator refuses what would measure nothing
// or leave loopback.
func TestLoadConfigValidate(t *testing.T) {
	good := loadConfig{mode: "warm", addr: "127.0.0.1:1338", conns: 2, duration: time.Second, tokens: 1, timeout: time.Minute}
	if err := good.validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, change := range map[string]func(*loadConfig){
		"-conns":    func(c *loadConfig) { c.conns = 0 },
		"-duration": func(c *loadConfig) { c.duration = 0 },
		"-warmup":   func(c *loadConfig) { c.warmup = -time.Second },
		"-mode":     func(c *loadConfig) { c.mode = "hot" },
		"-tokens":   func(c *loadConfig) { c.mode, c.tokens = "tokens", 0 },
		"loopback":  func(c *loadConfig) { c.addr = "169.254.169.254:80" },
	} {
		c := good
		change(&c)
		if err := c.validate(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: error %v", name, err)
		}
	}
}

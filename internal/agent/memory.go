package agent

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// The collector's settings, and handing memory back after a burst.
//
// The agent's live heap is about 2 MiB, nearly all of it tables the AWS SDK
// builds when the process starts (service schemas, endpoint rules). With
// Go's default GOGC=100 and its 4 MiB minimum heap, a cycle starts after
// every ~2 MiB of garbage and marks those tables again: about 5 % of the
// agent's CPU when it serves flat out, against about 1 % for a bare net/http
// server (bench/README.md). Each cycle marks them for ~2 ms, during which a
// server on one CPU answers at about half speed, and the requests it delays
// make the latency tail. With GOGC=800 a cycle starts after ~30 MiB of
// garbage, half as often as at 400 (p99 under flat-out load 1.07-1.24x the
// bare server's in four runs, against ~1.33x at 400); the heap then reaches
// ~32 MiB under sustained load. A soft limit of 256 MiB keeps a flood of
// connections, which grows the live heap, from growing the heap nine times
// as much: past it the collector works harder instead. And once no client
// connection has been open for a second, the memory freed since the last
// collection goes back to the kernel, so after a burst of requests the
// agent's RSS is back within about 2 MiB of its idle size.
const (
	gcPercent   = 800
	memoryLimit = 256 << 20
	quietDelay  = time.Second
)

// TuneGC applies the agent's collector settings to the process. GOGC and
// GOMEMLIMIT in the environment take precedence, each on its own.
func TuneGC() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(gcPercent)
	}
	if _, ok := os.LookupEnv("GOMEMLIMIT"); !ok {
		debug.SetMemoryLimit(memoryLimit)
	}
}

// releaseAfter is how much the agent must have allocated since the last
// release for a quiet spell to trigger the next one.
const releaseAfter = 1 << 20

// releaser collects and hands freed memory back to the kernel once the
// metadata server has had no open connection for its delay, and only if
// the agent has allocated releaseAfter bytes since it last did: an agent
// serving a request now and then is rarely woken for it (an SDK's whole
// credential fetch allocates about 20 KiB), and one that has just served a
// burst returns to its idle size. Idle keep-alive connections count as
// open: after clients that keep theirs, the release waits for the server to
// close them (IdleTimeout). Only a connection closing arms the timer, so an
// agent nobody talks to runs nothing; under systemd the watchdog's health
// checks (about 23 KiB each) arm it every WatchdogSec/4, and release about
// every six minutes at WatchdogSec=30s, once they have allocated
// releaseAfter.
type releaser struct {
	delay     time.Duration
	open      func() int64  // open client connections
	allocated func() uint64 // bytes allocated since the process started
	release   func()        // releaseMemory

	start   time.Time
	quietAt atomic.Int64 // since start, when the last connection closed
	armed   atomic.Bool
	stopped atomic.Bool

	mu   sync.Mutex
	last uint64 // allocated at the last release
}

func newReleaser(open func() int64) *releaser {
	return &releaser{
		delay:     quietDelay,
		open:      open,
		allocated: heapAllocated,
		release:   releaseMemory,
		start:     time.Now(),
	}
}

// releaseMemory collects twice and hands the freed pages back to the kernel.
// The first collection only moves what sync.Pools hold (net/http keeps
// buffered readers and writers there, about 10 KiB for each connection it
// served at once) into their victim caches; the second frees them, so their
// spans go back too. One collection alone left about 0.8 MiB more resident
// after a burst of 1,000,000 tokens over 32 connections (bench/README.md).
func releaseMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// heapAllocated reads the bytes allocated on the heap so far without
// stopping the world (runtime.ReadMemStats would).
func heapAllocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// quiet is called when the last open connection closes.
func (r *releaser) quiet() {
	r.quietAt.Store(int64(time.Since(r.start)))
	r.arm(r.delay)
}

func (r *releaser) arm(d time.Duration) {
	if !r.stopped.Load() && r.armed.CompareAndSwap(false, true) {
		time.AfterFunc(d, r.fire)
	}
}

// stop ends the releases once the server has shut down; a timer already
// armed fires and does nothing.
func (r *releaser) stop() { r.stopped.Store(true) }

func (r *releaser) fire() {
	r.armed.Store(false)
	if r.stopped.Load() || r.open() > 0 {
		return // the next close arms again
	}
	if wait := r.delay - (time.Since(r.start) - time.Duration(r.quietAt.Load())); wait > 0 {
		r.arm(wait) // connections came and went meanwhile
		return
	}
	r.releaseNow(false)
}

// releaseNow releases if releaseAfter bytes were allocated since the last
// time; force releases regardless (once started: what starting up left).
func (r *releaser) releaseNow(force bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !force && r.allocated()-r.last < releaseAfter {
		return
	}
	r.release()
	r.last = r.allocated()
}

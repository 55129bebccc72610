package agent

import (
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeReleaser is a releaser over counters the test moves.
type fakeReleaser struct {
	*releaser
	conns     atomic.Int64
	allocs    atomic.Uint64
	releases  chan struct{}
	delivered atomic.Int64
}

func newFakeReleaser(delay time.Duration) *fakeReleaser {
	f := &fakeReleaser{releases: make(chan struct{}, 16)}
	f.releaser = &releaser{
		delay:     delay,
		open:      f.conns.Load,
		allocated: f.allocs.Load,
		release: func() {
			f.delivered.Add(1)
			f.releases <- struct{}{}
		},
		start: time.Now(),
	}
	return f
}

// closeAll stands for the server's last connection closing.
func (f *fakeReleaser) closeAll() {
	f.conns.Store(0)
	f.quiet()
}

func (f *fakeReleaser) expectRelease(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-f.releases:
	case <-time.After(within):
		t.Fatalf("no release within %v", within)
	}
}

func (f *fakeReleaser) expectNone(t *testing.T, during time.Duration) {
	t.Helper()
	select {
	case <-f.releases:
		t.Fatal("released, but should not have")
	case <-time.After(during):
	}
}

func TestReleaserAfterBurst(t *testing.T) {
	const delay = 50 * time.Millisecond
	f := newFakeReleaser(delay)

	// A burst: connections open, memory is allocated, they all close.
	f.conns.Store(32)
	f.allocs.Add(64 << 20)
	began := time.Now()
	f.closeAll()
	f.expectRelease(t, 2*time.Second)
	if waited := time.Since(began); waited < delay {
		t.Errorf("released %v after the last close, before the %v quiet delay", waited, delay)
	}

	// Quiet again with next to nothing allocated since: no work.
	f.allocs.Add(20 << 10)
	f.closeAll()
	f.expectNone(t, 4*delay)

	// A client connected when the timer fired: nothing until it leaves.
	f.allocs.Add(releaseAfter)
	f.closeAll()
	f.conns.Store(1)
	f.expectNone(t, 4*delay)
	f.closeAll()
	f.expectRelease(t, 2*time.Second)
	if n := f.delivered.Load(); n != 2 {
		t.Errorf("%d releases, want 2", n)
	}
}

// A connection that comes and goes within the delay pushes the release
// back: the server must have been quiet for the whole delay.
func TestReleaserWaitsForWholeQuietSpell(t *testing.T) {
	const delay = 200 * time.Millisecond
	f := newFakeReleaser(delay)
	f.allocs.Add(8 << 20)
	f.closeAll()
	time.Sleep(delay / 2)
	f.conns.Store(1)
	time.Sleep(delay / 4)
	lastClose := time.Now()
	f.closeAll()
	f.expectRelease(t, 2*time.Second)
	if waited := time.Since(lastClose); waited < delay {
		t.Errorf("released %v after the last close, want at least %v", waited, delay)
	}
	f.expectNone(t, 2*delay)
}

// After stop, a quiet spell releases nothing, even with a timer armed.
func TestReleaserStopped(t *testing.T) {
	const delay = 50 * time.Millisecond
	f := newFakeReleaser(delay)
	f.allocs.Add(8 << 20)
	f.closeAll() // armed
	f.stop()
	f.expectNone(t, 4*delay)
	f.closeAll() // not armed again
	f.expectNone(t, 4*delay)
	if f.armed.Load() {
		t.Error("armed after stop")
	}
}

func TestReleaserForced(t *testing.T) {
	f := newFakeReleaser(time.Hour)
	f.releaseNow(true)
	f.expectRelease(t, time.Second)
	f.releaseNow(false) // nothing allocated since
	f.expectNone(t, 10*time.Millisecond)
}

// The real thing: after a burst of garbage, a release leaves the heap at its
// live size and hands the garbage's pages back. Not all of them every time
// (under -race, 1.8 of 4 MiB came back in one run of twelve), so the test
// asks for a quarter: without the release nothing comes back.
func TestReleaserReleases(t *testing.T) {
	const size = 4 << 20
	r := newReleaser(func() int64 { return 0 })
	r.releaseNow(true)
	for range size / (32 << 10) {
		garbage = append(garbage, make([]byte, 32<<10))
	}
	garbage = nil
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r.releaseNow(false)
	runtime.ReadMemStats(&after)
	if after.HeapInuse+size/2 > before.HeapInuse {
		t.Errorf("heap in use %d bytes after the release, %d before: the garbage was not collected", after.HeapInuse, before.HeapInuse)
	}
	if back := int64(after.HeapReleased) - int64(before.HeapReleased); back < size/4 {
		t.Errorf("%d bytes went back to the kernel after %d bytes of garbage were collected", back, size)
	}
}

// garbage is package-level so that the compiler cannot keep it off the heap.
var garbage [][]byte

// What sync.Pools hold is freed by a release too, not kept in the pools'
// victim caches until the next cycle under load. (Under -race a Put drops
// one item in four at random, and the test then passes either way; the
// test command runs it again without -race, where it fails with a release
// that collects only once.)
func TestReleaseFreesPooledBuffers(t *testing.T) {
	var pool sync.Pool
	freed := make(chan struct{})
	buf := new([64 << 10]byte)
	runtime.AddCleanup(buf, func(ch chan struct{}) { close(ch) }, freed)
	pool.Put(buf)
	buf = nil
	releaseMemory()
	select {
	case <-freed:
	case <-time.After(5 * time.Second):
		t.Fatal("a buffer left in a sync.Pool survived the release")
	}
	runtime.KeepAlive(&pool)
}

// TestTuneGC: the agent's collector settings apply unless GOGC or
// GOMEMLIMIT is in the environment, which takes precedence.
func TestTuneGC(t *testing.T) {
	percent, limit := debug.SetGCPercent(100), debug.SetMemoryLimit(math.MaxInt64)
	defer func() { debug.SetGCPercent(percent); debug.SetMemoryLimit(limit) }()

	// t.Setenv puts the environment back at the end; the variables are
	// then removed, as on a host that sets neither.
	t.Setenv("GOGC", "")
	os.Unsetenv("GOGC")
	t.Setenv("GOMEMLIMIT", "")
	os.Unsetenv("GOMEMLIMIT")
	TuneGC()
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("GOGC unset: collector at %d %%, want %d", got, gcPercent)
	}
	if got := debug.SetMemoryLimit(math.MaxInt64); got != memoryLimit {
		t.Errorf("GOMEMLIMIT unset: limit %d, want %d", got, memoryLimit)
	}

	t.Setenv("GOGC", "300")
	t.Setenv("GOMEMLIMIT", "1GiB")
	TuneGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC set: TuneGC changed the collector to %d %%", got)
	}
	if got := debug.SetMemoryLimit(math.MaxInt64); got != math.MaxInt64 {
		t.Errorf("GOMEMLIMIT set: TuneGC changed the limit to %d", got)
	}
}

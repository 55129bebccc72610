package audit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestRecordsWritten(t *testing.T) {
	var out lockedBuffer
	l := New(&out, "json", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	l.Record(Record{Time: time.Unix(0, 0), Decision: "allow", Route: "credentials", Status: 200, Remote: "127.0.0.1:5000",
		Local: true, UID: 33, UIDKnown: true, Unit: "nginx.service", Role: "web", KeySuffix: "ABCD"})
	l.Record(Record{Time: time.Unix(0, 0), Decision: "deny", Route: "token", Status: 403, Reason: "access-denied", Remote: "172.17.0.2:4000"})
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(out.String(), "\n") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("records not written: %q", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	for _, want := range []string{`"msg":"credentials served"`, `"component":"audit"`, `"decision":"allow"`, `"uid":33`, `"unit":"nginx.service"`, `"role":"web"`, `"access_key_suffix":"ABCD"`} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("allow record lacks %s: %s", want, lines[0])
		}
	}
	for _, want := range []string{`"msg":"request refused"`, `"reason":"access-denied"`, `"local":false`} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("deny record lacks %s: %s", want, lines[1])
		}
	}
	if strings.Contains(lines[1], `"uid"`) {
		t.Errorf("unknown uid written: %s", lines[1])
	}
}

// blockingWriter never returns until released: a stuck journal.
type blockingWriter struct{ release chan struct{} }

func (b blockingWriter) Write(p []byte) (int, error) { <-b.release; return len(p), nil }

func TestRecordNeverBlocks(t *testing.T) {
	w := blockingWriter{release: make(chan struct{})}
	dropped := 0
	l := New(w, "text", func() { dropped++ })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	start := time.Now()
	for i := 0; i < QueueSize+5000; i++ {
		l.Record(Record{Decision: "allow", Route: "credentials", Status: 200})
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("recording behind a stuck writer took %v", took)
	}
	if dropped == 0 || l.Dropped() != uint64(dropped) {
		t.Errorf("dropped = %d (counted %d), want drops behind a stuck writer", dropped, l.Dropped())
	}
	close(w.release)
	cancel()
	<-done
}

// failingWriter refuses every write: a closed pipe, a full disk.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) {
	return 0, errors.New("write /dev/stderr: broken pipe")
}

// TestFailedWriteCounted: records a failed write loses are counted as
// dropped, as those dropped behind a slow output are.
func TestFailedWriteCounted(t *testing.T) {
	dropped := 0
	l := New(failingWriter{}, "text", func() { dropped++ })
	for range 3 {
		l.Record(Record{Decision: "allow", Route: "credentials", Status: 200})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Run(ctx); err != nil { // flushes
		t.Fatal(err)
	}
	if dropped != 3 || l.Dropped() != 3 {
		t.Errorf("dropped %d (counted %d), want the 3 records the failed write lost", dropped, l.Dropped())
	}
}

// TestFormatMatchesSlog: the fast formatter writes exactly what log/slog's
// handlers write, in both formats, and anything unusual goes through slog.
func TestFormatMatchesSlog(t *testing.T) {
	base := Record{Time: time.Date(2026, 11, 27, 4, 5, 6, 7_890_123, time.UTC), Decision: "allow", Route: "credentials",
		Status: 200, Remote: "127.0.0.1:41234", Local: true, UID: 1000, UIDKnown: true, Cgroup: "/user.slice/user-1000.slice/session-3.scope",
		Role: "web", KeySuffix: "ABCD"}
	cases := map[string]func(r *Record){
		"allow":          func(r *Record) {},
		"unit":           func(r *Record) { r.Unit = "nginx.service"; r.Cgroup = "/system.slice/nginx.service" },
		"deny":           func(r *Record) { r.Decision, r.Status, r.Reason, r.KeySuffix = "deny", 403, "access-denied", "" },
		"not local":      func(r *Record) { r.Local, r.UIDKnown, r.UID, r.Cgroup = false, false, 0, "" },
		"ipv6":           func(r *Record) { r.Remote = "[fd00:ec2::254]:80" },
		"no role":        func(r *Record) { r.Role, r.KeySuffix = "", "" },
		"whole second":   func(r *Record) { r.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) },
		"zone":           func(r *Record) { r.Time = r.Time.In(time.FixedZone("X", 5*3600+30*60)) },
		"zero time":      func(r *Record) { r.Time = time.Time{} },
		"year 10000":     func(r *Record) { r.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) },
		"space":          func(r *Record) { r.Cgroup = "/a b" },
		"quote":          func(r *Record) { r.Unit = `x"y.service` },
		"backslash":      func(r *Record) { r.Unit = `system-serial\x2dgetty.slice` },
		"equals":         func(r *Record) { r.Role = "a=b" },
		"unicode":        func(r *Record) { r.Cgroup = "/caf\u00e9" },
		"control":        func(r *Record) { r.Cgroup = "/a\nb" },
		"invalid utf-8":  func(r *Record) { r.Cgroup = "/a\xffb" },
		"empty remote":   func(r *Record) { r.Remote = "" },
		"html":           func(r *Record) { r.Role = "<a&b>" },
		"line separator": func(r *Record) { r.Unit = "a\u2028b" },
	}
	for name, change := range cases {
		r := base
		change(&r)
		for _, format := range []string{"text", "json"} {
			var want bytes.Buffer
			(&Logger{json: format == "json"}).writeSlow(&want, &r)
			got := (&Logger{json: format == "json"}).appendRecord(nil, &r)
			if string(got) != want.String() {
				t.Errorf("%s, %s:\n got %s\nwant %s", name, format, got, want.String())
			}
		}
	}
}

// TestTimeFormatsMatchSlog: one logger formatting a run of times (the
// cached second reused, then replaced) writes each as slog would.
func TestTimeFormatsMatchSlog(t *testing.T) {
	base := time.Date(2026, 11, 27, 4, 5, 6, 0, time.UTC)
	zone := time.FixedZone("X", -(3*3600 + 30*60))
	var times []time.Time
	for _, ns := range []int{0, 1, 999_999, 1_000_000, 7_890_123, 120_000_000, 999_999_999, 500_000_000, 10} {
		times = append(times, base.Add(time.Duration(ns)))
	}
	times = append(times, base.Add(time.Second), base.Add(time.Second+time.Millisecond), base.Add(time.Second).In(zone),
		base.Add(time.Second+5*time.Millisecond).In(zone), base.Add(-time.Nanosecond), base.Add(time.Hour*24*400).Local())
	for _, format := range []string{"text", "json"} {
		l := &Logger{json: format == "json"}
		for _, tm := range times {
			r := Record{Time: tm, Decision: "allow", Route: "credentials", Status: 200, Remote: "127.0.0.1:1"}
			var want bytes.Buffer
			l.writeSlow(&want, &r)
			if got := l.appendRecord(nil, &r); string(got) != want.String() {
				t.Errorf("%s, %v:\n got %s\nwant %s", format, tm, got, want.String())
			}
		}
	}
}

// TestRepeatMatchesRecord: records sent through a Repeat come out as
// Record writes them, whatever changes from one to the next: the time
// alone, a value, a value slog must quote, the logger and its format.
func TestRepeatMatchesRecord(t *testing.T) {
	base := Record{Time: time.Date(2026, 11, 27, 4, 5, 6, 7_890_123, time.UTC), Decision: "allow", Route: "credentials",
		Status: 200, Remote: "127.0.0.1:41234", Local: true, UID: 1000, UIDKnown: true, Unit: "web.service", Role: "web", KeySuffix: "ABCD"}
	steps := []func(r *Record){
		func(r *Record) {},
		func(r *Record) { r.Time = r.Time.Add(time.Millisecond) },
		func(r *Record) { r.Time = r.Time.Add(2 * time.Second) },
		func(r *Record) { r.KeySuffix = "WXYZ" },
		func(r *Record) { r.KeySuffix = "WXYZ"; r.Time = r.Time.Add(time.Second) },
		func(r *Record) { r.Decision, r.Status, r.Reason, r.KeySuffix = "deny", 403, "access-denied", "" },
		func(r *Record) { r.Unit = "a b.service" },
		func(r *Record) { r.Unit = "a b.service"; r.Time = r.Time.Add(time.Millisecond) },
		func(r *Record) {},
		func(r *Record) { r.Time = time.Time{} },
		func(r *Record) {},
		func(r *Record) { r.Time = r.Time.In(time.FixedZone("X", 3600)) },
		func(r *Record) { r.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) },
		func(r *Record) { r.Remote = "[::1]:80" },
		func(r *Record) {}, // as the next logger's first
	}
	var rep Repeat
	for _, format := range []string{"text", "json", "text"} {
		var want, got bytes.Buffer
		plain, repeated := New(&want, format, nil), New(&got, format, nil)
		for _, step := range steps {
			r := base
			step(&r)
			plain.Record(r)
			repeated.RecordRepeat(r, &rep)
		}
		plain.flush()
		repeated.flush()
		if got.String() != want.String() {
			t.Errorf("%s: through a Repeat:\n%s\nwith Record:\n%s", format, got.String(), want.String())
		}
		if n := strings.Count(got.String(), "\n"); n != len(steps) {
			t.Errorf("%s: %d records written, want %d", format, n, len(steps))
		}
	}
}

// writeSlow writes r with slog's handler, as the agent did before records
// were formatted by hand.
func (l *Logger) writeSlow(w *bytes.Buffer, r *Record) {
	w.Write(l.appendSlow(nil, r))
}

func BenchmarkFormat(b *testing.B) {
	r := Record{Time: time.Now(), Decision: "allow", Route: "credentials", Status: 200, Remote: "127.0.0.1:41234",
		Local: true, UID: 1000, UIDKnown: true, Cgroup: "/user.slice/user-1000.slice/session-3.scope", Role: "web", KeySuffix: "ABCD"}
	for _, format := range []string{"text", "json"} {
		l := New(io.Discard, format, nil)
		b.Run(format, func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 1024)
			for b.Loop() {
				buf = l.appendRecord(buf[:0], &r)
			}
		})
		b.Run(format+"-slog", func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 1024)
			for b.Loop() {
				buf = l.appendSlow(buf[:0], &r)
			}
		})
	}
}

// BenchmarkRecord: one record into the batch, formatted whole (Record) or
// from the values of the one before (RecordRepeat, a kept-alive
// connection's credential GETs).
func BenchmarkRecord(b *testing.B) {
	r := Record{Time: time.Now(), Decision: "allow", Route: "credentials", Status: 200, Remote: "127.0.0.1:41234",
		Local: true, UID: 1000, UIDKnown: true, Cgroup: "/user.slice/user-1000.slice/session-3.scope", Role: "web", KeySuffix: "ABCD"}
	for _, format := range []string{"text", "json"} {
		for _, repeat := range []bool{false, true} {
			name := format
			if repeat {
				name += "-repeat"
			}
			b.Run(name, func(b *testing.B) {
				l := New(io.Discard, format, nil)
				var rep Repeat
				b.ReportAllocs()
				for b.Loop() {
					if repeat {
						l.RecordRepeat(r, &rep)
					} else {
						l.Record(r)
					}
					if len(l.batch) >= flushSize { // as the writer takes it
						l.batch, l.pending = l.batch[:0], 0
					}
				}
			})
		}
	}
}

// countingWriter counts the writes it is handed and the lines in them.
type countingWriter struct {
	mu            sync.Mutex
	writes, lines int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	c.lines += bytes.Count(p, []byte("\n"))
	return len(p), nil
}

func (c *countingWriter) counts() (writes, lines int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes, c.lines
}

// TestRecordsShareWrites: a lone record is written by itself, and records
// that come faster than FlushInterval share writes.
func TestRecordsShareWrites(t *testing.T) {
	var out countingWriter
	l := New(&out, "text", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitLines := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			if _, lines := out.counts(); lines >= n {
				return
			}
			if time.Now().After(deadline) {
				w, lines := out.counts()
				t.Fatalf("%d of %d records written in %d writes", lines, n, w)
			}
		}
	}
	rec := Record{Time: time.Unix(0, 0), Decision: "allow", Route: "credentials", Status: 200, Remote: "127.0.0.1:5000",
		Local: true, UID: 33, UIDKnown: true, Unit: "nginx.service", Role: "web", KeySuffix: "ABCD"}
	l.Record(rec)
	waitLines(1)
	if w, _ := out.counts(); w != 1 {
		t.Fatalf("a lone record took %d writes", w)
	}
	// A trickle, one record after each short pause: the writer is idle
	// when each comes, and only its waiting out the interval makes them
	// share. However long the pauses are on this machine, the writes come
	// at most one an interval, plus the one that ends the wait.
	const n = 200
	start := time.Now()
	for range n {
		time.Sleep(100 * time.Microsecond)
		l.Record(rec)
	}
	waitLines(1 + n)
	took := time.Since(start)
	if w, _ := out.counts(); w-1 > int(took/FlushInterval)+2 {
		t.Errorf("%d records over %v took %d writes; at most one every %v", n, took, w-1, FlushInterval)
	}
}

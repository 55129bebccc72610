// Package audit owns the audit trail: one structured record for every
// credential response and every refusal, saying who asked (address, local
// user, systemd unit or cgroup), for which role, which access key (its last
// four characters only) and what was decided. Recording never blocks a
// response: records go through a bounded queue to a writer goroutine that
// formats them in batches; if the writer falls behind, records are counted
// as dropped rather than slowing clients down.
package audit

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Record is one audited decision.
type Record struct {
	Time      time.Time
	Decision  string // "allow" or "deny"
	Route     string
	Status    int
	Reason    string // why it was refused
	Remote    string // client address
	Local     bool   // the client socket is on this host, in the agent's namespace
	UID       uint32
	UIDKnown  bool
	Unit      string
	Cgroup    string
	Role      string
	KeySuffix string // last four characters of the access key id served
}

// Logger queues records for the writer.
type Logger struct {
	queue   chan Record
	out     *bufio.Writer
	handler slog.Handler
	dropped atomic.Uint64
	onDrop  func()
	mu      sync.Mutex // serialises writers (Run and Close)
}

// QueueSize bounds the records waiting to be written.
const QueueSize = 16384

// New returns a logger writing records to w, as JSON or text lines like the
// agent's log. onDrop, if set, is called for every dropped record.
func New(w io.Writer, format string, onDrop func()) *Logger {
	l := &Logger{queue: make(chan Record, QueueSize), out: bufio.NewWriterSize(w, 64<<10), onDrop: onDrop}
	opts := &slog.HandlerOptions{}
	if format == "json" {
		l.handler = slog.NewJSONHandler(l.out, opts)
	} else {
		l.handler = slog.NewTextHandler(l.out, opts)
	}
	return l
}

// Record queues r without blocking; it is dropped (and counted) if the
// queue is full.
func (l *Logger) Record(r Record) {
	select {
	case l.queue <- r:
	default:
		l.dropped.Add(1)
		if l.onDrop != nil {
			l.onDrop()
		}
	}
}

// Dropped returns how many records were dropped.
func (l *Logger) Dropped() uint64 { return l.dropped.Load() }

// Run writes records until ctx is done, then writes what is queued. It
// sleeps while nothing is queued and flushes after each batch, so records
// appear promptly without a timer.
func (l *Logger) Run(ctx context.Context) error {
	for {
		select {
		case r := <-l.queue:
			l.mu.Lock()
			l.write(r)
			l.drain()
			_ = l.out.Flush()
			l.mu.Unlock()
		case <-ctx.Done():
			l.mu.Lock()
			l.drain()
			_ = l.out.Flush()
			l.mu.Unlock()
			return nil
		}
	}
}

func (l *Logger) drain() {
	for {
		select {
		case r := <-l.queue:
			l.write(r)
		default:
			return
		}
	}
}

func (l *Logger) write(r Record) {
	msg := "credentials served"
	if r.Decision != "allow" {
		msg = "request refused"
	}
	rec := slog.NewRecord(r.Time, slog.LevelInfo, msg, 0)
	rec.AddAttrs(
		slog.String("component", "audit"),
		slog.String("decision", r.Decision),
		slog.String("route", r.Route),
		slog.Int("status", r.Status),
	)
	if r.Reason != "" {
		rec.AddAttrs(slog.String("reason", r.Reason))
	}
	rec.AddAttrs(slog.String("remote", r.Remote), slog.Bool("local", r.Local))
	if r.UIDKnown {
		rec.AddAttrs(slog.Uint64("uid", uint64(r.UID)))
	}
	if r.Unit != "" {
		rec.AddAttrs(slog.String("unit", r.Unit))
	} else if r.Cgroup != "" {
		rec.AddAttrs(slog.String("cgroup", r.Cgroup))
	}
	if r.Role != "" {
		rec.AddAttrs(slog.String("role", r.Role))
	}
	if r.KeySuffix != "" {
		rec.AddAttrs(slog.String("access_key_suffix", r.KeySuffix))
	}
	_ = l.handler.Handle(context.Background(), rec)
}

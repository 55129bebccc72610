// Package audit owns the audit trail: one structured record for every
// credential response and every refusal, saying who asked (address, local
// user, systemd unit or cgroup), for which role, which access key (its last
// four characters only) and what was decided. Recording never waits for
// the output: a record is formatted into a bounded in-memory batch that a
// writer goroutine hands to the output in one write; if the writer falls
// behind, records are counted as dropped rather than slowing clients down.
package audit

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strconv"
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

// Logger batches records for the writer.
type Logger struct {
	out    io.Writer
	json   bool
	onDrop func()

	mu      sync.Mutex
	clock   timeCache // guarded by mu, like batch
	batch   []byte    // formatted records not yet handed to the writer
	pending int       // records in batch
	spare   []byte    // the previous batch's storage, for reuse
	wake    chan struct{}

	dropped atomic.Uint64
	writeMu sync.Mutex // serialises writes to out
}

const (
	// QueueSize bounds the records waiting to be written.
	QueueSize = 16384
	// maxPendingBytes bounds their size.
	maxPendingBytes = 4 << 20
	// FlushInterval spaces the writes: a record that finds the output idle
	// for that long is written at once; records arriving faster share one
	// write per interval. Each write costs a fixed amount besides its
	// bytes: in the benchmark's cold flow (12,000 records a second to an
	// ext4 file) the writer spent 0.72 µs a record with 2 ms batches and
	// 0.32 µs with 10 ms ones. A crash loses at most the interval's
	// records.
	FlushInterval = 10 * time.Millisecond
	// flushSize is the batch size written without waiting for
	// FlushInterval.
	flushSize = 64 << 10
	// batchCap is the storage a batch starts with: room for what arrives
	// while the writer is being woken, at high request rates.
	batchCap = 2 * flushSize
	// keepBatch is the largest batch storage kept for reuse; a larger one
	// (left by a burst behind a slow output) is given back.
	keepBatch = 4 * batchCap
)

// New returns a logger writing records to w, as JSON or text lines like the
// agent's log (log/slog's handlers, same bytes). onDrop, if set, is called
// for every dropped record.
func New(w io.Writer, format string, onDrop func()) *Logger {
	return &Logger{out: w, json: format == "json", onDrop: onDrop, wake: make(chan struct{}, 1)}
}

// Record adds r to the batch without waiting for the output; it is dropped
// (and counted) if too much is waiting already.
func (l *Logger) Record(r Record) { l.record(&r, nil) }

// Repeat keeps the formatted form of one record's values, all but its
// time, for the records that repeat them: those of one client connection,
// which asks for the same credentials as the same caller request after
// request. The zero Repeat is ready; one goroutine uses it at a time.
type Repeat struct {
	l         *Logger
	key       Record // the last record's values; its Time is zero
	formatted bool   // key came more than once, and plain and tail say how it is written
	plain     bool   // key's values are plain, and tail holds them formatted
	tail      []byte // the record's line after its time
}

// RecordRepeat is Record for a record that is likely to repeat the last
// one recorded with rep but for its time: the values are formatted only
// when they change.
func (l *Logger) RecordRepeat(r Record, rep *Repeat) { l.record(&r, rep) }

func (l *Logger) record(r *Record, rep *Repeat) {
	var tail []byte // r's line after its time, formatted already
	if rep != nil && r.plainTime() {
		tail = rep.tailOf(l, r)
	}
	l.mu.Lock()
	if l.pending >= QueueSize || len(l.batch) >= maxPendingBytes {
		l.mu.Unlock()
		l.drop(1)
		return
	}
	if l.batch == nil {
		l.batch = make([]byte, 0, batchCap)
	}
	before := len(l.batch)
	if tail != nil {
		l.batch = append(l.appendTime(l.batch, r.Time), tail...)
	} else {
		l.batch = l.appendRecord(l.batch, r)
	}
	l.pending++
	signal := before == 0 || (before < flushSize && len(l.batch) >= flushSize)
	l.mu.Unlock()
	if signal {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// tailOf returns r's line after its time, as l formats it, kept for the
// records that repeat r's values. It returns nil, and r is formatted whole,
// when r's values are not plain or differ from the last record's: values
// are kept formatted once they come twice, so that a connection with one
// record (an SDK process that fetches once) pays nothing for keeping them.
func (p *Repeat) tailOf(l *Logger, r *Record) []byte {
	key := *r
	key.Time = time.Time{}
	if p.l != l || p.key != key {
		p.l, p.key, p.formatted = l, key, false
		return nil
	}
	if !p.formatted {
		p.formatted = true
		p.plain = key.plainValues()
		if p.plain {
			p.tail = l.appendTail(p.tail[:0], &key)
		}
	}
	if !p.plain {
		return nil
	}
	return p.tail
}

// Dropped returns how many records were dropped.
func (l *Logger) Dropped() uint64 { return l.dropped.Load() }

// Run writes records until ctx is done, then writes what is waiting. It
// sleeps while nothing is waiting. A record is written as soon as it comes
// if nothing was written in the last FlushInterval, else with the others
// that came since, at the end of the interval (sooner once flushSize bytes
// are waiting): one write per batch rather than one per record under load,
// and no delay for the odd request.
func (l *Logger) Run(ctx context.Context) error {
	timer := time.NewTimer(FlushInterval)
	timer.Stop()
	var last time.Time
	for {
		select {
		case <-l.wake:
		case <-ctx.Done():
			l.flush()
			return nil
		}
		if wait := FlushInterval - time.Since(last); wait > 0 && !l.full() {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-l.wake: // the batch reached flushSize
			case <-ctx.Done():
			}
			timer.Stop()
		}
		l.flush()
		last = time.Now()
	}
}

func (l *Logger) full() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.batch) >= flushSize
}

// flush hands the waiting batch to the output.
func (l *Logger) flush() {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	b, n := l.batch, l.pending
	l.batch, l.spare = l.spare[:0], nil
	l.pending = 0
	l.mu.Unlock()
	if len(b) == 0 {
		l.putSpare(b)
		return
	}
	if _, err := l.out.Write(b); err != nil {
		// The output failed (a closed pipe, a full disk): the batch's
		// records are lost, and counted as dropped. Which of them the
		// output kept, if any, it does not say.
		l.drop(n)
	}
	l.putSpare(b)
}

// drop counts n records lost.
func (l *Logger) drop(n int) {
	l.dropped.Add(uint64(n))
	if l.onDrop != nil {
		for range n {
			l.onDrop()
		}
	}
}

func (l *Logger) putSpare(b []byte) {
	if cap(b) > keepBatch {
		return
	}
	l.mu.Lock()
	if l.spare == nil {
		l.spare = b[:0]
	}
	l.mu.Unlock()
}

// message is the log message of a record.
func (r *Record) message() string {
	if r.Decision != "allow" {
		return "request refused"
	}
	return "credentials served"
}

// appendRecord formats r as log/slog's text or JSON handler would. The
// common record (plain ASCII values) is formatted here, in a fraction of
// slog's time; anything else goes through slog itself.
func (l *Logger) appendRecord(b []byte, r *Record) []byte {
	if !r.plainTime() || !r.plainValues() {
		return l.appendSlow(b, r)
	}
	return l.appendTail(l.appendTime(b, r.Time), r)
}

// appendTime starts a record's line: up to and including its time.
func (l *Logger) appendTime(b []byte, t time.Time) []byte {
	if l.json {
		return l.clock.appendNano(append(b, `{"time":"`...), t)
	}
	return l.clock.appendMillis(append(b, "time="...), t)
}

// appendTail ends a record's line: everything after its time.
func (l *Logger) appendTail(b []byte, r *Record) []byte {
	if l.json {
		return r.appendJSONTail(b)
	}
	return r.appendTextTail(b)
}

// plainTime reports whether both handlers write r's time, in the range
// they take (slog leaves a zero time out).
func (r *Record) plainTime() bool {
	if r.Time.IsZero() {
		return false
	}
	// Both handlers write a four-digit year (0000 to 9999); Year() is
	// only worth its cost near the ends of that range.
	if sec := r.Time.Unix(); sec < safeFrom || sec >= safeUntil {
		if y := r.Time.Year(); y < 0 || y >= 10000 {
			return false
		}
	}
	return true
}

// plainValues reports whether every value in r is written the same,
// unquoted and unescaped, by both handlers.
func (r *Record) plainValues() bool {
	for _, s := range [...]string{r.Decision, r.Route, r.Remote} {
		if s == "" || !plainString(s) {
			return false
		}
	}
	for _, s := range [...]string{r.Reason, r.Unit, r.Cgroup, r.Role, r.KeySuffix} {
		if !plainString(s) {
			return false
		}
	}
	return true
}

// Between these times (Unix seconds) the year is 0001 to 9998 in UTC, and
// so 0000 to 9999 in any zone within a year of UTC.
var (
	safeFrom  = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	safeUntil = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
)

// plainBytes marks the bytes plainString accepts.
var plainBytes = func() (t [256]bool) {
	for c := '!'; c <= '~'; c++ {
		t[c] = c != '"' && c != '\\' && c != '='
	}
	return t
}()

// plainString: printable ASCII with nothing either handler quotes or
// escapes (space, '"', '\\', '=').
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		if !plainBytes[s[i]] {
			return false
		}
	}
	return true
}

func (r *Record) appendTextTail(b []byte) []byte {
	b = append(b, " level=INFO msg=\""...)
	b = append(b, r.message()...)
	b = append(b, "\" component=audit decision="...)
	b = append(b, r.Decision...)
	b = append(b, " route="...)
	b = append(b, r.Route...)
	b = append(b, " status="...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	if r.Reason != "" {
		b = append(b, " reason="...)
		b = append(b, r.Reason...)
	}
	b = append(b, " remote="...)
	b = append(b, r.Remote...)
	b = append(b, " local="...)
	b = strconv.AppendBool(b, r.Local)
	if r.UIDKnown {
		b = append(b, " uid="...)
		b = strconv.AppendUint(b, uint64(r.UID), 10)
	}
	if r.Unit != "" {
		b = append(b, " unit="...)
		b = append(b, r.Unit...)
	} else if r.Cgroup != "" {
		b = append(b, " cgroup="...)
		b = append(b, r.Cgroup...)
	}
	if r.Role != "" {
		b = append(b, " role="...)
		b = append(b, r.Role...)
	}
	if r.KeySuffix != "" {
		b = append(b, " access_key_suffix="...)
		b = append(b, r.KeySuffix...)
	}
	return append(b, '\n')
}

func (r *Record) appendJSONTail(b []byte) []byte {
	b = append(b, `","level":"INFO","msg":"`...)
	b = append(b, r.message()...)
	b = append(b, `","component":"audit","decision":"`...)
	b = append(b, r.Decision...)
	b = append(b, `","route":"`...)
	b = append(b, r.Route...)
	b = append(b, `","status":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	if r.Reason != "" {
		b = append(b, `,"reason":"`...)
		b = append(b, r.Reason...)
		b = append(b, '"')
	}
	b = append(b, `,"remote":"`...)
	b = append(b, r.Remote...)
	b = append(b, `","local":`...)
	b = strconv.AppendBool(b, r.Local)
	if r.UIDKnown {
		b = append(b, `,"uid":`...)
		b = strconv.AppendUint(b, uint64(r.UID), 10)
	}
	if r.Unit != "" {
		b = append(b, `,"unit":"`...)
		b = append(b, r.Unit...)
		b = append(b, '"')
	} else if r.Cgroup != "" {
		b = append(b, `,"cgroup":"`...)
		b = append(b, r.Cgroup...)
		b = append(b, '"')
	}
	if r.Role != "" {
		b = append(b, `,"role":"`...)
		b = append(b, r.Role...)
		b = append(b, '"')
	}
	if r.KeySuffix != "" {
		b = append(b, `,"access_key_suffix":"`...)
		b = append(b, r.KeySuffix...)
		b = append(b, '"')
	}
	return append(b, "}\n"...)
}

// timeCache keeps the formatted date, time of day and zone of the last
// second seen: records come many to a second, and only their fraction
// differs.
type timeCache struct {
	sec  int64
	loc  *time.Location
	text []byte // "2006-01-02T15:04:05Z07:00" of that second
}

// split returns the parts of t's RFC 3339 form before and after the
// fraction of a second.
func (c *timeCache) split(t time.Time) (head, zone []byte) {
	if c.text == nil || t.Unix() != c.sec || t.Location() != c.loc {
		c.sec, c.loc = t.Unix(), t.Location()
		c.text = t.Truncate(time.Second).AppendFormat(c.text[:0], time.RFC3339)
	}
	const headLen = len("2006-01-02T15:04:05")
	return c.text[:headLen], c.text[headLen:]
}

// appendMillis is log/slog's text time format: RFC 3339 with exactly three
// fractional digits, truncated.
func (c *timeCache) appendMillis(b []byte, t time.Time) []byte {
	head, zone := c.split(t)
	b = append(b, head...)
	ms := t.Nanosecond() / 1e6
	b = append(b, '.', byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10))
	return append(b, zone...)
}

// appendNano is time.RFC3339Nano, as log/slog's JSON handler writes times:
// nanoseconds without trailing zeros, no fraction at all for a whole second.
func (c *timeCache) appendNano(b []byte, t time.Time) []byte {
	head, zone := c.split(t)
	b = append(b, head...)
	if ns := t.Nanosecond(); ns != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i >= 1; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, zone...)
}

// appendSlow formats r with log/slog's own handler.
func (l *Logger) appendSlow(b []byte, r *Record) []byte {
	buf := bytes.NewBuffer(b)
	var h slog.Handler
	if l.json {
		h = slog.NewJSONHandler(buf, nil)
	} else {
		h = slog.NewTextHandler(buf, nil)
	}
	rec := slog.NewRecord(r.Time, slog.LevelInfo, r.message(), 0)
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
	_ = h.Handle(context.Background(), rec)
	return buf.Bytes()
}

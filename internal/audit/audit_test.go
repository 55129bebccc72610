package audit

import (
	"bytes"
	"context"
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

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on
// every Linux architecture.
const clockTicks = 100

// procCPU returns the user plus system CPU seconds of process pid (all its
// threads), from /proc/PID/stat; 0 if unknown.
func procCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	t, err := statCPUTicks(b)
	if err != nil {
		return 0
	}
	return float64(t) / clockTicks
}

// statCPUTicks parses utime + stime (fields 14 and 15) from a
// /proc/PID/stat line. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from its closing parenthesis.
func statCPUTicks(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat line")
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed stat line")
	}
	u, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, err
	}
	s, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, err
	}
	return u + s, nil
}

// rssKiB returns the resident set size of pid in KiB (VmRSS).
func rssKiB(pid int) (int64, error) { return statusKiB(pid, "VmRSS") }

// peakRSSKiB returns the largest resident set size pid has had (VmHWM).
func peakRSSKiB(pid int) (int64, error) { return statusKiB(pid, "VmHWM") }

// statusKiB reads one "Name: N kB" line of /proc/PID/status.
func statusKiB(pid int, name string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s for pid %d", name, pid)
}

// notifySocket is a unixgram socket standing in for systemd's
// NOTIFY_SOCKET.
type notifySocket struct {
	path string
	c    *net.UnixConn
}

func listenNotify(path string) (*notifySocket, error) {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	return &notifySocket{path: path, c: c}, nil
}

// waitReady returns when a datagram holding the line READY=1 arrives.
func (n *notifySocket) waitReady(timeout time.Duration) (time.Time, error) {
	buf := make([]byte, 4096)
	deadline := time.Now().Add(timeout)
	for {
		_ = n.c.SetReadDeadline(deadline)
		k, err := n.c.Read(buf)
		if err != nil {
			return time.Time{}, fmt.Errorf("waiting for READY=1: %w", err)
		}
		at := time.Now()
		for _, line := range strings.Split(string(buf[:k]), "\n") {
			if line == "READY=1" {
				return at, nil
			}
		}
	}
}

func (n *notifySocket) Close() error {
	err := n.c.Close()
	_ = os.Remove(n.path)
	return err
}

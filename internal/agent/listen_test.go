package agent

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestListenBacklogWithProcHidden: a metadata listener's accept queue is as
// long as the host allows even where /proc/sys cannot be read, as under the
// unit's ProcSubset=pid (Go alone would fall back to 128). The listener is
// opened in a child process with a mount namespace of its own, whose /proc
// shows processes only.
func TestListenBacklogWithProcHidden(t *testing.T) {
	if os.Getenv("IMDS_AGENT_BACKLOG_CHILD") == "1" {
		backlogChild(t)
		return
	}
	if os.Getuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	raw, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		t.Fatal(err)
	}
	somaxconn, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestListenBacklogWithProcHidden$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "IMDS_AGENT_BACKLOG_CHILD=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS} // Go makes / private in it
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var got int
	for _, l := range bytes.Split(out, []byte("\n")) {
		if v, ok := bytes.CutPrefix(l, []byte("backlog=")); ok {
			got, _ = strconv.Atoi(string(v))
		}
	}
	if want := min(somaxconn, maxBacklog); got != want {
		t.Errorf("accept queue with /proc/sys hidden = %d, want %d (net.core.somaxconn)\n%s", got, want, out)
	}
}

func backlogChild(t *testing.T) {
	if err := unix.Mount("proc", "/proc", "proc", 0, "subset=pid"); err != nil {
		t.Fatalf("mounting /proc with subset=pid: %v", err)
	}
	if _, err := os.Stat("/proc/sys/net/core/somaxconn"); err == nil {
		t.Fatal("/proc/sys is still visible")
	}
	ln, err := listenTCP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s, err := netlink.SocketGet(ln.Addr(), &net.TCPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatalf("sock_diag: %v", err)
	}
	fmt.Printf("backlog=%d\n", s.WQueue) // a listener's send queue is its accept queue's limit
}

package netnstest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"
)

// execFlag, as the first argument of the test binary, makes it a launcher:
// the binary enters a namespace and executes the real command (see init).
const execFlag = "-netnstest.exec-in-netns"

// Command returns a command whose process runs inside the namespace. It is
// killed when ctx ends or when the test cleans up, whichever comes first.
//
// The *exec.Cmd may be started any way (Start, Run, Output); Env, Dir,
// Stdin/Stdout/Stderr and ExtraFiles work as usual, because the process the
// Cmd starts is the test binary itself, which enters the namespace (setns)
// and then executes the real program in place, before any test code runs.
// So the program keeps the PID, file descriptors and environment the Cmd
// gave it. Do not replace Cmd.Path or Cmd.Args; append to Args if needed.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithCancel(ctx)
	context.AfterFunc(n.ctx, cancel)
	cmd := exec.CommandContext(ctx, name, args...) // resolves name on PATH, or sets cmd.Err
	self, err := os.Executable()
	if err != nil {
		cmd.Err = fmt.Errorf("netnstest: finding the test binary: %w", err)
		return cmd
	}
	// The launcher opens the namespace through this process's descriptor,
	// which stays open until the test cleans up.
	nsPath := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(n.ns))
	cmd.Args = append([]string{self, execFlag, nsPath, cmd.Path, "--"}, cmd.Args...)
	cmd.Path = self
	return cmd
}

// init is the launcher side of Command. It acts only when the test binary
// was started by Command: it then never returns.
func init() {
	if len(os.Args) < 6 || os.Args[1] != execFlag || os.Args[4] != "--" {
		return
	}
	runtime.LockOSThread() // setns moves only this thread; exec keeps only this thread
	nsPath, path, argv := os.Args[2], os.Args[3], os.Args[5:]
	fail := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "netnstest launcher: %s: %v\n", what, err)
		os.Exit(127)
	}
	fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		fail("open "+nsPath, err)
	}
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		fail("setns "+nsPath, err)
	}
	unix.Close(fd)
	err = unix.Exec(path, argv, os.Environ())
	fail("exec "+path, err)
}

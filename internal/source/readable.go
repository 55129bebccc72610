package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// ErrUnreadable is returned when the user the agent runs as could not
// read a file its source credentials come from: the agent would start and
// serve no credentials.
var ErrUnreadable = errors.New("the agent's user cannot read a file its source credentials come from")

// errCannotAssume: this process may not take another user's file access.
var errCannotAssume = errors.New("cannot take another user's file access")

// unreadable judges, for the agent running as id, the files among files
// that exist for this process: it returns a refusal for the first one id
// could not open for reading, or nil. It asks only when root judges for
// another user (check-config for the service): a process judging for
// itself reads the files as it is, and one that is not root cannot take
// another user's access. Root that may not take it either (in a user
// namespace that denies setgroups, say) leaves the reads unjudged, as
// they were before this check, and so does an error that kept the
// question from being asked.
func unreadable(files []namedFile, id Identity) error {
	if os.Geteuid() != 0 || id.UID == 0 || len(id.Groups) == 0 {
		return nil
	}
	var paths []string
	var present []namedFile
	for _, f := range files {
		if f.err != nil {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			continue // missing: the SDK skips it; unwalkable: reported by the other checks
		}
		paths = append(paths, f.path)
		present = append(present, f)
	}
	if len(paths) == 0 {
		return nil
	}
	errs, err := openAs(id, paths)
	if err != nil {
		return nil
	}
	for i, err := range errs {
		if !errors.Is(err, fs.ErrPermission) {
			continue
		}
		what := ""
		if present[i].what != "" {
			what = present[i].what + ": "
		}
		return fmt.Errorf("source credentials: %s%s cannot be read by user %s, as whom the agent runs (%v): %w; give group %s read access to it and search access to the directories above it",
			what, paths[i], userName(id.UID), err, ErrUnreadable, groupName(id.Groups[0]))
	}
	return nil
}

// openAs opens each of paths for reading as a process of id would, closes
// it, and returns each one's error (nil where id could read it). The
// kernel answers, ACLs and all: on a thread of its own, this process takes
// id's file-system identity (setfsuid, setfsgid and setgroups, which change
// the calling thread only, unlike syscall.Setuid), opens, and takes its own
// back. The thread goes back to the runtime only once its identity is
// restored; otherwise it is never used again (the runtime ends a thread
// whose goroutine exits locked to it, or parks it for good if it is the
// main thread).
func openAs(id Identity, paths []string) (errs []error, err error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		restored := false
		defer func() {
			if restored {
				runtime.UnlockOSThread()
			}
		}()
		savedGroups, gerr := unix.Getgroups()
		if gerr != nil {
			err, restored = gerr, true
			return
		}
		groups := make([]int, len(id.Groups))
		for i, g := range id.Groups {
			groups[i] = int(g)
		}
		if gerr := unix.Setgroups(groups); gerr != nil {
			err, restored = fmt.Errorf("%w (setgroups: %v)", errCannotAssume, gerr), true
			return
		}
		// setfsuid and setfsgid return the previous value and report a
		// refusal only by leaving it: -1 reads the value without a change.
		prevGID, _ := unix.SetfsgidRetGid(int(id.Groups[0]))
		prevUID, _ := unix.SetfsuidRetUid(int(id.UID))
		if fsuid, _ := unix.SetfsuidRetUid(-1); fsuid != int(id.UID) {
			err = errCannotAssume
		} else if fsgid, _ := unix.SetfsgidRetGid(-1); fsgid != int(id.Groups[0]) {
			err = errCannotAssume
		} else {
			errs = make([]error, len(paths))
			for i, p := range paths {
				// O_NONBLOCK: a FIFO opens at once, as a file would.
				fd, oerr := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
				if oerr != nil {
					errs[i] = &fs.PathError{Op: "open", Path: p, Err: oerr}
					continue
				}
				unix.Close(fd)
			}
		}
		unix.SetfsuidRetUid(prevUID)
		unix.SetfsgidRetGid(prevGID)
		serr := unix.Setgroups(savedGroups)
		fsuid, _ := unix.SetfsuidRetUid(-1)
		fsgid, _ := unix.SetfsgidRetGid(-1)
		restored = serr == nil && fsuid == prevUID && fsgid == prevGID
	}()
	<-done
	return errs, err
}

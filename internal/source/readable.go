package source

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// ErrUnreadable is returned when the user the agent runs as could not
// read a file its source credentials come from, or run the program that
// prints them: the agent would start and serve no credentials.
var ErrUnreadable = errors.New("the agent's user cannot use a file its source credentials come from")

// errCannotAssume: this process may not take another user's file access.
var errCannotAssume = errors.New("cannot take another user's file access")

// unusable judges, for the agent running as id, the files among files
// that exist for this process: it returns a refusal for the first one id
// could not read or run, as its need says, or nil. A program to run must
// exist, be a regular file, and be readable too unless it is an ELF
// binary: an interpreter (its #! line's, or sh for a file without one)
// opens it. It asks only when root judges for another user (check-config
// for the service): a process judging for itself reads the files as it
// is, and one that is not root cannot take another user's access. Root
// that may not take it either (in a user namespace that denies setgroups,
// say) leaves the question unjudged, as it was before this check, and so
// does an error that kept the question from being asked.
func unusable(files []namedFile, id Identity) error {
	if os.Geteuid() != 0 || id.UID == 0 || len(id.Groups) == 0 {
		return nil
	}
	var asks []access
	var present []namedFile
	for _, f := range files {
		if f.err != nil || f.need == 0 {
			continue
		}
		fi, err := os.Stat(f.path)
		if errors.Is(err, fs.ErrNotExist) && f.need&unix.X_OK != 0 {
			// A missing file to read the SDK skips; a missing program
			// fails every fetch.
			return fmt.Errorf("source credentials: %s: %s does not exist, so it cannot be run: %w", f.what, f.path, ErrUnreadable)
		}
		if err != nil {
			continue // missing: the SDK skips it; unwalkable: reported by the other checks
		}
		need := f.need
		if need&unix.X_OK != 0 {
			if !fi.Mode().IsRegular() {
				return fmt.Errorf("source credentials: %s: %s is not a regular file, so it cannot be run: %w", f.what, f.path, ErrUnreadable)
			}
			if !elf(f.path) {
				need |= unix.R_OK
			}
		}
		asks = append(asks, access{f.path, need})
		present = append(present, f)
	}
	if len(asks) == 0 {
		return nil
	}
	errs, err := accessAs(id, asks)
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
		verb, grant := "read", "read access to it"
		if asks[i].mode&unix.X_OK != 0 {
			verb, grant = "run", "execute access to it (read access too, unless it is an ELF binary), on a file system not mounted noexec,"
		}
		return fmt.Errorf("source credentials: %s%s cannot be %s by user %s, as whom the agent runs (%v): %w; give user %s or group %s %s and search access to the directories above it",
			what, asks[i].path, verb, userName(id.UID), err, ErrUnreadable, userName(id.UID), groupName(id.Groups[0]), grant)
	}
	return nil
}

// access is a question for accessAs: may the user open path for mode
// (unix.R_OK, unix.X_OK or both)?
type access struct {
	path string
	mode uint32
}

// elf reports whether the regular file at path is an ELF binary, which
// the kernel runs without reading it as the caller.
func elf(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, 4)
	n, _ := io.ReadFull(f, b)
	return n == 4 && string(b) == "\x7fELF"
}

// accessAs asks, for each of asks, whether a process of id could open
// the file for its mode, and returns each one's error (nil where it
// could). The kernel answers, ACLs and noexec mounts and all: on a thread
// of its own, this process takes id's file-system identity (setfsuid,
// setfsgid and setgroups, which change the calling thread only, unlike
// syscall.Setuid; a file-system UID other than 0 also drops root's
// file-access capabilities), asks faccessat2 with AT_EACCESS, which checks
// that identity, and takes its own back. Where faccessat2 is missing
// (before Linux 5.8) or refused (EPERM from a seccomp filter that does not
// know it) it opens the file for reading instead, and leaves running
// unjudged: for reading and running, the kernel itself answers EACCES,
// never EPERM. The thread goes back to the runtime only once its identity
// is restored; otherwise it is never used again (the runtime ends a thread
// whose goroutine exits locked to it, or parks it for good if it is the
// main thread).
func accessAs(id Identity, asks []access) (errs []error, err error) {
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
			errs = make([]error, len(asks))
			for i, a := range asks {
				errs[i] = ask(a)
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

// ask answers a for this thread's file-system identity.
func ask(a access) error {
	err := unix.Faccessat2(unix.AT_FDCWD, a.path, a.mode, unix.AT_EACCESS)
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
		if err != nil {
			return &fs.PathError{Op: "access", Path: a.path, Err: err}
		}
		return nil
	}
	if a.mode&unix.R_OK == 0 {
		return nil
	}
	// O_NONBLOCK: a FIFO opens at once, as a file would.
	fd, err := unix.Open(a.path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: a.path, Err: err}
	}
	unix.Close(fd)
	return nil
}

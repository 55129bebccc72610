package source

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// ErrExposedSecret is returned when a file holding a secret key can be
// read by users other than root and the agent.
var ErrExposedSecret = errors.New("a file holding a secret key is readable by other users")

// ErrUntrustedFile is returned when a user other than root and the agent
// could change a shared config or credentials file, or put one in place:
// such a file decides where the agent's credentials come from (a
// credential_process command the agent runs, an endpoint_url it signs
// requests for), so whoever can write it can take the role.
var ErrUntrustedFile = errors.New("a file that decides the agent's source credentials can be changed by other users")

// ServiceGroup is the group the packages create for the agent.
const ServiceGroup = "imds-agent"

// secretMarkers identify a shared config or credentials file that holds a
// secret, not just settings.
var secretMarkers = [][]byte{[]byte("aws_secret_access_key"), []byte("aws_session_token")}

// CheckFiles refuses a file among paths that holds a secret key and that
// users other than root and the agent could read, and any file among paths
// that they could write, or create or replace through its directories.
// Missing files are fine (the SDK skips them) when no one else could put
// them there; the config file of the agent itself holds no secrets and is
// not checked.
func CheckFiles(paths []string) error {
	uid, groups := os.Getuid(), ownGroups()
	for _, p := range paths {
		if err := checkWriters(p, uid, groups); err != nil {
			return fmt.Errorf("source credentials: %w: %w", err, ErrUntrustedFile)
		}
	}
	fixGroup := groupName(uint32(os.Getgid()))
	// The packages make the files readable by the service's group; that
	// is fine whoever runs the agent.
	if g, err := user.LookupGroup(ServiceGroup); err == nil {
		if gid, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
			groups = append(groups, uint32(gid))
			fixGroup = ServiceGroup
		}
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("source credentials: %w", err)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("source credentials: %w", err)
		}
		secret := false
		for _, m := range secretMarkers {
			secret = secret || bytes.Contains(bytes.ToLower(data), m)
		}
		if !secret {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			continue
		}
		mode := fi.Mode().Perm()
		var who string
		switch {
		case mode&0o004 != 0:
			who = "every user on this host"
		case mode&0o040 != 0 && !slices.Contains(groups, st.Gid):
			who = fmt.Sprintf("the members of group %s", groupName(st.Gid))
		case mode&0o400 != 0 && st.Uid != 0 && int(st.Uid) != uid:
			who = fmt.Sprintf("its owner, user %s", userName(st.Uid))
		}
		if who != "" {
			return fmt.Errorf("%s holds a secret key and is readable by %s (mode %04o): %w; make it readable by root and the agent only: chown root:%s %s && chmod 0640 %s",
				p, who, mode, ErrExposedSecret, fixGroup, p, p)
		}
	}
	return nil
}

// checkWriters reports who other than root and the agent (uid, in groups)
// could change the file at path or what the path leads to: the file, and
// every directory above it, before and after symbolic links are followed.
// A directory others may write to is fine only with the sticky bit (/tmp),
// and only for an entry in it that exists and that root or the agent owns.
func checkWriters(path string, uid int, groups []uint32) error {
	path = filepath.Clean(path)
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%s is not an absolute path", path)
	}
	chains := []string{path}
	if real, err := filepath.EvalSymlinks(path); err == nil && real != path {
		chains = append(chains, real)
	} else if errors.Is(err, fs.ErrNotExist) {
		if dir, err := filepath.EvalSymlinks(filepath.Dir(path)); err == nil && dir != filepath.Dir(path) {
			chains = append(chains, filepath.Join(dir, filepath.Base(path)))
		}
	}
	trusted := func(st *syscall.Stat_t) bool { return st.Uid == 0 || int(st.Uid) == uid }
	for _, p := range chains {
		childTrusted := false // the entry below the directory looked at exists and is trusted
		for cur := p; ; cur = filepath.Dir(cur) {
			fi, err := os.Lstat(cur)
			if errors.Is(err, fs.ErrNotExist) && cur == p {
				continue
			}
			if err != nil {
				return err
			}
			st := fi.Sys().(*syscall.Stat_t)
			mode := fi.Mode()
			var who string
			switch {
			case !trusted(st):
				who = "its owner, user " + userName(st.Uid)
			case mode.Type() == fs.ModeSymlink:
				// A link's own mode means nothing; its owner and its
				// directory decide who can change it.
			case mode&0o002 != 0 && !(mode.IsDir() && mode&fs.ModeSticky != 0 && childTrusted):
				who = "every user on this host"
			case mode&0o020 != 0 && !slices.Contains(groups, st.Gid):
				who = "the members of group " + groupName(st.Gid)
			}
			if who != "" {
				what := "it"
				if cur != p {
					what = "the directory " + cur
				}
				return fmt.Errorf("%s can be changed by %s, through %s (owner %s, mode %s); let root alone write it and its directories",
					path, who, what, userName(st.Uid), mode)
			}
			childTrusted = trusted(st)
			if cur == "/" {
				break
			}
		}
	}
	return nil
}

func ownGroups() []uint32 {
	out := []uint32{uint32(os.Getgid())}
	if gs, err := os.Getgroups(); err == nil {
		for _, g := range gs {
			out = append(out, uint32(g))
		}
	}
	return out
}

func groupName(gid uint32) string {
	if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
		return g.Name
	}
	return strconv.FormatUint(uint64(gid), 10)
}

func userName(uid uint32) string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		return u.Username
	}
	return strconv.FormatUint(uint64(uid), 10)
}

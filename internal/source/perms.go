package source

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"slices"
	"strconv"
	"syscall"
)

// ErrExposedSecret is returned when a file holding a secret key can be
// read by users other than root and the agent.
var ErrExposedSecret = errors.New("a file holding a secret key is readable by other users")

// ServiceGroup is the group the packages create for the agent.
const ServiceGroup = "imds-agent"

// secretMarkers identify a shared config or credentials file that holds a
// secret, not just settings.
var secretMarkers = [][]byte{[]byte("aws_secret_access_key"), []byte("aws_session_token")}

// CheckFiles refuses a file among paths that holds a secret key and that
// users other than root and the agent could read. Missing files are fine
// (the SDK skips them); the config file of the agent itself holds no
// secrets and is not checked.
func CheckFiles(paths []string) error {
	uid, groups := os.Getuid(), ownGroups()
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

package caller

import (
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	defaultCgroupRoot = "/sys/fs/cgroup"
	// maxCgroups bounds the id → path cache. Hosts run hundreds of
	// cgroups; tens of thousands means something is churning them, and
	// past the bound the rest are reported as unknown.
	maxCgroups = 1 << 16
	// cgroupRefreshEvery limits walks of the hierarchy: an id not in the
	// cache triggers a walk at most this often, and a lookup waits at most
	// this long, and then the walk, for the walk that can find it.
	cgroupRefreshEvery = 250 * time.Millisecond
)

// findCgroup2 returns the cgroup v2 mount at root, or under root/unified
// (the hybrid layout, where root holds the v1 hierarchies).
func findCgroup2(root string) (string, bool) {
	for _, dir := range []string{root, filepath.Join(root, "unified")} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir, true
		}
	}
	return "", false
}

type cgroupEntry struct {
	path string // relative to the hierarchy's root, "/" for the root
	unit string
}

// cgroupCache maps cgroup v2 ids to paths. A cgroup's id is the inode
// number of its directory (on 64-bit kernels), so a walk of the hierarchy
// builds the map. Readers never lock: each walk publishes a new map.
type cgroupCache struct {
	root  string
	log   *slog.Logger
	now   func() time.Time
	sleep func(time.Duration)
	max   int

	m     atomic.Pointer[map[uint64]cgroupEntry]
	walks atomic.Int64 // walks started: a lookup's miss is answered by one started after it was asked

	walkMu   sync.Mutex          // one walk at a time; guards the fields below
	lastWalk time.Time           // the last walk's start; zero = never
	failed   bool                // the last walk could not read the hierarchy
	absent   map[uint64]struct{} // ids a walk started after they were asked for did not find
}

func newCgroupCache(root string, log *slog.Logger, now func() time.Time, sleep func(time.Duration), max int) *cgroupCache {
	return &cgroupCache{root: root, log: log, now: now, sleep: sleep, max: max}
}

// cached returns the cgroup with this id if the last walk found it.
func (c *cgroupCache) cached(id uint64) (cgroupEntry, bool) {
	if m := c.m.Load(); m != nil {
		e, ok := (*m)[id]
		return e, ok
	}
	return cgroupEntry{}, false
}

// lookup returns the cgroup with this id. On a miss it is answered by the
// first walk of the hierarchy to start after it was asked: one another
// lookup starts meanwhile, or the one it makes, waiting first, without
// holding the lock, until cgroupRefreshEvery has passed since the last. A
// cgroup made just after a walk (services starting together at boot, each
// in a new cgroup) is thus found a moment later, not reported unknown for
// good: a connection names its caller's cgroup once, and access rules on
// units and cgroups fail closed without it. An id such a walk did not find
// (its cgroup gone, outside the hierarchy this process sees, or past the
// cache's bound) is remembered and answered at once after that; so is any
// miss after a walk that could not read the hierarchy.
func (c *cgroupCache) lookup(id uint64) (cgroupEntry, bool) {
	if e, ok := c.cached(id); ok {
		return e, true
	}
	asked := c.walks.Load()
	c.walkMu.Lock()
	defer c.walkMu.Unlock()
	for {
		// A walk in progress when this lookup came (it was waiting for
		// the lock) may have found the cgroup: a second connection from
		// a new cgroup comes while the first one's walk runs.
		if e, ok := c.cached(id); ok {
			return e, true
		}
		if c.walks.Load() != asked {
			// A walk started after the lookup was asked did not find it.
			c.remember(id)
			return cgroupEntry{}, false
		}
		if _, ok := c.absent[id]; ok {
			return cgroupEntry{}, false
		}
		var wait time.Duration
		if !c.lastWalk.IsZero() {
			wait = cgroupRefreshEvery - c.now().Sub(c.lastWalk)
		}
		// A wait longer than the interval is a wall clock stepped back
		// (the fake clocks of tests; time.Now's monotonic reading does
		// not step): walk now.
		if wait <= 0 || wait > cgroupRefreshEvery {
			break
		}
		if c.failed {
			return cgroupEntry{}, false
		}
		c.walkMu.Unlock()
		c.sleep(wait)
		c.walkMu.Lock()
	}
	c.refresh()
	e, ok := (*c.m.Load())[id]
	if !ok {
		c.remember(id)
	}
	return e, ok
}

// remember records id as not found by a walk made after it was asked for.
// The set is bounded by the cache's bound, and starts afresh past it. The
// caller holds walkMu.
func (c *cgroupCache) remember(id uint64) {
	if c.absent == nil || len(c.absent) >= c.max {
		c.absent = make(map[uint64]struct{})
	}
	c.absent[id] = struct{}{}
}

// refresh walks the hierarchy and publishes the new map (the previous one
// stays if the hierarchy cannot be read). Cgroups that come and go during
// the walk are simply missed or kept until the next one. The caller holds
// walkMu.
func (c *cgroupCache) refresh() {
	start := c.now()
	c.lastWalk = start
	c.walks.Add(1)
	m := make(map[uint64]cgroupEntry)
	if prev := c.m.Load(); prev != nil {
		m = make(map[uint64]cgroupEntry, len(*prev))
	}
	full := false
	err := filepath.WalkDir(c.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == c.root {
				return err
			}
			return nil // removed while we walked
		}
		if !d.IsDir() {
			return nil
		}
		if len(m) >= c.max {
			full = true
			return fs.SkipAll
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		rel := "/"
		if path != c.root {
			rel = "/" + filepath.ToSlash(strings.TrimPrefix(path, c.root+string(filepath.Separator)))
		}
		m[st.Ino] = cgroupEntry{path: rel, unit: unitFromCgroup(rel)}
		return nil
	})
	c.failed = err != nil
	if err != nil {
		c.log.Warn("cannot read the cgroup hierarchy", "root", c.root, "err", err)
		// The cgroups found before stay known: a hierarchy that could
		// not be read for a moment must not make every caller unknown.
		if c.m.Load() != nil {
			return
		}
	}
	if full {
		c.log.Warn("cgroup cache full: further cgroups are reported as unknown", "root", c.root, "max", c.max)
	}
	c.m.Store(&m)
	c.log.Debug("cgroup cache refreshed", "root", c.root, "cgroups", len(m), "took", c.now().Sub(start))
}

// unitSuffixes are the unit types whose processes run in a cgroup of their
// own. Slices only group other units.
var unitSuffixes = [...]string{".service", ".scope", ".socket", ".mount", ".swap"}

func isUnit(name string) bool {
	for _, s := range unitSuffixes {
		if len(name) > len(s) && strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

// unitFromCgroup names the systemd unit a cgroup v2 path belongs to, as
// systemd lays the tree out: slices, then the unit; sub-cgroups below a
// unit (Delegate=) still belong to it, whatever they are called. Under a
// user manager (user@UID.service) the answer is the user's unit, which
// that user named: an access rule on a unit name should pair it with a UID.
func unitFromCgroup(path string) string {
	unit := ""
	rest := strings.TrimPrefix(path, "/")
	for rest != "" {
		var name string
		name, rest, _ = strings.Cut(rest, "/")
		switch {
		case strings.HasSuffix(name, ".slice"):
			continue
		case !isUnit(name):
			return unit
		case unit == "":
			unit = name
			if !strings.HasPrefix(name, "user@") || !strings.HasSuffix(name, ".service") {
				return unit
			}
		case name == "init.scope":
			return unit // the user manager itself
		default:
			return name // a unit of the user manager
		}
	}
	return unit
}

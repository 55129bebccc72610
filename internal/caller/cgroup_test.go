package caller

import (
	"bufio"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestUnitFromCgroup(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{"", ""},
		{"/", ""},
		{"/system.slice", ""},
		{"/system.slice/nginx.service", "nginx.service"},
		{"/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service"},
		{"/init.scope", "init.scope"},
		{"/system.slice/docker-0123abcd.scope", "docker-0123abcd.scope"},
		{"/system.slice/sshd.socket", "sshd.socket"},
		{"/system.slice/boot.mount", "boot.mount"},
		{"/machine.slice/machine-qemu\\x2d1.scope/libvirt/vcpu0", "machine-qemu\\x2d1.scope"},
		// Sub-cgroups of a unit (Delegate=) belong to it, whatever their
		// names: a delegated tree cannot claim another system unit.
		{"/system.slice/nginx.service/worker", "nginx.service"},
		{"/system.slice/containerd.service/sshd.service", "containerd.service"},
		// Login sessions.
		{"/user.slice/user-1000.slice/session-3.scope", "session-3.scope"},
		// A user manager's units.
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/foo.scope", "foo.scope"},
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome.slice/bar.service", "bar.service"},
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/foo.scope/sub", "foo.scope"},
		{"/user.slice/user-1000.slice/user@1000.service/init.scope", "user@1000.service"},
		{"/user.slice/user-1000.slice/user@1000.service", "user@1000.service"},
		{"/user.slice/user-1000.slice/user@1000.service/other", "user@1000.service"},
		// Trees systemd did not lay out have no unit.
		{"/kubepods/burstable/pod0123/abcdef", ""},
		{"/docker/0123abcd", ""},
		{"/.service", ""},
		{"/system.slice/.scope", ""},
	} {
		if got := unitFromCgroup(tc.path); got != tc.want {
			t.Errorf("unitFromCgroup(%q) = %q, want %q", tc.path, got, tc.want)
		}
	}
}

// cgroupSelf is the test process's own cgroup v2 membership.
type cgroupSelf struct {
	root string // the cgroup v2 mount, "" if none
	path string // from /proc/self/cgroup
	id   uint64 // inode of root+path
}

func selfCgroup(t testing.TB) cgroupSelf {
	t.Helper()
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var s cgroupSelf
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			s.path = p
		}
	}
	root, ok := findCgroup2(defaultCgroupRoot)
	if !ok || s.path == "" {
		return s
	}
	s.root = root
	fi, err := os.Stat(filepath.Join(root, s.path))
	if err != nil {
		t.Fatal(err)
	}
	s.id = fi.Sys().(*syscall.Stat_t).Ino
	return s
}

// noCgroupIDOnCI fails a test that got no cgroup id for a socket on CI,
// whose kernel reports them: unit: and cgroup: rules would never match
// there, with every test passing.
const noCgroupIDOnCI = "the kernel reported no cgroup id for a socket; CI's does (Linux 5.7 and later, with cgroup v2)"

// skipWithoutCgroupID skips a test about cgroups on a kernel that reports
// no cgroup id for sockets, except on CI.
func skipWithoutCgroupID(t testing.TB) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(noCgroupIDOnCI)
	}
	t.Skip("the kernel reports no cgroup id for sockets")
}

// checkCgroup: with a cgroup id from the kernel, the path and unit are the
// test process's own; without one, they are empty rather than wrong.
func checkCgroup(t testing.TB, got Info, self cgroupSelf) {
	t.Helper()
	switch {
	case got.CgroupID == 0:
		if got.Cgroup != "" || got.Unit != "" {
			t.Errorf("no cgroup id, yet Cgroup %q Unit %q", got.Cgroup, got.Unit)
		}
		if os.Getenv("CI") != "" {
			t.Error(noCgroupIDOnCI)
		}
		t.Log("the kernel reports no cgroup id for sockets")
	case self.root == "":
		if got.Cgroup != "" || got.Unit != "" {
			t.Errorf("no cgroup v2 mount, yet Cgroup %q Unit %q", got.Cgroup, got.Unit)
		}
	default:
		if got.CgroupID != self.id || got.Cgroup != self.path || got.Unit != unitFromCgroup(self.path) {
			t.Errorf("cgroup id %d path %q unit %q, want %d %q %q (/proc/self/cgroup)",
				got.CgroupID, got.Cgroup, got.Unit, self.id, self.path, unitFromCgroup(self.path))
		}
	}
}

// A client started in a cgroup of its own (created for the test, named as
// systemd names a scope) is reported with that cgroup and unit.
func TestLookupCgroupOfChild(t *testing.T) {
	requireRoot(t)
	root, ok := findCgroup2(defaultCgroupRoot)
	if !ok {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	r := newResolver(t, Options{})
	ln := listen(t, "tcp4", "127.0.0.1:0")

	name := "imds-caller-test-" + strconv.Itoa(os.Getpid()) + ".scope"
	dir := filepath.Join(root, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot create a cgroup: %v", err)
	}
	t.Cleanup(func() { removeCgroup(t, dir) }) // after the helper exits
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}

	ino, server := startClient(t, selfBinary(t), ln, &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd})
	local, remote := ends(server)
	got := lookup(t, r, local, remote)
	if got.CgroupID == 0 {
		skipWithoutCgroupID(t)
	}
	want := Info{Local: true, UID: 0, Inode: ino, CgroupID: st.Ino, Cgroup: "/" + name, Unit: name}
	if got != want {
		t.Errorf("Lookup = %+v, want %+v", got, want)
	}
}

func selfBinary(t *testing.T) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return self
}

// removeCgroup removes an empty cgroup; its last process may take a moment
// to leave after exiting.
func removeCgroup(t *testing.T, dir string) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			t.Errorf("remove cgroup: %v", err)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeClock is a clock the test moves by hand; sleeping moves it too, and
// runs during, if set, as if another goroutine ran meanwhile.
type fakeClock struct {
	mu     sync.Mutex
	t      time.Time
	slept  []time.Duration
	during func()
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func (c *fakeClock) sleep(d time.Duration) {
	c.mu.Lock()
	c.slept = append(c.slept, d)
	c.t = c.t.Add(d)
	during := c.during
	c.mu.Unlock()
	if during != nil {
		during()
	}
}

// sleeps returns the waits so far.
func (c *fakeClock) sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.slept)
}

func inodeOf(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestCgroupCache(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"system.slice/nginx.service", "user.slice"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "system.slice/cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)}
	c := newCgroupCache(root, slog.New(slog.DiscardHandler), clock.now, clock.sleep, 100)

	check := func(path string, want cgroupEntry, wantOK bool, wantWalks int64) {
		t.Helper()
		got, ok := c.lookup(inodeOf(t, filepath.Join(root, path)))
		if got != want || ok != wantOK {
			t.Errorf("lookup(%s) = %+v, %v; want %+v, %v", path, got, ok, want, wantOK)
		}
		if n := c.walks.Load(); n != wantWalks {
			t.Errorf("after lookup(%s): %d walks, want %d", path, n, wantWalks)
		}
	}
	// The first lookup walks; hits after it do not.
	check("system.slice/nginx.service", cgroupEntry{"/system.slice/nginx.service", "nginx.service"}, true, 1)
	check("", cgroupEntry{"/", ""}, true, 1)
	check("user.slice", cgroupEntry{"/user.slice", ""}, true, 1)

	// A cgroup created after the walk is found by the next one, which its
	// lookup waits for: walks stay cgroupRefreshEvery apart.
	if err := os.Mkdir(filepath.Join(root, "init.scope"), 0o755); err != nil {
		t.Fatal(err)
	}
	clock.add(100 * time.Millisecond)
	check("init.scope", cgroupEntry{"/init.scope", "init.scope"}, true, 2)
	if want := []time.Duration{cgroupRefreshEvery - 100*time.Millisecond}; !slices.Equal(clock.sleeps(), want) {
		t.Errorf("waited %v before the walk, want %v", clock.sleeps(), want)
	}
	// Once the interval has passed, a miss walks at once.
	if err := os.Mkdir(filepath.Join(root, "later.scope"), 0o755); err != nil {
		t.Fatal(err)
	}
	clock.add(cgroupRefreshEvery)
	check("later.scope", cgroupEntry{"/later.scope", "later.scope"}, true, 3)
	if len(clock.sleeps()) != 1 {
		t.Errorf("waited %v, want no wait after the first", clock.sleeps())
	}

	// Removed cgroups leave the cache at the next walk.
	if err := os.Remove(filepath.Join(root, "user.slice")); err != nil {
		t.Fatal(err)
	}
	clock.add(time.Second)
	if _, ok := c.lookup(1 << 62); ok { // a miss forces a walk
		t.Error("lookup of an unknown id succeeded")
	}
	if n := len(*c.m.Load()); n != 5 {
		t.Errorf("cache holds %d cgroups after the walk, want 5", n)
	}
}

// A lookup that misses while another's walk is in progress waits for that
// walk rather than calling the cgroup unknown: two connections from a new
// cgroup often come together.
func TestCgroupCacheWaitsForTheWalkInProgress(t *testing.T) {
	root := t.TempDir()
	clock := &fakeClock{t: time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)}
	c := newCgroupCache(root, slog.New(slog.DiscardHandler), clock.now, clock.sleep, 100)
	c.lookup(1 << 62) // the first walk
	clock.add(cgroupRefreshEvery)
	if err := os.Mkdir(filepath.Join(root, "new.scope"), 0o755); err != nil {
		t.Fatal(err)
	}
	id := inodeOf(t, filepath.Join(root, "new.scope"))

	// Another connection's lookup has started the walk that will find it.
	c.walkMu.Lock()
	c.lastWalk = clock.now()
	type result struct {
		e  cgroupEntry
		ok bool
	}
	done := make(chan result, 1)
	go func() {
		e, ok := c.lookup(id)
		done <- result{e, ok}
	}()
	select {
	case r := <-done:
		c.walkMu.Unlock()
		t.Fatalf("lookup during a walk returned %+v, %v without waiting for it", r.e, r.ok)
	case <-time.After(50 * time.Millisecond):
	}
	c.refresh()
	c.walkMu.Unlock()
	if r := <-done; !r.ok || r.e.path != "/new.scope" {
		t.Errorf("lookup during a walk = %+v, %v; want /new.scope from that walk", r.e, r.ok)
	}
	if n := c.walks.Load(); n != 2 {
		t.Errorf("%d walks, want 2", n)
	}
}

// A lookup is answered by the first walk to start after it was asked:
// when that walk was another's, made while this lookup waited, and did not
// find the cgroup (gone, or past the bound), the lookup does not walk
// again, and a later lookup of the same id is answered at once.
func TestCgroupCacheAnsweredByALaterWalk(t *testing.T) {
	root := t.TempDir()
	clock := &fakeClock{t: time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)}
	c := newCgroupCache(root, slog.New(slog.DiscardHandler), clock.now, clock.sleep, 100)
	c.lookup(1 << 62) // the first walk
	clock.add(time.Millisecond)
	var other sync.Once
	clock.during = func() { // another connection's walk, while this one waits
		other.Do(func() {
			c.walkMu.Lock()
			defer c.walkMu.Unlock()
			c.refresh()
		})
	}
	if _, ok := c.lookup(1 << 61); ok {
		t.Error("lookup of an unknown id succeeded")
	}
	if n, slept := c.walks.Load(), clock.sleeps(); n != 2 || !slices.Equal(slept, []time.Duration{cgroupRefreshEvery - time.Millisecond}) {
		t.Errorf("%d walks after waiting %v; want 2 walks (the first and the other's) after waiting out the interval", n, slept)
	}
	clock.during = nil
	clock.add(time.Millisecond)
	if _, ok := c.lookup(1 << 61); ok {
		t.Error("second lookup of an unknown id succeeded")
	}
	if n, slept := c.walks.Load(), len(clock.sleeps()); n != 2 || slept != 1 {
		t.Errorf("second lookup of an id a later walk did not find: %d walks and %d waits, want no more of either", n, slept)
	}
}

// A wall clock stepped back past the last walk does not make a lookup wait
// longer than the interval: it walks at once.
func TestCgroupCacheClockSteppedBack(t *testing.T) {
	root := t.TempDir()
	clock := &fakeClock{t: time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)}
	c := newCgroupCache(root, slog.New(slog.DiscardHandler), clock.now, clock.sleep, 100)
	c.lookup(1 << 62) // the first walk
	if err := os.Mkdir(filepath.Join(root, "new.scope"), 0o755); err != nil {
		t.Fatal(err)
	}
	clock.add(-time.Hour)
	if e, ok := c.lookup(inodeOf(t, filepath.Join(root, "new.scope"))); !ok || e.path != "/new.scope" {
		t.Errorf("lookup after the clock stepped back = %+v, %v", e, ok)
	}
	if n, slept := c.walks.Load(), clock.sleeps(); n != 2 || len(slept) != 0 {
		t.Errorf("%d walks after waiting %v; want 2 and no wait", n, slept)
	}
}

// After a walk that could not read the hierarchy a miss is answered at
// once, not after a wait for another walk likely to fail the same way; and
// the cgroups known before stay known.
func TestCgroupCacheFailedWalk(t *testing.T) {
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "a.scope"), 0o755); err != nil {
		t.Fatal(err)
	}
	known := inodeOf(t, filepath.Join(root, "a.scope"))
	clock := &fakeClock{t: time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)}
	c := newCgroupCache(root, slog.New(slog.DiscardHandler), clock.now, clock.sleep, 100)
	if _, ok := c.lookup(known); !ok {
		t.Fatal("lookup of a cgroup in the hierarchy failed")
	}
	if err := os.Rename(root, root+".gone"); err != nil {
		t.Fatal(err)
	}
	clock.add(cgroupRefreshEvery)
	for i := range uint64(3) {
		if _, ok := c.lookup(1<<62 + i); ok {
			t.Error("lookup in a missing hierarchy succeeded")
		}
		clock.add(time.Millisecond)
	}
	if n, slept := c.walks.Load(), len(clock.sleeps()); n != 2 || slept != 0 {
		t.Errorf("%d walks and %d waits, want 2 walks (the first, the failed one) and no wait", n, slept)
	}
	if e, ok := c.lookup(known); !ok || e.path != "/a.scope" {
		t.Errorf("lookup of a cgroup known before the failed walk = %+v, %v", e, ok)
	}
	clock.add(cgroupRefreshEvery)
	c.lookup(1 << 61)
	if n := c.walks.Load(); n != 3 {
		t.Errorf("%d walks once the interval passed, want 3", n)
	}
}

func TestCgroupCacheBounded(t *testing.T) {
	root := t.TempDir()
	for i := range 10 {
		if err := os.Mkdir(filepath.Join(root, "c"+strconv.Itoa(i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	clock := &fakeClock{t: time.Unix(1, 0)}
	c := newCgroupCache(root, slog.New(slog.DiscardHandler), clock.now, clock.sleep, 4)
	c.lookup(0)
	if n := len(*c.m.Load()); n != 4 {
		t.Errorf("cache holds %d cgroups, want the bound 4", n)
	}
}

// The resolver maps the cgroup id of the test's own connection to the path
// /proc/self/cgroup names.
func TestLookupOwnCgroup(t *testing.T) {
	self := selfCgroup(t)
	r := newResolver(t, Options{})
	ln := listen(t, "tcp4", "127.0.0.1:0")
	_, server := connect(t, "tcp4", ln)
	local, remote := ends(server)
	got := lookup(t, r, local, remote)
	t.Logf("cgroup id %d path %q unit %q (cgroup v2 at %q)", got.CgroupID, got.Cgroup, got.Unit, self.root)
	checkCgroup(t, got, self)
}

// Without a cgroup v2 hierarchy the id is still reported, the path is not.
func TestLookupNoCgroupRoot(t *testing.T) {
	r := newResolver(t, Options{CgroupRoot: t.TempDir()})
	if r.cgroups != nil {
		t.Fatal("a plain directory was taken for a cgroup v2 hierarchy")
	}
	ln := listen(t, "tcp4", "127.0.0.1:0")
	_, server := connect(t, "tcp4", ln)
	local, remote := ends(server)
	got := lookup(t, r, local, remote)
	if !got.Local || got.Cgroup != "" || got.Unit != "" {
		t.Errorf("Lookup = %+v, want local with no cgroup path", got)
	}
}

// LookupSocket never walks the hierarchy: a cgroup not in the cache comes
// back as an id alone, and CgroupOf walks to name it. Lookup after
// that finds it in the cache.
func TestLookupSocketLeavesTheWalk(t *testing.T) {
	self := selfCgroup(t)
	r := newResolver(t, Options{})
	if r.cgroups == nil || self.root == "" {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	ln := listen(t, "tcp4", "127.0.0.1:0")
	_, server := connect(t, "tcp4", ln)
	local, remote := ends(server)

	got, err := r.LookupSocket(local, remote)
	if err != nil {
		t.Fatal(err)
	}
	if got.CgroupID == 0 {
		skipWithoutCgroupID(t)
	}
	if got.CgroupID != self.id || got.Cgroup != "" || got.Unit != "" || r.cgroups.walks.Load() != 0 {
		t.Fatalf("LookupSocket before any walk = %+v after %d walks; want cgroup id %d alone, no walk", got, r.cgroups.walks.Load(), self.id)
	}
	got.Cgroup, got.Unit = r.CgroupOf(got.CgroupID)
	if got.Cgroup != self.path || got.Unit != unitFromCgroup(self.path) || r.cgroups.walks.Load() != 1 {
		t.Errorf("CgroupOf = %q, %q after %d walks; want path %q after 1", got.Cgroup, got.Unit, r.cgroups.walks.Load(), self.path)
	}
	again, err := r.LookupSocket(local, remote)
	if err != nil {
		t.Fatal(err)
	}
	if again != got || r.cgroups.walks.Load() != 1 {
		t.Errorf("LookupSocket once the cache holds the cgroup = %+v after %d walks; want %+v after 1", again, r.cgroups.walks.Load(), got)
	}
}

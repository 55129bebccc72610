// Package caller finds who is on the other end of an accepted TCP
// connection: it asks the kernel (NETLINK_SOCK_DIAG) for the client's socket
// and reports its owner's UID, the socket inode, and the cgroup v2 path and
// systemd unit the socket was created in. A client whose socket is not in
// the resolver's network namespace (a container, another namespace, another
// host) is reported as not local; one whose address is this host's own but
// whose socket cannot be found is reported as unidentified.
//
// One lookup is one exact sock_diag request answered from the kernel's hash
// tables (microseconds), not a dump of every socket on the host, so it can
// run once per accepted connection. It needs no privilege, only AF_NETLINK.
package caller

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// Info describes the local owner of a connection's client socket. When
// Local is false the client is elsewhere (a container, another namespace,
// another host): it counts as one hop away for the metadata hop limit and
// has no local UID, and every other field is zero.
type Info struct {
	Local    bool   // the client socket was found in this network namespace
	UID      uint32 // the socket owner's UID (meaningful only when Local)
	Inode    uint32 // the socket's inode (a socket whose owner closed it is not identified)
	CgroupID uint64 // cgroup v2 id of the socket; 0 if unknown
	Cgroup   string // cgroup v2 path, "" if unknown
	Unit     string // systemd unit from the cgroup path, "" if none
}

// Options configure a Resolver. The zero value is ready to use.
type Options struct {
	// CgroupRoot is where cgroup v2 is mounted. Default /sys/fs/cgroup,
	// or /sys/fs/cgroup/unified on a hybrid (v1 + v2) host. When no
	// cgroup v2 is found there, Cgroup and Unit stay empty.
	CgroupRoot string
	// Logger receives debug and warning records; nil discards them.
	Logger *slog.Logger
	// Sockets is how many netlink sockets lookups share; default
	// GOMAXPROCS, at most 4. The kernel serialises sock_diag requests,
	// so more sockets buy nothing.
	Sockets int
	// Timeout bounds the wait for one kernel answer; default 100 ms.
	// A lookup that times out returns ErrTimeout: the caller is unknown
	// (the agent then counts it as local, with no user).
	Timeout time.Duration
}

// DefaultTimeout is the default bound on one lookup's wait for the kernel.
const DefaultTimeout = 100 * time.Millisecond

const maxDefaultSockets = 4

// ErrClosed is returned by Lookup after Close.
var ErrClosed = errors.New("caller: resolver closed")

// ErrTimeout is returned by a lookup the kernel did not answer in time.
var ErrTimeout = errors.New("caller: lookup timed out")

// dumpRate and dumpBurst bound the dumps lookupBound makes. Each walks the
// kernel's whole table of TCP connections (a miss took 0.4 ms with 262,144
// buckets, the table of a host with 24 GiB), and any local user can cause
// one with each connection it opens and resets at once; lookups run on
// the server's accept loop. Past the bound a client whose socket the exact
// lookup missed is unidentified, and the rules about users fail closed
// against it.
const (
	dumpRate  = 20
	dumpBurst = 50
)

// ErrUnidentified is returned for a client on this host (its address is one
// of this namespace's own) whose socket was not found: it closed, or it is
// bound to a device none of the links names any more. The caller is local,
// but nobody in particular.
var ErrUnidentified = errors.New("caller: the client is on this host but its socket was not found")

// errOrphan is ErrUnidentified for a client socket found without an owner:
// its process closed it (it lingers in FIN-WAIT-2, or FIN-WAIT-1), and the
// kernel reports such a socket with inode 0 and uid 0. Taken as found, it
// would make any user's request that closes before it is accepted root's.
var errOrphan = fmt.Errorf("%w: its owner closed it before it was identified", ErrUnidentified)

// errDumpsSpent is ErrUnidentified for a lookup that would need a dump
// past dumpRate and dumpBurst.
var errDumpsSpent = fmt.Errorf("%w: too many sockets not found at once to look further", ErrUnidentified)

// errBadAddr is preallocated: Lookup must not allocate, even to fail.
var errBadAddr = errors.New("caller: local and remote must be valid addresses of one family")

// Resolver looks up the owners of client sockets. It is safe for concurrent
// use. Its netlink sockets live in the network namespace of the thread that
// called NewResolver, and lookups answer for that namespace only.
type Resolver struct {
	log     *slog.Logger
	timeout time.Duration
	cgroups *cgroupCache // nil when no cgroup v2 hierarchy is mounted

	conns     chan *diagConn // idle sockets; all of them when none is in use
	size      int
	routeMu   sync.Mutex
	route     *netlink.Handle // NETLINK_ROUTE, in the resolver's namespace; nil: misses count as elsewhere
	dumps     *rate.Limiter   // bounds lookupBound's dumps
	done      chan struct{}   // closed by Close
	closeOnce sync.Once
	closeErr  error
}

// NewResolver opens the netlink sockets. It fails only when sock_diag is
// unavailable (for example, AF_NETLINK is not allowed to this process).
func NewResolver(opts Options) (*Resolver, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := opts.Sockets
	if n <= 0 {
		n = min(runtime.GOMAXPROCS(0), maxDefaultSockets)
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	r := &Resolver{
		log:     log,
		timeout: timeout,
		conns:   make(chan *diagConn, n),
		size:    n,
		done:    make(chan struct{}),
		dumps:   rate.NewLimiter(dumpRate, dumpBurst),
	}
	route, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("caller: netlink route socket: %w", err)
	}
	r.route = route
	for range n {
		c, err := openDiagConn(timeout)
		if err != nil {
			close(r.conns)
			for c := range r.conns {
				c.close()
			}
			route.Close()
			return nil, err
		}
		r.conns <- c
	}

	root := opts.CgroupRoot
	if root == "" {
		root = defaultCgroupRoot
	}
	if dir, ok := findCgroup2(root); ok {
		r.cgroups = newCgroupCache(dir, log, time.Now, time.Sleep, maxCgroups)
	} else {
		log.Warn("no cgroup v2 hierarchy found: callers' cgroups and units stay unknown", "root", root)
	}
	return r, nil
}

// Lookup finds the client socket of the TCP connection whose agent side is
// local and whose client side is remote (as net.Conn's LocalAddr and
// RemoteAddr say). IPv4-mapped IPv6 addresses are treated as IPv4. A client
// socket not found in this network namespace gives Info{Local: false} and
// no error, unless the client's address is one of this namespace's own:
// that gives ErrUnidentified (see lookupBound). A kernel that does not
// answer within the timeout, or no free netlink socket within it, gives
// ErrTimeout: the caller is then unknown, not known to be remote. Other
// errors mean the lookup itself failed (or the addresses are invalid).
//
// Finding the socket does not allocate; a miss does (lookupBound). A cgroup
// id not yet in the cache makes it walk the cgroup hierarchy, at most every
// cgroupRefreshEvery (waiting for the next walk if need be); a cgroup the
// walk does not find leaves Cgroup and Unit empty. Lookup is LookupSocket
// followed by CgroupOf.
func (r *Resolver) Lookup(local, remote netip.AddrPort) (Info, error) {
	info, err := r.LookupSocket(local, remote)
	if err == nil && info.Local && info.Cgroup == "" {
		info.Cgroup, info.Unit = r.CgroupOf(info.CgroupID)
	}
	return info, err
}

// LookupSocket is Lookup without walking the cgroup hierarchy: Cgroup and
// Unit are filled only for a cgroup already in the cache, and a client
// socket in any other cgroup comes back with its CgroupID alone, for
// CgroupOf. A lookup on a path that must not wait for a walk (the
// hierarchy of a busy container host takes milliseconds) uses it.
func (r *Resolver) LookupSocket(local, remote netip.AddrPort) (Info, error) {
	q, ok := newQuery(remote, local)
	if !ok {
		return Info{}, errBadAddr
	}
	var c *diagConn
	select {
	case c = <-r.conns:
	case <-r.done:
		return Info{}, ErrClosed
	default:
		// Every socket is busy: wait, but no longer than a lookup may take.
		t := time.NewTimer(r.timeout)
		select {
		case c = <-r.conns:
			t.Stop()
		case <-r.done:
			t.Stop()
			return Info{}, ErrClosed
		case <-t.C:
			return Info{}, ErrTimeout
		}
	}
	select {
	case <-r.done:
		r.conns <- c
		return Info{}, ErrClosed
	default:
	}
	var info Info
	v, err := c.exchange(&q, &info, r.timeout)
	if err == nil && v != verdictFound {
		v, err = r.lookupBound(c, &q, &info)
	}
	r.conns <- c
	switch {
	case errors.Is(err, errTimeout):
		r.log.Debug("caller lookup timed out", "local", local, "remote", remote, "timeout", r.timeout)
		return Info{}, ErrTimeout
	case err != nil:
		return Info{}, err
	case v != verdictFound:
		return Info{}, nil
	case info.Inode == 0:
		return Info{}, errOrphan
	}
	info.Local = true
	if info.CgroupID != 0 && r.cgroups != nil {
		if e, ok := r.cgroups.cached(info.CgroupID); ok {
			info.Cgroup, info.Unit = e.path, e.unit
		}
	}
	return info, nil
}

// CgroupOf returns the path and systemd unit of the cgroup with this id (a
// CgroupID from LookupSocket), walking the hierarchy when the id is not in
// the cache: at most every cgroupRefreshEvery, so it may wait up to that
// long, and then for the walk. Both are empty when the walk does not find
// it.
func (r *Resolver) CgroupOf(id uint64) (path, unit string) {
	if id == 0 || r.cgroups == nil {
		return "", ""
	}
	e, _ := r.cgroups.lookup(id)
	return e.path, e.unit
}

// lookupBound looks again for a client socket the exact lookup missed. The
// kernel matches a socket bound to a device (SO_BINDTODEVICE, open to every
// user since Linux 5.7) only when asked with that device's index, so
// without this a local user could pass for a container, or bind to any
// link to go unidentified. A client whose address is local to this
// namespace is looked for with a dump of the sockets with its ports,
// which the kernel filters whatever their device (two for an IPv4 client:
// its socket may be an IPv6 one); one not found is
// ErrUnidentified. A client elsewhere is not found, as before, and a route
// look-up that fails makes the client unidentified rather than elsewhere.
// This path is rare (a client in another namespace takes one route
// look-up) and, unlike the first look-up, allocates; the dump walks the
// kernel's table of connected sockets, within the lookup's timeout.
func (r *Resolver) lookupBound(c *diagConn, q *query, info *Info) (verdict, error) {
	if r.route == nil {
		return verdictNotFound, nil
	}
	r.routeMu.Lock()
	routes, err := r.route.RouteGet(q.src.Addr().AsSlice())
	r.routeMu.Unlock()
	if err != nil {
		return verdictNotFound, fmt.Errorf("%w: route to the client: %w", ErrUnidentified, err)
	}
	if len(routes) == 0 || routes[0].Type != unix.RTN_LOCAL {
		return verdictNotFound, nil // another namespace or host
	}
	if !r.dumps.Allow() {
		return verdictNotFound, errDumpsSpent
	}
	dump := *q
	dump.dump = true
	v, err := c.exchange(&dump, info, r.timeout)
	if err == nil && v != verdictFound && dump.family == unix.AF_INET {
		// A dump lists one family's sockets, and an IPv6 socket may
		// have connected to the IPv4 address (as ::ffff:a.b.c.d).
		if !r.dumps.Allow() {
			return verdictNotFound, errDumpsSpent
		}
		dump.family = unix.AF_INET6
		v, err = c.exchange(&dump, info, r.timeout)
	}
	if err != nil || v == verdictFound {
		return v, err
	}
	return verdictNotFound, ErrUnidentified
}

// Close waits for lookups in progress (each bounded by the timeout), then
// closes the netlink sockets. Lookups after Close return ErrClosed.
func (r *Resolver) Close() error {
	r.closeOnce.Do(func() {
		close(r.done)
		var errs []error
		for range r.size {
			c := <-r.conns
			if err := c.close(); err != nil {
				errs = append(errs, err)
			}
		}
		if r.route != nil {
			r.route.Close()
		}
		if err := errors.Join(errs...); err != nil {
			r.closeErr = fmt.Errorf("caller: close: %w", err)
		}
	})
	return r.closeErr
}

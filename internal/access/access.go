// Package access owns the local access policy: which callers on this host
// may read the role's credentials, and which the rest of the metadata tree,
// by local user, group, systemd unit, cgroup or source network. EC2 lets
// every process on an instance read its role's credentials; the default
// policy keeps that, and operators narrow it (typically by denying the
// web-facing service users that SSRF bugs turn into proxies).
package access

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/imds-agent/imds-agent/internal/config"
)

// Caller is who is asking, as far as the agent could tell.
type Caller struct {
	Addr netip.Addr // the client's address
	// Local: the client is a process on this host, in the agent's network
	// namespace. A container caller is not local.
	Local bool
	// Identified: the kernel told the agent which local user owns the
	// client socket, so UID (and Unit and Cgroup, where known) describe it.
	// A local caller that could not be identified matches every deny rule
	// about users, groups, units and cgroups and no allow rule but "all",
	// cidr rules included (a deny rule with its address holds): the policy
	// fails closed.
	Identified bool
	UID        uint32
	Unit       string
	Cgroup     string
}

// SystemUnit is the caller's unit if it is a system unit, else "". A unit
// under user.slice belongs to a user's own service manager, and a user may
// name their units anything, "nginx.service" included.
func (c Caller) SystemUnit() string {
	if strings.HasPrefix(c.Cgroup, "/user.slice/") {
		return ""
	}
	return c.Unit
}

// Class is the part of the metadata tree a rule set governs.
type Class uint8

const (
	Metadata    Class = iota // everything but the iam tree (token issuance included)
	Credentials              // meta-data/iam/...
)

// Policy is a compiled access configuration. It is immutable; a reload
// compiles a new one.
type Policy struct {
	rules  [2]ruleSet
	groups *groupCache
	open   bool // no rules at all: everyone is allowed, as on EC2
}

type ruleSet struct {
	allow, deny []matcher
}

type matcher struct {
	sel config.Selector
	uid uint32 // resolved user
	gid uint32 // resolved group
	ok  bool   // the name resolved on this host
}

// Compile resolves the configured rules against this host's users and
// groups (from /etc/passwd and /etc/group: users known only to a directory
// service through NSS must be named by uid: and gid:). An allow rule naming
// a user or group that does not exist here is logged and matches no one; a
// deny rule naming one is an error, since the agent could not enforce it.
func Compile(c config.Access, log *slog.Logger) (*Policy, error) {
	p := &Policy{groups: newGroupCache()}
	for i, r := range []config.Rules{c.Metadata, c.Credentials} {
		var rs ruleSet
		var err error
		if rs.allow, err = compile(r.Allow); err != nil {
			return nil, err
		}
		if rs.deny, err = compile(r.Deny); err != nil {
			return nil, err
		}
		for _, m := range rs.allow {
			if !m.ok {
				log.Warn("access rule names a user or group this host does not have; it matches no one", "rule", "allow "+m.sel.String())
			}
		}
		for _, m := range rs.deny {
			if !m.ok {
				return nil, fmt.Errorf("access rule deny %q: no such %s in /etc/passwd or /etc/group, so it could not be enforced; name it by uid: or gid:, or remove the rule", m.sel.String(), m.sel.Kind)
			}
		}
		p.rules[i] = rs
	}
	p.open = len(p.rules[0].allow)+len(p.rules[0].deny)+len(p.rules[1].allow)+len(p.rules[1].deny) == 0
	return p, nil
}

// compile parses selectors and resolves user and group names; a name this
// host lacks leaves the matcher's ok false.
func compile(sels []string) ([]matcher, error) {
	var out []matcher
	for _, s := range sels {
		sel, err := config.ParseSelector(s)
		if err != nil {
			return nil, err
		}
		m := matcher{sel: sel, ok: true}
		switch sel.Kind {
		case config.SelectUser:
			if u, err := user.Lookup(sel.Value); err == nil {
				n, _ := strconv.ParseUint(u.Uid, 10, 32)
				m.uid = uint32(n)
			} else {
				m.ok = false
			}
		case config.SelectGroup:
			if g, err := user.LookupGroup(sel.Value); err == nil {
				n, _ := strconv.ParseUint(g.Gid, 10, 32)
				m.gid = uint32(n)
			} else {
				m.ok = false
			}
		case config.SelectUID:
			m.uid = sel.ID
		case config.SelectGID:
			m.gid = sel.ID
		}
		out = append(out, m)
	}
	return out, nil
}

// Open reports whether the policy allows everyone everything (no rules).
func (p *Policy) Open() bool { return p.open }

// Decide says whether c may read the given class. When a rule decided,
// rule names it ("deny user:www-data", or "allow list" when no allow rule
// matched).
func (p *Policy) Decide(class Class, c Caller) (allowed bool, rule string) {
	if p.open {
		return true, ""
	}
	rs := p.rules[class]
	for _, m := range rs.deny {
		if p.matches(m, c, true) {
			return false, "deny " + m.sel.String()
		}
	}
	if len(rs.allow) == 0 {
		return true, ""
	}
	for _, m := range rs.allow {
		if p.matches(m, c, false) {
			return true, "allow " + m.sel.String()
		}
	}
	return false, "not in the allow list"
}

// matches reports whether m matches c. What the agent does not know about
// a local caller counts against it: unknown is a match for a deny rule and
// not for an allow rule.
func (p *Policy) matches(m matcher, c Caller, deny bool) bool {
	if !m.ok {
		return false
	}
	switch m.sel.Kind {
	case config.SelectAll:
		return true
	case config.SelectCIDR:
		// A process on this host may send from any of the host's
		// addresses (a bridge's, to pass for a container): its user,
		// group and unit speak for it, not the address it picked. One
		// the agent could not identify is judged by its address only
		// for a deny rule: a local user can make its socket hard to
		// find, and must not pass an allow rule by it.
		// A link-local peer's address carries its zone, which no
		// prefix contains: the rule is about the address alone.
		if !c.Addr.IsValid() || (c.Local && (c.Identified || !deny)) {
			return false
		}
		return m.sel.Prefix.Contains(c.Addr.Unmap().WithZone(""))
	}
	if !c.Local {
		return false // user, group, unit and cgroup describe local processes only
	}
	if !c.Identified {
		return deny
	}
	if (m.sel.Kind == config.SelectUnit || m.sel.Kind == config.SelectCgroup) && (c.Cgroup == "" || c.Cgroup == "/") {
		// The cgroup of a new service may not be known yet. The root is
		// no service's: systemd keeps every process out of it, and on
		// kernels before 5.15 a socket whose process is in a v1 net_cls
		// or net_prio group reports the root whatever its unit.
		return deny
	}
	switch m.sel.Kind {
	case config.SelectUser, config.SelectUID:
		return c.UID == m.uid
	case config.SelectGroup, config.SelectGID:
		is, known := p.groups.member(c.UID, m.gid)
		if !known {
			return deny // a user whose groups cannot be read
		}
		return is
	case config.SelectUnit:
		return c.SystemUnit() == m.sel.Value
	case config.SelectCgroup:
		prefix := strings.TrimSuffix(m.sel.Value, "/")
		return c.Cgroup == prefix || strings.HasPrefix(c.Cgroup, prefix+"/")
	}
	return false
}

// groupCache remembers each user's groups (primary and supplementary) for
// a minute, so group rules cost a map look-up per connection.
type groupCache struct {
	mu      sync.Mutex
	entries map[uint32]groupEntry
	lookup  func(uid uint32) ([]uint32, error)
	now     func() time.Time
}

type groupEntry struct {
	gids  []uint32
	known bool // false: the user's groups could not be read
	at    time.Time
}

const (
	groupTTL        = time.Minute
	groupCacheLimit = 4096
)

func newGroupCache() *groupCache {
	return &groupCache{entries: map[uint32]groupEntry{}, lookup: userGroups, now: time.Now}
}

// member reports whether the user is in the group, and whether the user's
// groups could be read at all: a user the user database does not list
// (this static build reads /etc/passwd and /etc/group only, so a user from
// LDAP or a DynamicUser= service's is not there) has groups nobody knows.
// That answer is kept for the same minute, as against the user.
func (g *groupCache) member(uid, gid uint32) (is, known bool) {
	g.mu.Lock()
	e, ok := g.entries[uid]
	g.mu.Unlock()
	if !ok || g.now().Sub(e.at) > groupTTL {
		gids, err := g.lookup(uid)
		e = groupEntry{gids: gids, known: err == nil, at: g.now()}
		g.mu.Lock()
		if len(g.entries) >= groupCacheLimit {
			clear(g.entries)
		}
		g.entries[uid] = e
		g.mu.Unlock()
	}
	if !e.known {
		return false, false
	}
	return slices.Contains(e.gids, gid), true
}

func userGroups(uid uint32) ([]uint32, error) {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return nil, fmt.Errorf("looking up uid %d: %w", uid, err)
	}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("groups of %s: %w", u.Username, err)
	}
	out := make([]uint32, 0, len(ids))
	for _, s := range ids {
		if n, err := strconv.ParseUint(s, 10, 32); err == nil {
			out = append(out, uint32(n))
		}
	}
	return out, nil
}

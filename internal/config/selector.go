package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Selector kinds used in access rules.
const (
	SelectUser   = "user"   // a local user name
	SelectUID    = "uid"    // a numeric user id
	SelectGroup  = "group"  // a local group name: the caller's primary or supplementary group
	SelectGID    = "gid"    // a numeric group id
	SelectUnit   = "unit"   // a systemd unit, e.g. nginx.service
	SelectCgroup = "cgroup" // a cgroup v2 path prefix, e.g. /system.slice/nginx.service
	SelectCIDR   = "cidr"   // the caller's source network
	SelectAll    = "all"    // every caller
)

// Selector is one parsed access-rule entry such as "user:www-data".
type Selector struct {
	Kind   string
	Value  string       // the text after the colon
	ID     uint32       // for uid and gid
	Prefix netip.Prefix // for cidr
}

func (s Selector) String() string {
	if s.Kind == SelectAll {
		return SelectAll
	}
	return s.Kind + ":" + s.Value
}

// ParseSelector parses an access-rule entry.
func ParseSelector(s string) (Selector, error) {
	if s == SelectAll || s == "*" {
		return Selector{Kind: SelectAll}, nil
	}
	kind, value, ok := strings.Cut(s, ":")
	if !ok || value == "" {
		return Selector{}, fmt.Errorf("%q is not a selector; write kind:value with kind one of user, uid, group, gid, unit, cgroup, cidr (or \"all\")", s)
	}
	sel := Selector{Kind: kind, Value: value}
	switch kind {
	case SelectUser, SelectGroup:
		if !printableRe.MatchString(value) {
			return Selector{}, fmt.Errorf("%q: %q is not a user or group name", s, value)
		}
	case SelectUID, SelectGID:
		n, err := strconv.ParseUint(value, 10, 32)
		if err != nil {
			return Selector{}, fmt.Errorf("%q: %q is not a numeric id", s, value)
		}
		sel.ID = uint32(n)
	case SelectUnit:
		if !printableRe.MatchString(value) || !strings.Contains(value, ".") {
			return Selector{}, fmt.Errorf("%q: %q is not a unit name such as nginx.service", s, value)
		}
	case SelectCgroup:
		if !strings.HasPrefix(value, "/") || !printableRe.MatchString(value) {
			return Selector{}, fmt.Errorf("%q: %q is not a cgroup path such as /system.slice/nginx.service", s, value)
		}
	case SelectCIDR:
		p, err := netip.ParsePrefix(value)
		if err != nil {
			a, aerr := netip.ParseAddr(value)
			if aerr != nil {
				return Selector{}, fmt.Errorf("%q: %q is not a network such as 172.17.0.0/16", s, value)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Is4In6() {
			// Callers' IPv4 addresses are compared unmapped, so a mapped
			// network would never match: a deny rule would deny nobody.
			hint := "an IPv4 network"
			if p.Bits() >= 96 {
				hint = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked().String()
			}
			return Selector{}, fmt.Errorf("%q: %q is an IPv4-mapped IPv6 network, which no caller's address matches; write %s", s, value, hint)
		}
		sel.Prefix = p.Masked()
	default:
		return Selector{}, fmt.Errorf("%q: unknown selector kind %q; use user, uid, group, gid, unit, cgroup or cidr", s, kind)
	}
	return sel, nil
}

// CheckSelector reports whether s parses as a selector.
func CheckSelector(s string) error {
	_, err := ParseSelector(s)
	return err
}

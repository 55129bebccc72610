package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Problem is one thing wrong with a configuration, tied to a key.
type Problem struct {
	Path    string // dotted key path
	Message string
}

// Problems is every problem found in a configuration.
type Problems []Problem

func (p *Problems) add(path, format string, args ...any) {
	*p = append(*p, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

// in renders the problems as one error, one line per problem, each located
// in file name at the line of its key (or of the closest enclosing key).
func (p Problems) in(name string, lines lineIndex) error {
	msgs := make([]string, 0, len(p))
	for _, pr := range p {
		loc := name
		for path := pr.Path; path != ""; {
			if l, ok := lines[path]; ok {
				loc = fmt.Sprintf("%s:%d", name, l)
				break
			}
			i := strings.LastIndexByte(path, '.')
			if i < 0 {
				break
			}
			path = path[:i]
		}
		msgs = append(msgs, fmt.Sprintf("%s: %s: %s", loc, pr.Path, pr.Message))
	}
	return errors.New(strings.Join(msgs, "\n"))
}

var (
	instanceIDRe = regexp.MustCompile(`^i-([0-9a-f]{8}|[0-9a-f]{17})$`)
	regionRe     = regexp.MustCompile(`^[a-z]{2,4}(-[a-z]+)+-[0-9]+$`) // eu-west-1, us-gov-west-1, eusc-de-east-1
	amiRe        = regexp.MustCompile(`^ami-([0-9a-f]{8}|[0-9a-f]{17})$`)
	accountRe    = regexp.MustCompile(`^[0-9]{12}$`)
	iamNameRe    = regexp.MustCompile(`^[\w+=,.@-]{1,128}$`)
	profileARNRe = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/([\x21-\x7e]*/)?[\w+=,.@-]{1,128}$`)
	roleARNRe    = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:role/([\x21-\x7e]*/)?[\w+=,.@-]{1,64}$`)
	externalIDRe = regexp.MustCompile(`^[\w+=,.@:/-]+$`)
	linkRe       = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
	printableRe  = regexp.MustCompile(`^[\x21-\x7e]+$`)
)

// maxSocketPath is the longest path a Unix socket can be bound to (the
// 108 bytes of sun_path, less the terminating NUL).
const maxSocketPath = 107

func (c *Config) validate(lines lineIndex) Problems {
	var p Problems
	if c.Version != 1 {
		p.add("version", "%d is not a version this agent reads; write \"version: 1\"", c.Version)
	}
	c.validateInstance(&p)
	c.validateCredentials(&p)
	c.validateMetadataOptions(&p)
	c.validateListen(&p)
	c.validateAccess(&p)
	switch {
	case !filepath.IsAbs(c.Admin.Socket):
		p.add("admin.socket", "%q must be an absolute path", c.Admin.Socket)
	case len(c.Admin.Socket) > maxSocketPath:
		p.add("admin.socket", "%q is %d bytes long; a Unix socket's path may be at most %d", c.Admin.Socket, len(c.Admin.Socket), maxSocketPath)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		p.add("log.level", "%q is not a level; use debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		p.add("log.format", "%q is not a format; use text or json", c.Log.Format)
	}
	if c.Metrics.Listen != "" {
		ap, err := ParseListenAddress(c.Metrics.Listen)
		switch {
		case err != nil:
			p.add("metrics.listen", "%v", err)
		case !ap.Addr().IsLoopback():
			p.add("metrics.listen", "%q is not a loopback address; the metrics endpoint has no authentication and tells when this host's credentials fail or expire, so it is served on loopback only (scrape through a local proxy or agent)", c.Metrics.Listen)
		case ap.Port() != 0 && slices.Contains(c.ListenAddrPorts(), ap):
			p.add("metrics.listen", "%q is also in listen.addresses; the metrics endpoint needs an address of its own, such as %q", c.Metrics.Listen, "127.0.0.1:9469")
		}
	}
	return p
}

func (c *Config) validateInstance(p *Problems) {
	in := c.Instance
	if in.ID != "" && !instanceIDRe.MatchString(in.ID) {
		p.add("instance.id", "%q is not an instance id; write i- and 17 lower-case hex digits, or leave it out to derive one from /etc/machine-id", in.ID)
	}
	if !regionRe.MatchString(in.Region) {
		p.add("instance.region", "%q is not a region name such as eu-west-1", in.Region)
	}
	if !strings.HasPrefix(in.AvailabilityZone, in.Region) || len(in.AvailabilityZone) != len(in.Region)+1 ||
		in.AvailabilityZone[len(in.AvailabilityZone)-1] < 'a' || in.AvailabilityZone[len(in.AvailabilityZone)-1] > 'z' {
		p.add("instance.availability_zone", "%q must be the region %q followed by one letter, such as %sa (SDKs derive the region by dropping the last character)", in.AvailabilityZone, in.Region, in.Region)
	}
	if in.Type != "" && !printableRe.MatchString(in.Type) {
		p.add("instance.type", "%q must be one word without spaces, such as m5.large", in.Type)
	}
	if in.AMIID != "" && !amiRe.MatchString(in.AMIID) {
		p.add("instance.ami_id", "%q is not an image id such as ami-0123456789abcdef0", in.AMIID)
	}
	if in.AccountID != "" && !accountRe.MatchString(in.AccountID) {
		p.add("instance.account_id", "%q is not a 12-digit account id", in.AccountID)
	}
	for _, f := range []struct{ path, v string }{{"instance.hostname", in.Hostname}, {"instance.local_hostname", in.LocalHostname}} {
		if f.v != "" && !printableRe.MatchString(f.v) {
			p.add(f.path, "%q must be a host name without spaces", f.v)
		}
	}
	if in.LocalIPv4 != "" {
		if a, err := netip.ParseAddr(in.LocalIPv4); err != nil || !a.Is4() {
			p.add("instance.local_ipv4", "%q is not an IPv4 address", in.LocalIPv4)
		}
	}
	if in.MAC != "" {
		if hw, err := net.ParseMAC(in.MAC); err != nil || len(hw) != 6 {
			p.add("instance.mac", "%q is not a MAC address such as 0e:12:34:56:78:9a", in.MAC)
		}
	}
	if in.UserDataFile != "" && !filepath.IsAbs(in.UserDataFile) {
		p.add("instance.user_data_file", "%q must be an absolute path", in.UserDataFile)
	}
}

func (c *Config) validateCredentials(p *Problems) {
	cr := c.Credentials
	switch {
	case cr.InstanceProfile != "" && cr.RoleARN != "":
		p.add("credentials.role_arn", "set either instance_profile or role_arn, not both")
	case cr.InstanceProfile != "":
		if strings.HasPrefix(cr.InstanceProfile, "arn:") {
			if !profileARNRe.MatchString(cr.InstanceProfile) {
				p.add("credentials.instance_profile", "%q is not an instance profile ARN such as arn:aws:iam::123456789012:instance-profile/web", cr.InstanceProfile)
			}
		} else if !iamNameRe.MatchString(cr.InstanceProfile) {
			p.add("credentials.instance_profile", "%q is neither an instance profile ARN nor a profile name (letters, digits and +=,.@_- only)", cr.InstanceProfile)
		}
	case cr.RoleARN != "":
		if !roleARNRe.MatchString(cr.RoleARN) {
			p.add("credentials.role_arn", "%q is not a role ARN such as arn:aws:iam::123456789012:role/web", cr.RoleARN)
		}
	}
	if cr.ExternalID != "" && (len(cr.ExternalID) < 2 || len(cr.ExternalID) > 1224 || !externalIDRe.MatchString(cr.ExternalID)) {
		p.add("credentials.external_id", "must be 2 to 1224 characters of letters, digits and +=,.@:/_-")
	}
	sd := cr.SessionDuration.D()
	switch {
	case sd < MinSessionDuration:
		p.add("credentials.session_duration", "%s is below STS's minimum of 15m", sd)
	case sd > MaxSessionDuration:
		p.add("credentials.session_duration", "%s is above STS's maximum of 12h", sd)
	case sd%time.Second != 0:
		p.add("credentials.session_duration", "%s must be a whole number of seconds", sd)
	}
	if w := time.Duration(cr.RefreshBeforeExpiry); w != 0 && w >= sd {
		p.add("credentials.refresh_before_expiry", "%s must be shorter than session_duration (%s), or auto", w, sd)
	} else if w != 0 && w < MinRefreshWindow {
		p.add("credentials.refresh_before_expiry", "%s is below %s: EC2 has new credentials at least 5 minutes before the old ones expire, and SDKs count on that, or auto", w, MinRefreshWindow)
	}
	if r := cr.ProfileRecheck.D(); r < time.Second || r > 24*time.Hour {
		p.add("credentials.profile_recheck", "%s must be between 1s and 24h", r)
	}
	if cr.SourceProfile != "" && !printableRe.MatchString(cr.SourceProfile) {
		p.add("credentials.source_profile", "%q must be a profile name without spaces", cr.SourceProfile)
	}
	for i, f := range cr.SharedConfigFiles {
		if !filepath.IsAbs(f) {
			p.add(fmt.Sprintf("credentials.shared_config_files[%d]", i), "%q must be an absolute path", f)
		}
	}
	for i, f := range cr.SharedCredentialsFiles {
		if !filepath.IsAbs(f) {
			p.add(fmt.Sprintf("credentials.shared_credentials_files[%d]", i), "%q must be an absolute path", f)
		}
	}
}

func (c *Config) validateMetadataOptions(p *Problems) {
	m := c.MetadataOptions
	if m.HTTPEndpoint != Enabled && m.HTTPEndpoint != Disabled {
		p.add("metadata_options.http_endpoint", "%q must be enabled or disabled", m.HTTPEndpoint)
	}
	if m.HTTPTokens != Required && m.HTTPTokens != Optional {
		p.add("metadata_options.http_tokens", "%q must be required or optional", m.HTTPTokens)
	}
	if m.HTTPPutResponseHopLimit < 1 || m.HTTPPutResponseHopLimit > 64 {
		p.add("metadata_options.http_put_response_hop_limit", "%d must be between 1 and 64", m.HTTPPutResponseHopLimit)
	}
	if m.HTTPProtocolIPv6 != Enabled && m.HTTPProtocolIPv6 != Disabled {
		p.add("metadata_options.http_protocol_ipv6", "%q must be enabled or disabled", m.HTTPProtocolIPv6)
	}
}

func (c *Config) validateListen(p *Problems) {
	l := c.Listen
	if l.Link != "" && (!linkRe.MatchString(l.Link) || l.Link == "." || l.Link == "..") {
		p.add("listen.link", "%q is not a link name (at most 15 letters, digits and _.-), or \"\" to manage no link", l.Link)
	}
	if len(l.Addresses) == 0 {
		p.add("listen.addresses", "needs at least one address, such as %q", IPv4Address)
	}
	seen := map[netip.AddrPort]bool{}
	for i, a := range l.Addresses {
		path := fmt.Sprintf("listen.addresses[%d]", i)
		ap, err := ParseListenAddress(a)
		if err != nil {
			p.add(path, "%v", err)
			continue
		}
		if ap.Addr().IsUnspecified() {
			p.add(path, "%q would serve the role's credentials to the whole network; name the address to serve, such as %q", a, IPv4Address)
			continue
		}
		if seen[ap] {
			p.add(path, "%q is listed twice", a)
		}
		seen[ap] = true
		if ap.Addr().Is6() && c.MetadataOptions.HTTPProtocolIPv6 == Disabled {
			p.add(path, "%q is IPv6 but metadata_options.http_protocol_ipv6 is disabled", a)
		}
	}
	if l.Link != "" && len(l.Addresses) > 0 && !slices.ContainsFunc(c.ListenAddrPorts(), func(ap netip.AddrPort) bool {
		return ap.Addr().Unmap().Is4() && !ap.Addr().IsLoopback() && !ap.Addr().IsUnspecified()
	}) {
		p.add("listen.link", "the link %q carries the IPv4 address the agent serves, but listen.addresses has none but loopback; add one such as %q, or set link to \"\" to manage no link", l.Link, IPv4Address)
	}
}

func (c *Config) validateAccess(p *Problems) {
	for _, sec := range []struct {
		path string
		r    Rules
	}{{"access.credentials", c.Access.Credentials}, {"access.metadata", c.Access.Metadata}} {
		for i, s := range sec.r.Allow {
			if err := CheckSelector(s); err != nil {
				p.add(fmt.Sprintf("%s.allow[%d]", sec.path, i), "%v", err)
			}
		}
		for i, s := range sec.r.Deny {
			if err := CheckSelector(s); err != nil {
				p.add(fmt.Sprintf("%s.deny[%d]", sec.path, i), "%v", err)
			}
		}
	}
	if r := c.Access.TokenRateLimit; r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		p.add("access.token_rate_limit", "%v must be 0 (unlimited) or a positive number of tokens per second", c.Access.TokenRateLimit)
	}
}

// ParseListenAddress parses an "IP:port" listen address. Host names are
// refused: the agent must know exactly which address it serves.
func ParseListenAddress(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not IP:port (write IPv6 as [fd00:ec2::254]:80)", s)
	}
	if host == "" {
		return netip.AddrPort{}, fmt.Errorf("%q has no address: write the IP address to serve on, as in 127.0.0.1%s", s, s)
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: %q is not an IP address (host names are not accepted)", s, host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: %q is not a port number", s, port)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(n)), nil
}

// ListenAddrPorts returns the parsed listen addresses of a validated config.
func (c *Config) ListenAddrPorts() []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(c.Listen.Addresses))
	for _, a := range c.Listen.Addresses {
		if ap, err := ParseListenAddress(a); err == nil {
			out = append(out, ap)
		}
	}
	return out
}

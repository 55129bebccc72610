// Package hostinfo derives what the host presents itself as (instance id,
// addresses, image id, architecture, launch time) from the configuration,
// filling every value the configuration leaves out from the host itself.
// It only reads local files and the kernel's tables; it never probes the
// network.
package hostinfo

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/imds"
)

// MaxUserData is EC2's limit on user data, in bytes (16 KB, raw).
const MaxUserData = 16 << 10

// DefaultType is the instance type shown when the configuration names none.
const DefaultType = "on-premises"

// Host is where the host's own facts come from; tests replace it.
type Host struct {
	ReadFile func(string) ([]byte, error)
	Hostname func() (string, error)
	// Interfaces lists candidate interfaces for local-ipv4 and mac.
	Interfaces func() ([]net.Interface, error)
	Addrs      func(net.Interface) ([]net.Addr, error)
	// DefaultRoute returns the index of the interface the IPv4 default
	// route leaves by (the lowest metric's), 0 when there is none.
	DefaultRoute func() (int, error)
	Uptime       func() (time.Duration, error)
	Arch         string
}

// System is the real host.
func System() Host {
	return Host{
		ReadFile:     os.ReadFile,
		Hostname:     os.Hostname,
		Interfaces:   net.Interfaces,
		Addrs:        func(i net.Interface) ([]net.Addr, error) { return i.Addrs() },
		DefaultRoute: defaultRoute,
		Uptime:       uptime,
		Arch:         runtime.GOARCH,
	}
}

// Instance builds the instance description from c, with skipLink (the
// agent's own link) ignored when choosing the host's address.
func (h Host) Instance(c config.Instance, skipLink string) (imds.Instance, error) {
	in := imds.Instance{
		ID:               c.ID,
		Region:           c.Region,
		AvailabilityZone: c.AvailabilityZone,
		Type:             c.Type,
		AMIID:            c.AMIID,
		AccountID:        c.AccountID,
		Hostname:         c.Hostname,
		LocalHostname:    c.LocalHostname,
		LocalIPv4:        c.LocalIPv4,
		MAC:              c.MAC,
		Architecture:     architecture(h.Arch),
		PendingTime:      h.bootTime(),
	}
	if in.ID == "" {
		id, err := h.InstanceID()
		if err != nil {
			return imds.Instance{}, err
		}
		in.ID = id
	}
	if in.Type == "" {
		in.Type = DefaultType
	}
	if in.AMIID == "" {
		in.AMIID = h.imageID()
	}
	if in.Hostname == "" || in.LocalHostname == "" {
		name, err := h.Hostname()
		if err != nil || name == "" {
			// A host whose kernel hostname is unset still answers
			// something: an empty body would pass for a value.
			name = "localhost"
		}
		if in.Hostname == "" {
			in.Hostname = name
		}
		if in.LocalHostname == "" {
			in.LocalHostname = name
		}
	}
	if in.LocalIPv4 == "" || in.MAC == "" {
		ip, mac := h.primaryAddress(skipLink, in.LocalIPv4)
		if in.LocalIPv4 == "" {
			in.LocalIPv4 = ip
		}
		if in.MAC == "" {
			in.MAC = mac
		}
	}
	if hw, err := net.ParseMAC(in.MAC); err == nil {
		in.MAC = hw.String()
	}
	if c.UserDataFile != "" {
		// Checked before it is read: a device or a FIFO would block the
		// start or the reload, and EC2 takes at most 16 KB of user data.
		if fi, err := os.Stat(c.UserDataFile); err == nil && (!fi.Mode().IsRegular() || fi.Size() > MaxUserData) {
			return imds.Instance{}, fmt.Errorf("instance.user_data_file: %s must be a regular file of at most %d bytes, as on EC2 (it is %s, %d bytes)",
				c.UserDataFile, MaxUserData, fi.Mode().Type(), fi.Size())
		}
		data, err := h.ReadFile(c.UserDataFile)
		if err != nil {
			return imds.Instance{}, fmt.Errorf("instance.user_data_file: %w", err)
		}
		in.UserData = data
	}
	return in, nil
}

// InstanceID derives a stable instance id from /etc/machine-id. The
// machine id is keyed through HMAC first, as systemd asks of applications,
// so the instance id does not reveal it.
func (h Host) InstanceID() (string, error) {
	raw, err := h.ReadFile("/etc/machine-id")
	if err != nil {
		return "", fmt.Errorf("deriving the instance id from /etc/machine-id (set instance.id instead): %w", err)
	}
	id := strings.TrimSpace(string(raw))
	if id == "" {
		return "", fmt.Errorf("deriving the instance id: /etc/machine-id is empty (set instance.id instead)")
	}
	mac := hmac.New(sha256.New, []byte("imds-agent instance id"))
	mac.Write([]byte(id))
	return "i-" + hex.EncodeToString(mac.Sum(nil))[:17], nil
}

// imageID derives an image id from the operating system's name and
// version, so hosts of one OS release share one, as instances of one AMI do.
func (h Host) imageID() string {
	raw, _ := h.ReadFile("/etc/os-release")
	var id, version string
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		v = strings.Trim(v, `"'`)
		switch k {
		case "ID":
			id = v
		case "VERSION_ID":
			version = v
		}
	}
	sum := sha256.Sum256([]byte(id + "/" + version))
	return "ami-" + hex.EncodeToString(sum[:])[:17]
}

// bootTime is the host's boot time (EC2's pendingTime is the launch),
// from CLOCK_BOOTTIME (/proc/stat is hidden by the service's
// ProcSubset=pid). Both clocks are read to the nanosecond and the result
// rounded, so a reload does not move it by a second as whole-second
// readings would.
func (h Host) bootTime() time.Time {
	now := time.Now().UTC()
	if h.Uptime == nil {
		return now.Round(time.Second)
	}
	up, err := h.Uptime()
	if err != nil {
		return now.Round(time.Second)
	}
	return now.Add(-up).Round(time.Second)
}

// primaryAddress picks the host's main IPv4 address and its interface's
// MAC, skipping the agent's own link: the interface of the default route,
// else the first one up with carrier, else the first one up, holding a
// private or global IPv4 address (not a container bridge's or an unplugged
// NIC's, when the host has a better one). An interface without an
// Ethernet address (a tunnel) gives its address with a zero MAC. With
// configured, the address the configuration names, it finds that address's
// interface for the MAC.
func (h Host) primaryAddress(skipLink, configured string) (ip, mac string) {
	const noMAC = "00:00:00:00:00:00"
	ifaces, err := h.Interfaces()
	if err != nil {
		return "127.0.0.1", noMAC
	}
	route, _ := h.DefaultRoute() // 0 (none) on error: the ranking still holds
	// rank orders the candidates: lower is better; -1 is no candidate.
	rank := func(i net.Interface) int {
		switch {
		case i.Flags&net.FlagUp == 0 || i.Flags&net.FlagLoopback != 0 || i.Name == skipLink:
			return -1
		case i.Index == route:
			return 0
		case i.Flags&net.FlagRunning != 0:
			return 1
		}
		return 2
	}
	best, bestRank, bestMAC := "", math.MaxInt, ""
	for _, i := range ifaces {
		r := rank(i)
		if r < 0 {
			continue
		}
		hw := noMAC
		if len(i.HardwareAddr) == 6 {
			hw = i.HardwareAddr.String()
		} else {
			r += 3 // a tunnel's address only if nothing has an Ethernet one
		}
		addrs, err := h.Addrs(i)
		if err != nil {
			continue
		}
		first := ""
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok || n.IP.To4() == nil || n.IP.IsLinkLocalUnicast() || n.IP.IsLoopback() {
				continue
			}
			if configured != "" && n.IP.String() == configured {
				return configured, hw
			}
			if first == "" {
				first = n.IP.String()
			}
		}
		if first != "" && r < bestRank {
			best, bestRank, bestMAC = first, r, hw
		}
	}
	if best == "" {
		return "127.0.0.1", noMAC
	}
	return best, bestMAC
}

// defaultRoute returns the index of the interface of the main table's IPv4
// default route with the lowest metric; 0 when there is none.
func defaultRoute() (int, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, err
	}
	index, metric := 0, -1
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) && r.LinkIndex > 0 && (metric < 0 || r.Priority < metric) {
			index, metric = r.LinkIndex, r.Priority
		}
	}
	return index, nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

func uptime() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, err
	}
	return time.Duration(ts.Nano()), nil
}

func architecture(goarch string) string {
	switch goarch {
	case "amd64":
		return "x86_64"
	case "386":
		return "i386"
	}
	return goarch
}

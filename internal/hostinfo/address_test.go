package hostinfo

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/netnstest"
)

// fakeLink is an interface of a fake host, with its addresses.
type fakeLink struct {
	net.Interface
	addrs []string // CIDR
}

// fakeHost is a host with links and a default route through route (an
// interface index; 0 for none).
func fakeHost(route int, links ...fakeLink) Host {
	return Host{
		Interfaces: func() ([]net.Interface, error) {
			var out []net.Interface
			for _, l := range links {
				out = append(out, l.Interface)
			}
			return out, nil
		},
		Addrs: func(i net.Interface) ([]net.Addr, error) {
			for _, l := range links {
				if l.Index == i.Index {
					var out []net.Addr
					for _, a := range l.addrs {
						ip, n, err := net.ParseCIDR(a)
						if err != nil {
							return nil, err
						}
						n.IP = ip
						out = append(out, n)
					}
					return out, nil
				}
			}
			return nil, errors.New("no such interface")
		},
		DefaultRoute: func() (int, error) { return route, nil },
		ReadFile:     func(string) ([]byte, error) { return nil, os.ErrNotExist },
		Hostname:     func() (string, error) { return "host", nil },
		Uptime:       func() (time.Duration, error) { return time.Hour, nil },
	}
}

func link(index int, name string, flags net.Flags, mac string, addrs ...string) fakeLink {
	l := fakeLink{Interface: net.Interface{Index: index, Name: name, Flags: flags}, addrs: addrs}
	if mac != "" {
		l.HardwareAddr, _ = net.ParseMAC(mac)
	}
	return l
}

// TestPrimaryAddress: local-ipv4 and mac are the host's main address: the
// default route's interface, not a bridge or an unplugged NIC that happens
// to come first; a configured address keeps its own interface's MAC; a
// tunnel's address is taken when nothing else has one.
func TestPrimaryAddress(t *testing.T) {
	const up, running = net.FlagUp, net.FlagUp | net.FlagRunning
	var (
		lo      = link(1, "lo", running|net.FlagLoopback, "", "127.0.0.1/8")
		unplug  = link(2, "eno1", up, "02:00:00:00:00:02", "192.168.50.10/24", "192.168.60.10/24")
		docker0 = link(3, "docker0", running, "02:00:00:00:00:03", "172.17.0.1/16")
		eth0    = link(4, "eth0", running, "02:00:00:00:00:04", "169.254.7.7/16", "10.0.0.5/24")
		imds0   = link(5, "imds0", running, "02:00:00:00:00:05", "10.99.0.1/32")
		tun0    = link(6, "tun0", running, "", "10.8.0.2/24")
	)
	for _, tc := range []struct {
		name    string
		host    Host
		conf    config.Instance
		ip, mac string
	}{
		{"the default route's interface", fakeHost(4, lo, unplug, docker0, eth0, imds0), config.Instance{}, "10.0.0.5", "02:00:00:00:00:04"},
		{"no default route: one with carrier", fakeHost(0, lo, unplug, docker0, eth0), config.Instance{}, "172.17.0.1", "02:00:00:00:00:03"},
		{"only an unplugged NIC", fakeHost(0, lo, unplug), config.Instance{}, "192.168.50.10", "02:00:00:00:00:02"},
		{"the agent's own link is skipped", fakeHost(5, lo, imds0, eth0), config.Instance{}, "10.0.0.5", "02:00:00:00:00:04"},
		{"a configured address keeps its interface's MAC", fakeHost(4, lo, unplug, docker0, eth0), config.Instance{LocalIPv4: "192.168.50.10"}, "192.168.50.10", "02:00:00:00:00:02"},
		{"a configured address that is its interface's second", fakeHost(4, lo, unplug, docker0, eth0), config.Instance{LocalIPv4: "192.168.60.10"}, "192.168.60.10", "02:00:00:00:00:02"},
		{"a tunnel only", fakeHost(6, lo, tun0), config.Instance{}, "10.8.0.2", "00:00:00:00:00:00"},
		{"a tunnel behind an Ethernet NIC", fakeHost(6, lo, tun0, eth0), config.Instance{}, "10.0.0.5", "02:00:00:00:00:04"},
		{"nothing", fakeHost(0, lo), config.Instance{}, "127.0.0.1", "00:00:00:00:00:00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.conf.ID = "i-0123456789abcdef0"
			in, err := tc.host.Instance(tc.conf, "imds0")
			if err != nil {
				t.Fatal(err)
			}
			if in.LocalIPv4 != tc.ip || in.MAC != tc.mac {
				t.Errorf("local-ipv4 %s mac %s, want %s %s", in.LocalIPv4, in.MAC, tc.ip, tc.mac)
			}
		})
	}
}

// TestDefaultRoute: the kernel's IPv4 default route is found, the lowest
// metric's when there are several, in a namespace of the test's own.
func TestDefaultRoute(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	ns := netnstest.New(t)
	h := ns.Handle()
	var links []netlink.Link
	for i, name := range []string{"br-a", "br-b"} {
		l := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := h.LinkAdd(l); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		ip, n, _ := net.ParseCIDR([]string{"192.0.2.1/24", "198.51.100.1/24"}[i])
		n.IP = ip
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: n}); err != nil {
			t.Fatal(err)
		}
		links = append(links, l)
	}
	var got int
	if err := ns.Do(func() error { var err error; got, err = defaultRoute(); return err }); err != nil || got != 0 {
		t.Fatalf("no default route: %d, %v; want 0", got, err)
	}
	for i, metric := range []int{200, 100} {
		gw := []string{"192.0.2.254", "198.51.100.254"}[i]
		if err := h.RouteAdd(&netlink.Route{LinkIndex: links[i].Attrs().Index, Gw: net.ParseIP(gw), Priority: metric}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ns.Do(func() error { var err error; got, err = defaultRoute(); return err }); err != nil || got != links[1].Attrs().Index {
		t.Fatalf("default route by %d (%v), want %d (%s, the lower metric)", got, err, links[1].Attrs().Index, links[1].Attrs().Name)
	}
}

// TestEmptyHostname: a host whose kernel hostname is unset answers
// "localhost" for hostname and local-hostname, not an empty body.
func TestEmptyHostname(t *testing.T) {
	h := fakeHost(0)
	h.Hostname = func() (string, error) { return "", nil }
	in, err := h.Instance(config.Instance{ID: "i-0123456789abcdef0"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if in.Hostname != "localhost" || in.LocalHostname != "localhost" {
		t.Errorf("hostname %q, local-hostname %q; want localhost for both", in.Hostname, in.LocalHostname)
	}
}

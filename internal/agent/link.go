package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/netsetup"
)

// checkOnly explains a link that is not ready to an agent that could only
// check it. Other refusals (a conflict, a link not the agent's, EC2)
// setup-link would make as well, and are returned as they are.
func checkOnly(err error) error {
	if errors.Is(err, netsetup.ErrNotReady) {
		return fmt.Errorf("%w; without CAP_NET_ADMIN the agent only checks the link (the systemd unit runs setup-link as root before it)", err)
	}
	return err
}

// linkOptions says which link and addresses cfg asks for: the link, the
// first non-loopback IPv4 listen address and, when IPv6 is enabled, the
// first non-loopback IPv6 one.
func linkOptions(cfg *config.Config, force bool, log *slog.Logger) netsetup.Options {
	o := netsetup.Options{Link: cfg.Listen.Link, Force: force, Logger: log}
	for _, ap := range cfg.ListenAddrPorts() {
		a := ap.Addr()
		switch {
		case a.IsLoopback() || a.IsUnspecified():
		case a.Is4() && !o.IPv4.IsValid():
			o.IPv4 = a
		case a.Is6() && !o.IPv6.IsValid() && cfg.MetadataOptions.HTTPProtocolIPv6 == config.Enabled:
			o.IPv6 = a
		}
	}
	return o
}

// SetupLink creates or corrects the link and its addresses (for `run` with
// CAP_NET_ADMIN, and `setup-link`). It changes nothing when all is right.
func SetupLink(cfg *config.Config, force bool, log *slog.Logger) (netsetup.Result, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return netsetup.Result{}, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	return netsetup.Ensure(h, linkOptions(cfg, force, log))
}

// CleanupLink removes the agent's link and its addresses.
func CleanupLink(link string, log *slog.Logger) error {
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	return netsetup.Cleanup(h, link, log)
}

// prepareLink makes sure the link is ready before the daemon listens: it
// sets it up when the process holds CAP_NET_ADMIN, and otherwise (the
// systemd unit runs `setup-link` as a privileged step first) only checks.
// It returns the listen addresses to bind: IPv6 ones are dropped when the
// host has no IPv6.
func (a *Agent) prepareLink(cfg *config.Config) ([]netip.AddrPort, error) {
	addrs := cfg.ListenAddrPorts()
	if cfg.Listen.Link == "" {
		return addrs, nil
	}
	log := a.log.With("component", "link")
	var res netsetup.Result
	var err error
	if hasNetAdmin() {
		res, err = SetupLink(cfg, a.o.Force, log)
	} else {
		h, herr := netlink.NewHandle()
		if herr != nil {
			return nil, fmt.Errorf("netlink: %w", herr)
		}
		res, err = netsetup.Check(h, linkOptions(cfg, a.o.Force, log))
		h.Close()
		err = checkOnly(err)
	}
	if err != nil {
		return nil, err
	}
	log.Info("link ready", "link", res.Link, "kind", res.Kind, "addresses", res.Addrs, "created", res.Created, "changed", res.Changed)
	if !res.IPv6 {
		kept := addrs[:0]
		for _, ap := range addrs {
			if !ap.Addr().Is6() || ap.Addr().IsLoopback() {
				kept = append(kept, ap)
			}
		}
		addrs = kept
	}
	return addrs, nil
}

// hasNetAdmin reports whether the process may change the network.
func hasNetAdmin() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_NET_ADMIN/32].Effective&(1<<(unix.CAP_NET_ADMIN%32)) != 0
}

// Package systemd owns the files that fit imds-agent into a systemd host,
// byte for byte as the .deb and .rpm packages (packaging/) and
// `imds-agent install` (internal/service) ship them: the service unit and
// the unit that claims the metadata address early in boot, the
// sysusers.d entry for the service user, the systemd-networkd and
// NetworkManager drop-ins that keep those managers off the agent's link, the
// modules-load.d entry for the dummy link type, and the default
// configuration file.
package systemd

import (
	_ "embed" // the files below are embedded, not read at run time
	"path/filepath"
	"strings"
)

// Unit is the service unit, imds-agent.service. Its commands name the binary
// as BinaryPath.
//
//go:embed imds-agent.service
var Unit string

// BinaryPath is where the packages install the binary, as the unit names it.
const BinaryPath = "/usr/bin/imds-agent"

// UnitName is the unit's file name.
const UnitName = "imds-agent.service"

// LinkUnit is imds-agent-link.service, which the service unit pulls in: it
// sets up the link and its addresses early in boot, before the network.
// Its command names the binary as BinaryPath.
//
//go:embed imds-agent-link.service
var LinkUnit string

// LinkUnitName is the link unit's file name.
const LinkUnitName = "imds-agent-link.service"

// Sysusers is the sysusers.d(5) entry that creates the service user and
// group, imds-agent.
//
//go:embed imds-agent.sysusers
var Sysusers string

// Network is the systemd-networkd drop-in that leaves the link imds0 alone.
//
//go:embed imds-agent.network
var Network string

// NetworkManager is the NetworkManager conf.d drop-in that leaves the link
// imds0 alone.
//
//go:embed imds-agent-networkmanager.conf
var NetworkManager string

// ModulesLoad is the modules-load.d(5) entry that loads the dummy link type
// at boot.
//
//go:embed imds-agent-modules.conf
var ModulesLoad string

// Config is the configuration file installed as /etc/imds-agent/config.yaml:
// valid, commented, and with no instance profile attached.
//
//go:embed config.yaml
var Config string

// File names under the distribution's directories (/usr/lib/… for the
// packages, /etc/… for `imds-agent install`). The .network file sorts before
// catch-all ones (networkd uses the first match); the NetworkManager file
// sorts after the distribution's own (later files override earlier ones).
const (
	SysusersName       = "imds-agent.conf"
	NetworkName        = "10-imds-agent.network"
	NetworkManagerName = "90-imds-agent.conf"
	ModulesLoadName    = "imds-agent.conf"
)

// SandboxHidden returns the directory, among those the service unit's
// sandbox hides from the agent, that path (absolute) is in: /home, /root
// and /run/user (ProtectHome=yes), /tmp and /var/tmp (PrivateTmp=yes: the
// service sees empty ones of its own). It returns "" for any other path.
func SandboxHidden(path string) string {
	path = filepath.Clean(path)
	for _, dir := range []string{"/home", "/root", "/run/user", "/tmp", "/var/tmp"} {
		if path == dir || strings.HasPrefix(path, dir+"/") {
			return dir
		}
	}
	return ""
}

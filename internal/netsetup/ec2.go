package netsetup

import (
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// The files DetectEC2 reads, relative to the system root.
const (
	dmiDir         = "sys/class/dmi/id"
	hypervisorUUID = "sys/hypervisor/uuid"
)

// instanceID is what Nitro instances put in the board asset tag.
var instanceID = regexp.MustCompile(`^i-[0-9a-f]{8}([0-9a-f]{9})?$`)

// DetectEC2 says whether sysRoot ("" = "/") belongs to a real EC2 instance,
// from DMI and hypervisor files only: it never asks the network, where the
// answer could come from anything. evidence names the file and value that
// decided. A host with no DMI data at all is not EC2.
//
// Evidence, in the order checked: sys_vendor or bios_vendor "Amazon EC2"
// (Nitro); board_asset_tag holding an instance id (Nitro);
// /sys/hypervisor/uuid beginning with "ec2" (Xen); product_uuid beginning
// with "ec2", also in the little-endian form some Xen instances show (how
// AWS documents telling an instance apart). Files that are missing or
// unreadable (product_uuid is root-only) are skipped. A UUID is random on
// other platforms, so one in 4096 non-EC2 machines has a UUID beginning with
// "ec2"; such a host is refused too and needs --force.
func DetectEC2(sysRoot string) (isEC2 bool, evidence string) {
	if sysRoot == "" {
		sysRoot = "/"
	}
	read := func(rel string) (path, value string) { return readDMI(sysRoot, rel) }
	for _, name := range []string{"sys_vendor", "bios_vendor"} {
		if p, v := read(filepath.Join(dmiDir, name)); v == "Amazon EC2" {
			return true, fmt.Sprintf("%s is %q", p, v)
		}
	}
	if p, v := read(filepath.Join(dmiDir, "board_asset_tag")); instanceID.MatchString(v) {
		return true, fmt.Sprintf("%s is the instance id %q", p, v)
	}
	if p, v := read(hypervisorUUID); ec2UUID(v, false) {
		return true, fmt.Sprintf("%s is %q", p, v)
	}
	if p, v := read(filepath.Join(dmiDir, "product_uuid")); ec2UUID(v, true) {
		return true, fmt.Sprintf("%s is %q", p, v)
	}
	return false, ""
}

// ec2UUID says whether u is an EC2 UUID: it begins with "ec2" in either
// case, or, when littleEndian is allowed, its first field read byte-swapped
// does (45E12AEC-… is ec2ae145-…).
func ec2UUID(u string, littleEndian bool) bool {
	u = strings.ToLower(u)
	if len(u) != 36 || u[8] != '-' || u[13] != '-' || u[18] != '-' || u[23] != '-' {
		return false
	}
	if strings.HasPrefix(u, "ec2") {
		return true
	}
	if !littleEndian {
		return false
	}
	b, err := hex.DecodeString(u[:8])
	if err != nil {
		return false
	}
	return strings.HasPrefix(hex.EncodeToString([]byte{b[3], b[2], b[1], b[0]}), "ec2")
}

// otherClouds are the platforms, other than EC2, whose own metadata service
// answers at 169.254.169.254, each with the DMI file and value that
// cloud-init's ds-identify recognises it by.
var otherClouds = []struct{ name, file, value string }{
	{"Google Compute Engine", "product_name", "Google Compute Engine"},
	{"Microsoft Azure", "chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77"},
	{"Oracle Cloud", "chassis_asset_tag", "OracleCloud.com"},
	{"OpenStack", "product_name", "OpenStack Nova"},
	{"OpenStack", "product_name", "OpenStack Compute"},
	{"OpenStack", "chassis_asset_tag", "OpenStack Nova"},
	{"OpenStack", "chassis_asset_tag", "OpenStack Compute"},
	{"Open Telekom Cloud (OpenStack)", "chassis_asset_tag", "OpenTelekomCloud"},
	{"Huawei Cloud (OpenStack)", "chassis_asset_tag", "HUAWEICLOUD"},
	{"DigitalOcean", "sys_vendor", "DigitalOcean"},
	{"Hetzner Cloud", "sys_vendor", "Hetzner"},
	{"Vultr", "sys_vendor", "Vultr"},
	{"3DS Outscale", "product_name", "3DS Outscale VM"},
}

// DetectOtherCloud says which platform other than EC2 sysRoot ("" = "/")
// runs on, when that platform has a metadata service of its own at
// 169.254.169.254, from DMI files only, like DetectEC2. cloud is "" for
// none.
func DetectOtherCloud(sysRoot string) (cloud, evidence string) {
	if sysRoot == "" {
		sysRoot = "/"
	}
	for _, c := range otherClouds {
		if p, v := readDMI(sysRoot, filepath.Join(dmiDir, c.file)); v == c.value {
			return c.name, fmt.Sprintf("%s is %q", p, v)
		}
	}
	return "", ""
}

// readDMI reads one of the short files DetectEC2 and DetectOtherCloud look
// at: its path under sysRoot, and its value ("" when missing or unreadable).
func readDMI(sysRoot, rel string) (path, value string) {
	path = filepath.Join(sysRoot, rel)
	f, err := os.Open(path)
	if err != nil {
		return path, ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, 256)) // these files hold one short line
	return path, strings.TrimSpace(string(b))
}

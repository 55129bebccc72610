package netsetup

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeTree creates files (relative path → content) under a new root.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for rel, content := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const dmi = "sys/class/dmi/id/"

func TestDetectEC2(t *testing.T) {
	tests := []struct {
		name     string
		files    map[string]string
		want     bool
		evidence string // the file named, relative to the root
	}{
		{"no DMI at all", nil, false, ""},
		{"Nitro sys_vendor", map[string]string{dmi + "sys_vendor": "Amazon EC2\n", dmi + "product_name": "m5.large\n"}, true, dmi + `sys_vendor is "Amazon EC2"`},
		{"Nitro bios_vendor", map[string]string{dmi + "bios_vendor": "Amazon EC2\n"}, true, dmi + `bios_vendor is "Amazon EC2"`},
		{"Nitro asset tag", map[string]string{dmi + "board_asset_tag": "i-0123456789abcdef0\n"}, true, dmi + `board_asset_tag is the instance id "i-0123456789abcdef0"`},
		{"old short instance id", map[string]string{dmi + "board_asset_tag": "i-0123abcd\n"}, true, "board_asset_tag"},
		{"Xen hypervisor uuid", map[string]string{"sys/hypervisor/uuid": "ec2e1916-9099-7caf-fd21-012345abcdef\n", dmi + "sys_vendor": "Xen\n"}, true, `sys/hypervisor/uuid is "ec2e1916-9099-7caf-fd21-012345abcdef"`},
		{"product uuid, upper case", map[string]string{dmi + "product_uuid": "EC2E1916-9099-7CAF-FD21-012345ABCDEF\n"}, true, dmi + "product_uuid"},
		{"product uuid, little-endian", map[string]string{dmi + "product_uuid": "45E12AEC-DCD1-B213-94ED-012345ABCDEF\n"}, true, dmi + "product_uuid"},
		{"other cloud", map[string]string{dmi + "sys_vendor": "QEMU\n", dmi + "bios_vendor": "SeaBIOS\n", dmi + "product_uuid": "4c4c4544-0042-3510-8052-b3c04f4e3132\n", dmi + "board_asset_tag": "Default string\n"}, false, ""},
		{"Xen elsewhere", map[string]string{dmi + "sys_vendor": "Xen\n", "sys/hypervisor/uuid": "5f2c1c0b-2f43-4c8e-9d0e-0a1b2c3d4e5f\n"}, false, ""},
		{"little-endian form only counts for product_uuid", map[string]string{"sys/hypervisor/uuid": "45e12aec-dcd1-b213-94ed-012345abcdef\n"}, false, ""},
		{"not a uuid", map[string]string{dmi + "product_uuid": "ec2\n"}, false, ""},
		{"asset tag that is not an instance id", map[string]string{dmi + "board_asset_tag": "i-xyz\n"}, false, ""},
		{"vendor mentioning Amazon otherwise", map[string]string{dmi + "sys_vendor": "Amazon.com, Inc.\n"}, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := writeTree(t, tc.files)
			got, evidence := DetectEC2(root)
			if got != tc.want || !strings.Contains(evidence, tc.evidence) || (tc.want && !strings.HasPrefix(evidence, root)) {
				t.Errorf("DetectEC2 = %v, %q; want %v with %q", got, evidence, tc.want, tc.evidence)
			}
		})
	}
}

func TestEC2Guard(t *testing.T) {
	root := writeTree(t, map[string]string{dmi + "sys_vendor": "Amazon EC2\n"})
	f := newFake()
	o, logs := testOptions(t)
	o.SysRoot = root

	want := "this host looks like a real EC2 instance (" + root + "/" + dmi + `sys_vendor is "Amazon EC2"): claiming 169.254.169.254 and fd00:ec2::254 would hide its own metadata service; pass --force to claim it anyway`
	if _, err := Ensure(f, o); !errors.Is(err, ErrEC2) || err.Error() != want {
		t.Fatalf("Ensure: err = %v\nwant %s", err, want)
	}
	if _, err := Check(f, o); !errors.Is(err, ErrEC2) {
		t.Fatalf("Check: err = %v, want ErrEC2", err)
	}
	if len(f.calls) != 0 {
		t.Fatalf("changed the host before refusing: %v", f.calls)
	}

	// EC2's IPv6 address alone would hide its service too.
	other := o
	other.IPv4 = netip.MustParseAddr("169.254.170.23")
	if _, err := Ensure(f, other); !errors.Is(err, ErrEC2) || !strings.Contains(err.Error(), "claiming fd00:ec2::254 would hide") {
		t.Fatalf("Ensure of another IPv4 address beside fd00:ec2::254: err = %v", err)
	}
	// Other addresses hide nothing, and the message does not say they
	// would; they are refused all the same.
	other.IPv6 = netip.Addr{}
	want = "this host looks like a real EC2 instance (" + root + "/" + dmi + `sys_vendor is "Amazon EC2"), which has a metadata service of its own at 169.254.169.254 and services of its own in the link-local range (DNS, time, the ECS agent's credentials); pass --force to claim 169.254.170.23 anyway`
	if _, err := Ensure(f, other); !errors.Is(err, ErrEC2) || err.Error() != want {
		t.Fatalf("Ensure of another address: err = %v\nwant %s", err, want)
	}

	if res := ensureForced(t, f, o, logs, `level=WARN msg="this host looks like a real EC2 instance; claiming the metadata address anyway (forced)"`); !res.Created {
		t.Errorf("forced Ensure = %+v", res)
	}
}

func TestDetectOtherCloud(t *testing.T) {
	for _, tc := range []struct {
		name, cloud string
		files       map[string]string
	}{
		{"no DMI at all", "", nil},
		{"plain KVM", "", map[string]string{dmi + "sys_vendor": "QEMU\n", dmi + "product_name": "Standard PC (Q35 + ICH9, 2009)\n"}},
		{"GCE", "Google Compute Engine", map[string]string{dmi + "sys_vendor": "Google\n", dmi + "product_name": "Google Compute Engine\n"}},
		{"Azure", "Microsoft Azure", map[string]string{dmi + "sys_vendor": "Microsoft Corporation\n", dmi + "chassis_asset_tag": "7783-7084-3265-9085-8269-3286-77\n"}},
		{"Hyper-V elsewhere", "", map[string]string{dmi + "sys_vendor": "Microsoft Corporation\n", dmi + "chassis_asset_tag": "None\n"}},
		{"OCI", "Oracle Cloud", map[string]string{dmi + "chassis_asset_tag": "OracleCloud.com\n"}},
		{"OpenStack", "OpenStack", map[string]string{dmi + "product_name": "OpenStack Nova\n"}},
		{"DigitalOcean", "DigitalOcean", map[string]string{dmi + "sys_vendor": "DigitalOcean\n"}},
		{"Hetzner", "Hetzner Cloud", map[string]string{dmi + "sys_vendor": "Hetzner\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := writeTree(t, tc.files)
			cloud, evidence := DetectOtherCloud(root)
			if cloud != tc.cloud || (cloud != "" && !strings.HasPrefix(evidence, root+"/"+dmi)) {
				t.Errorf("DetectOtherCloud = %q, %q; want %q", cloud, evidence, tc.cloud)
			}
		})
	}
}

func TestOtherCloudGuard(t *testing.T) {
	root := writeTree(t, map[string]string{dmi + "product_name": "Google Compute Engine\n"})
	f := newFake()
	o, logs := testOptions(t)
	o.SysRoot = root
	if _, err := Ensure(f, o); !errors.Is(err, ErrOtherCloud) || !strings.Contains(err.Error(), "Google Compute Engine") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("Ensure: err = %v, want ErrOtherCloud naming the cloud and --force", err)
	}
	if len(f.calls) != 0 {
		t.Fatalf("changed the host before refusing: %v", f.calls)
	}
	if res := ensureForced(t, f, o, logs, `msg="this host runs on a cloud with its own metadata service at the address; claiming it anyway (forced)"`); !res.Created {
		t.Errorf("forced Ensure = %+v", res)
	}
}

package config

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestParseEmptyTrailingDocument: a "---" (and comments) after the one
// document, as templating tools leave, is no second document.
func TestParseEmptyTrailingDocument(t *testing.T) {
	for _, in := range []string{"version: 1\n---\n", "---\nversion: 1\n---\n# the end\n", "version: 1\n---\n---\n", "version: 1\n...\n---\n"} {
		if _, err := Parse("c.yaml", []byte(in)); err != nil {
			t.Errorf("%q: %v", in, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "c.yaml: the file is empty"},
		{"missing version", "instance:\n  region: eu-west-1\n", "version is missing"},
		{"wrong version", "version: 2\n", "c.yaml:1: version: 2 is not a version this agent reads"},
		{"unknown top-level key", "version: 1\ncredential:\n  role_arn: x\n", `c.yaml:2: unknown key "credential"; did you mean "credentials"?`},
		{"unknown nested key", "version: 1\ncredentials:\n  instance_profil: web\n", `c.yaml:3: unknown key "credentials.instance_profil"; did you mean "instance_profile"?`},
		{"unknown key far from any", "version: 1\nlisten:\n  zzzzzzzzzzzz: 1\n", `known keys here: addresses, link`},
		{"section not a mapping", "version: 1\nlisten: 5\n", `c.yaml:2: listen must be a mapping of keys`},
		{"not a mapping", "- a\n- b\n", "c.yaml:1: the file must be a mapping"},
		{"two documents", "version: 1\n---\nversion: 1\n", "c.yaml:2: a second YAML document"},
		{"a document after an empty one", "version: 1\n---\n---\nversion: 1\n", "c.yaml:3: a second YAML document"},
		{"a null document", "version: 1\n---\nnull\n", "c.yaml:2: a second YAML document"},
		{"syntax", "version: 1\n  bad: [\n", "c.yaml:"},
		{"bad type", "version: 1\nmetadata_options:\n  http_put_response_hop_limit: lots\n", `c.yaml:3: metadata_options.http_put_response_hop_limit: expected a whole number, not a scalar value "lots"`},
		{"fraction for a whole number", "version: 1\nmetadata_options:\n  http_put_response_hop_limit: 1.5\n", `c.yaml:3: metadata_options.http_put_response_hop_limit: expected a whole number, not a scalar value "1.5"`},
		{"fractional version", "version: 1.9\n", `c.yaml:1: version: expected a whole number`},
		{"whole number out of range", "version: 1\nmetadata_options:\n  http_put_response_hop_limit: 18446744073709551615\n", `http_put_response_hop_limit: 18446744073709551615 is out of range`},
		{"text for a boolean", "version: 1\nlog:\n  audit: sometimes\n", `c.yaml:3: log.audit: expected true or false, not a scalar value "sometimes"`},
		{"text for a number", "version: 1\naccess:\n  token_rate_limit: \"5\"\n", `c.yaml:3: access.token_rate_limit: expected a number`},
		{"mapping for text", "version: 1\ninstance:\n  region: {a: 1}\n", `c.yaml:3: instance.region: expected text, not a mapping`},
		{"text for a list", "version: 1\nlisten:\n  addresses: 127.0.0.1:80\n", `c.yaml:3: listen.addresses: expected a list`},
		{"list in a list", "version: 1\nlisten:\n  addresses:\n    - 127.0.0.1:80\n    - [a]\n", `c.yaml:5: listen.addresses: item 2 is a list; each must be text`},
		{"alias to a list for text", "version: 1\nlisten:\n  addresses: &a [\"127.0.0.1:80\"]\n  link: *a\n", `c.yaml:3: listen.link: expected text, not a list`},
		{"bad duration", "version: 1\ncredentials:\n  session_duration: 1 hour\n", `c.yaml:3: credentials.session_duration: "1 hour" is not a duration`},
		{"seconds for a duration", "version: 1\ncredentials:\n  session_duration: 3600\n", `c.yaml:3: credentials.session_duration: "3600" is not a duration`},
		{"negative duration", "version: 1\ncredentials:\n  session_duration: -1h\n", `c.yaml:3: credentials.session_duration: "-1h" is negative`},
		{"comments only", "# version: 1\n", "c.yaml: the file holds no settings"},
		{"socket path too long", "version: 1\nadmin:\n  socket: /" + strings.Repeat("s", 107) + "\n", `is 108 bytes long; a Unix socket's path may be at most 107`},
		{"short session", "version: 1\ncredentials:\n  session_duration: 10m\n", `c.yaml:3: credentials.session_duration: 10m0s is below STS's minimum of 15m`},
		{"long session", "version: 1\ncredentials:\n  session_duration: 13h\n", `above STS's maximum of 12h`},
		{"window too long", "version: 1\ncredentials:\n  session_duration: 15m\n  refresh_before_expiry: 15m\n", `c.yaml:4: credentials.refresh_before_expiry: 15m0s must be shorter than session_duration`},
		{"window nonsense", "version: 1\ncredentials:\n  refresh_before_expiry: soon\n", `c.yaml:3: credentials.refresh_before_expiry: "soon" is neither auto nor a duration`},
		{"window of 0s", "version: 1\ncredentials:\n  refresh_before_expiry: 0s\n", `c.yaml:3: credentials.refresh_before_expiry: 0s is not a refresh window`},
		{"session of 0s", "version: 1\ncredentials:\n  session_duration: 0s\n", `credentials.session_duration: 0s is below STS's minimum of 15m`},
		{"recheck of 0s", "version: 1\ncredentials:\n  profile_recheck: 0s\n", `credentials.profile_recheck: 0s must be between 1s and 24h`},
		{"rate limit not a number", "version: 1\naccess:\n  token_rate_limit: .nan\n", `access.token_rate_limit: NaN must be 0`},
		{"link named dot-dot", "version: 1\nlisten:\n  link: \"..\"\n", `listen.link: ".." is not a link name`},
		{"broken second document", "version: 1\n---\n: [bad\n", `after the first YAML document`},
		{"key without a value", "version: 1\nlog:\n  audit:\n", `c.yaml:3: log.audit has no value`},
		{"alias to no value", "version: 1\nmetrics: &n\nlog:\n  audit: *n\n", `c.yaml:4: log.audit has no value`},
		{"alias to no value for text", "version: 1\nmetrics: &n\nlisten:\n  link: *n\n", `c.yaml:4: listen.link has no value`},
		{"window too short", "version: 1\ncredentials:\n  refresh_before_expiry: 1ms\n", `credentials.refresh_before_expiry: 1ms is below 5m0s`},
		{"region of another partition's form", "version: 1\ninstance:\n  region: eusc-de-eas\n", `is not a region name`},
		{"both role and profile", "version: 1\ncredentials:\n  instance_profile: web\n  role_arn: arn:aws:iam::123456789012:role/web\n", `c.yaml:4: credentials.role_arn: set either instance_profile or role_arn, not both`},
		{"bad profile arn", "version: 1\ncredentials:\n  instance_profile: arn:aws:iam::1234:instance-profile/web\n", `is not an instance profile ARN`},
		{"bad profile name", "version: 1\ncredentials:\n  instance_profile: 'web server'\n", `is neither an instance profile ARN nor a profile name`},
		{"bad role arn", "version: 1\ncredentials:\n  role_arn: arn:aws:iam::123456789012:user/bob\n", `is not a role ARN`},
		{"relative shared file", "version: 1\ncredentials:\n  shared_config_files: [aws/config]\n", `credentials.shared_config_files[0]: "aws/config" must be an absolute path`},
		{"bad instance id", "version: 1\ninstance:\n  id: i-xyz\n", `c.yaml:3: instance.id: "i-xyz" is not an instance id`},
		{"bad region", "version: 1\ninstance:\n  region: Europe\n", `instance.region: "Europe" is not a region name`},
		{"az not in region", "version: 1\ninstance:\n  region: eu-west-1\n  availability_zone: us-east-1a\n", `instance.availability_zone: "us-east-1a" must be the region "eu-west-1" followed by one letter`},
		{"bad mac", "version: 1\ninstance:\n  mac: nope\n", `is not a MAC address`},
		{"bad ipv4", "version: 1\ninstance:\n  local_ipv4: ::1\n", `is not an IPv4 address`},
		{"bad account", "version: 1\ninstance:\n  account_id: 12\n", `is not a 12-digit account id`},
		{"bad tokens", "version: 1\nmetadata_options:\n  http_tokens: sometimes\n", `metadata_options.http_tokens: "sometimes" must be required or optional`},
		{"bad endpoint", "version: 1\nmetadata_options:\n  http_endpoint: on\n", `must be enabled or disabled`},
		{"hop limit zero", "version: 1\nmetadata_options:\n  http_put_response_hop_limit: 0\n", `0 must be between 1 and 64`},
		{"hop limit high", "version: 1\nmetadata_options:\n  http_put_response_hop_limit: 65\n", `65 must be between 1 and 64`},
		{"no addresses", "version: 1\nlisten:\n  addresses: []\n", `listen.addresses: needs at least one address`},
		{"link without IPv4", "version: 1\nlisten:\n  addresses: [\"[fd00:ec2::254]:80\", \"127.0.0.1:80\"]\n", `listen.link: the link "imds0" carries the IPv4 address the agent serves, but listen.addresses has none but loopback`},
		{"hostname address", "version: 1\nlisten:\n  addresses: [\"localhost:80\"]\n", `"localhost" is not an IP address`},
		{"port without address", "version: 1\nmetrics:\n  listen: \":9469\"\n", `":9469" has no address: write the IP address to serve on, as in 127.0.0.1:9469`},
		{"no port", "version: 1\nlisten:\n  addresses: [\"127.0.0.1\"]\n", `is not IP:port`},
		{"duplicate address", "version: 1\nlisten:\n  addresses: [\"127.0.0.1:80\", \"127.0.0.1:80\"]\n", `listen.addresses[1]: "127.0.0.1:80" is listed twice`},
		{"ipv6 while disabled", "version: 1\nmetadata_options:\n  http_protocol_ipv6: disabled\nlisten:\n  addresses: [\"[fd00:ec2::254]:80\"]\n", `is IPv6 but metadata_options.http_protocol_ipv6 is disabled`},
		{"bad link", "version: 1\nlisten:\n  link: a-very-long-link-name\n", `is not a link name`},
		{"bad selector", "version: 1\naccess:\n  credentials:\n    deny: [\"www-data\"]\n", `access.credentials.deny[0]: "www-data" is not a selector`},
		{"bad selector kind", "version: 1\naccess:\n  credentials:\n    allow: [\"pid:1\"]\n", `unknown selector kind "pid"`},
		{"bad cidr", "version: 1\naccess:\n  metadata:\n    allow: [\"cidr:300.0.0.0/8\"]\n", `is not a network`},
		{"mapped cidr", "version: 1\naccess:\n  credentials:\n    deny: [\"cidr:::ffff:172.17.0.0/112\"]\n", `IPv4-mapped IPv6 network, which no caller's address matches; write 172.17.0.0/16`},
		{"bad level", "version: 1\nlog:\n  level: loud\n", `log.level: "loud" is not a level`},
		{"relative socket", "version: 1\nadmin:\n  socket: admin.sock\n", `admin.socket: "admin.sock" must be an absolute path`},
		{"bad metrics", "version: 1\nmetrics:\n  listen: 9469\n", `metrics.listen`},
		{"metrics off loopback", "version: 1\nmetrics:\n  listen: 10.0.0.1:9469\n", `metrics.listen: "10.0.0.1:9469" is not a loopback address`},
		{"metrics on a listen address", "version: 1\nlisten:\n  link: \"\"\n  addresses: [\"127.0.0.1:9469\"]\nmetrics:\n  listen: 127.0.0.1:9469\n", `metrics.listen: "127.0.0.1:9469" is also in listen.addresses`},
		{"wildcard address", "version: 1\nlisten:\n  addresses: [\"0.0.0.0:80\"]\n", `listen.addresses[0]: "0.0.0.0:80" would serve the role's credentials to the whole network`},
		{"wildcard ipv6", "version: 1\nlisten:\n  addresses: [\"[::]:80\"]\n", `would serve the role's credentials to the whole network`},
		{"empty http_endpoint", "version: 1\nmetadata_options:\n  http_endpoint: \"\"\n", `c.yaml:3: metadata_options.http_endpoint: "" must be enabled or disabled`},
		{"empty http_tokens", "version: 1\nmetadata_options:\n  http_tokens: \"\"\n", `metadata_options.http_tokens: "" must be required or optional`},
		{"empty http_protocol_ipv6", "version: 1\nmetadata_options:\n  http_protocol_ipv6: \"\"\n", `metadata_options.http_protocol_ipv6: "" must be enabled or disabled`},
		{"empty socket", "version: 1\nadmin:\n  socket: \"\"\n", `admin.socket: "" must be an absolute path`},
		{"empty level", "version: 1\nlog:\n  level: \"\"\n", `log.level: "" is not a level`},
		{"empty format", "version: 1\nlog:\n  format: \"\"\n", `log.format: "" is not a format`},
		{"empty region", "version: 1\ninstance:\n  region: \"\"\n", `instance.region: "" is not a region name`},
		{"empty availability zone", "version: 1\ninstance:\n  region: eu-west-1\n  availability_zone: \"\"\n", `instance.availability_zone: "" must be the region "eu-west-1" followed by one letter`},
		{"several problems", "version: 1\nlog:\n  level: loud\n  format: xml\n", "c.yaml:3: log.level: \"loud\" is not a level; use debug, info, warn or error\nc.yaml:4: log.format: \"xml\" is not a format"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("c.yaml", []byte(tc.in))
			if err == nil {
				t.Fatalf("Parse succeeded; want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
		})
	}
}

func TestParseGood(t *testing.T) {
	c, err := Parse("c.yaml", []byte(`version: 1
instance:
  id: i-0123456789abcdef0
  region: eu-west-1
credentials:
  instance_profile: arn:aws:iam::123456789012:instance-profile/web
  session_duration: 6h
  refresh_before_expiry: 14m50s
metadata_options:
  http_tokens: optional
listen:
  link: ""
  addresses: ["127.0.0.1:0"]
access:
  credentials:
    deny: ["user:www-data", "uid:33", "cidr:172.17.0.0/16"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Instance.AvailabilityZone, "eu-west-1a"; got != want {
		t.Errorf("availability zone = %q, want %q", got, want)
	}
	if c.Listen.Link != "" {
		t.Errorf("link = %q, want \"\" as written", c.Listen.Link)
	}
	if got := c.Credentials.SessionDuration.D(); got != 6*time.Hour {
		t.Errorf("session duration = %v", got)
	}
	if got := time.Duration(c.Credentials.RefreshBeforeExpiry); got != 14*time.Minute+50*time.Second {
		t.Errorf("refresh window = %v", got)
	}
	if c.MetadataOptions.HTTPPutResponseHopLimit != 1 || c.MetadataOptions.HTTPTokens != Optional {
		t.Errorf("metadata options = %+v", c.MetadataOptions)
	}
}

func TestRegionFromAvailabilityZone(t *testing.T) {
	c, err := Parse("c.yaml", []byte("version: 1\ninstance:\n  availability_zone: ap-south-1b\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Instance.Region != "ap-south-1" {
		t.Errorf("region = %q, want ap-south-1", c.Instance.Region)
	}
}

// TestDefaults pins the effective configuration of a minimal file, which is
// what check-config prints; run with -update to accept a deliberate change.
func TestDefaults(t *testing.T) {
	c, err := Parse("c.yaml", []byte("version: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Default(), c); diff != "" {
		t.Errorf("Default() differs from a minimal file (-Default +file):\n%s", diff)
	}
	got, err := c.Marshal(nil)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "defaults.golden.yaml")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("effective default config changed (-golden +got):\n%s", diff)
	}
	// The printed effective config must itself be a valid config.
	if _, err := Parse("printed", got); err != nil {
		t.Errorf("printed config does not parse: %v", err)
	}
}

// TestParseTakesExactValues: values that YAML converts without a loss load
// as they did before the type checks: aliases, YAML 1.1 booleans, quoted
// ones too, and whole numbers written with a fraction of zero.
func TestParseTakesExactValues(t *testing.T) {
	in := `version: 1.0
instance:
  region: &r eu-west-1
  hostname: *r
metadata_options:
  http_put_response_hop_limit: 2.0
listen:
  link: ""
  addresses: ["127.0.0.1:8080", "127.0.0.2:8080"]
credentials:
  source_profile: &f /etc/imds-agent/aws/other
  shared_config_files: [*f]
log:
  audit: "yes"
metrics:
  listen: 127.0.0.3:9469
`
	c, err := Parse("c.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if c.Version != 1 || c.Instance.Hostname != "eu-west-1" || c.MetadataOptions.HTTPPutResponseHopLimit != 2 ||
		!c.Log.Audit || c.Metrics.Listen != "127.0.0.3:9469" || len(c.Credentials.SharedConfigFiles) != 1 || c.Credentials.SharedConfigFiles[0] != "/etc/imds-agent/aws/other" {
		t.Errorf("parsed %+v", c)
	}
	for _, v := range []string{"no", "off", "N"} {
		c, err := Parse("c.yaml", []byte("version: 1\nlog:\n  audit: "+v+"\n"))
		if err != nil || c.Log.Audit {
			t.Errorf("audit: %s: %v, %v", v, c, err)
		}
	}
}

// TestParseErrorsInOrder: the problems of one file are reported in the
// order of the schema every time, not in a map's order.
func TestParseErrorsInOrder(t *testing.T) {
	in := "version: 1\ninstance:\n  hostname: \"a b\"\n  local_hostname: \"c d\"\naccess:\n  credentials:\n    deny: [x]\n  metadata:\n    deny: [y]\n"
	_, err := Parse("c.yaml", []byte(in))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	first := err.Error()
	for _, want := range []string{"instance.hostname", "instance.local_hostname", "access.credentials.deny[0]", "access.metadata.deny[0]"} {
		i := strings.Index(first, want)
		if i < 0 {
			t.Fatalf("error:\n%s\nwant it to name %s", first, want)
		}
		first = first[i:]
	}
	for range 20 {
		_, again := Parse("c.yaml", []byte(in))
		if again.Error() != err.Error() {
			t.Fatalf("the same file gave\n%v\nthen\n%v", err, again)
		}
	}
}

func TestLoadTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.yaml")
	data := append([]byte("version: 1\n"), bytes.Repeat([]byte("# padding\n"), MaxFileSize/10)...)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "is larger than 1024 KiB") {
		t.Errorf("err = %v, want 'is larger than 1024 KiB'", err)
	}
	if err := os.WriteFile(path, data[:MaxFileSize], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err != nil {
		t.Errorf("a file of exactly %d bytes: %v", MaxFileSize, err)
	}
}

// TestLoadNotARegularFile: a FIFO (which would hold the open until a
// writer came), a device or a directory is refused at once, by type.
func TestLoadNotARegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "config.yaml")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for path, kind := range map[string]string{fifo: "FIFO", "/dev/zero": "character device", dir: "directory"} {
		done := make(chan error, 1)
		go func() { _, err := Load(path); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "is not a regular file (it is a "+kind+")") {
				t.Errorf("%s: %v, want a refusal naming a %s", path, err, kind)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: Load still waiting after 10 s", path)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("err = %v, want 'does not exist'", err)
	}
}

// TestRegionNames: the region names of every partition's form are accepted.
func TestRegionNames(t *testing.T) {
	for _, r := range []string{"eu-west-1", "us-gov-west-1", "cn-north-1", "us-isob-east-1", "eusc-de-east-1"} {
		text := fmt.Sprintf("version: 1\ninstance:\n  region: %s\n  availability_zone: %sa\n", r, r)
		if _, err := Parse("c.yaml", []byte(text)); err != nil {
			t.Errorf("region %s: %v", r, err)
		}
	}
}

// TestAdminSocket: the socket a file names is found even when the file does
// not validate; the default otherwise.
func TestAdminSocket(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, text, want string }{
		{"valid", "version: 1\nadmin:\n  socket: /run/a.sock\n", "/run/a.sock"},
		{"invalid elsewhere", "version: 1\nbogus: 1\nadmin:\n  socket: /run/b.sock\n", "/run/b.sock"},
		{"no admin section", "version: 1\n", DefaultAdminSocket},
		{"relative", "version: 1\nadmin:\n  socket: b.sock\n", DefaultAdminSocket},
		{"not YAML", "admin: [\n", DefaultAdminSocket},
	} {
		p := filepath.Join(dir, tc.name+".yaml")
		if err := os.WriteFile(p, []byte(tc.text), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := AdminSocket(p); got != tc.want {
			t.Errorf("%s: AdminSocket = %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := AdminSocket(filepath.Join(dir, "missing.yaml")); got != DefaultAdminSocket {
		t.Errorf("missing file: AdminSocket = %q", got)
	}
}

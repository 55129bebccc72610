package config

import (
	"strings"
	"testing"
)

// FuzzParse: no input panics; whatever parses is valid and prints as a
// configuration that parses to the same thing.
func FuzzParse(f *testing.F) {
	f.Add("version: 1\n")
	f.Add("version: 1\ncredentials:\n  instance_profile: web\n  session_duration: 6h\n  refresh_before_expiry: auto\n")
	f.Add("version: 1\nlisten:\n  link: \"\"\n  addresses: [\"127.0.0.1:0\", \"[::1]:80\"]\n")
	f.Add("version: 1\naccess:\n  credentials:\n    deny: [\"user:www-data\", \"cidr:172.17.0.0/16\"]\n")
	f.Add("version: 1\n---\nversion: 1\n")
	f.Add("version: 1\ninstance: &a {id: i-0123456789abcdef0}\nlog: *a\n")
	f.Add("{version: 1, metadata_options: {http_put_response_hop_limit: 64}}")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := Parse("f.yaml", []byte(in))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.yaml") {
				t.Fatalf("error not located in the file: %v", err)
			}
			return
		}
		out, err := c.Marshal(nil)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		c2, err := Parse("printed", out)
		if err != nil {
			t.Fatalf("printed config does not parse: %v\n%s", err, out)
		}
		out2, _ := c2.Marshal(nil)
		if string(out) != string(out2) {
			t.Fatalf("printing is not stable:\n%s\n---\n%s", out, out2)
		}
	})
}

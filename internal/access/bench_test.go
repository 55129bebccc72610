package access

import (
	"os/user"
	"strconv"
	"testing"

	"github.com/imds-agent/imds-agent/internal/config"
)

// BenchmarkDecide: the policy check made for every credential request, with
// the default (open) policy and with typical rules: a denied service user,
// an allow list by unit and CIDR, and a group rule (answered from the
// per-user group cache after the first look-up).
func BenchmarkDecide(b *testing.B) {
	group := "root"
	if g, err := user.LookupGroupId(strconv.Itoa(0)); err == nil {
		group = g.Name
	}
	for _, bc := range []struct {
		name   string
		access config.Access
	}{
		{"open", config.Access{}},
		{"deny-uid", config.Access{Credentials: config.Rules{Deny: []string{"uid:33"}}}},
		{"allow-unit-cidr", config.Access{Credentials: config.Rules{Allow: []string{"unit:nginx.service", "cidr:172.17.0.0/16", "unit:app.service"}}}},
		{"allow-group", config.Access{Credentials: config.Rules{Allow: []string{"group:" + group}}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p := compileT(b, bc.access)
			p.Decide(Credentials, root) // fills the group cache
			b.ReportAllocs()
			for b.Loop() {
				p.Decide(Credentials, app)
			}
		})
	}
}

package agent

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/imds-agent/imds-agent/internal/netsetup"
)

// TestCheckOnly: an agent without CAP_NET_ADMIN explains a link that is
// not ready (setup-link would fix it), and leaves a refusal that setup-link
// would make too as it is.
func TestCheckOnly(t *testing.T) {
	const hint = "without CAP_NET_ADMIN the agent only checks the link"
	notReady := fmt.Errorf("%w: link imds0 does not exist (run imds-agent setup-link)", netsetup.ErrNotReady)
	if got := checkOnly(notReady); !errors.Is(got, netsetup.ErrNotReady) || !strings.Contains(got.Error(), hint) {
		t.Errorf("not ready: %v, want the hint", got)
	}
	for _, err := range []error{
		fmt.Errorf("%w: imds0 is a veth", netsetup.ErrNotOurs),
		netsetup.ErrEC2,
		fmt.Errorf("%w: 169.254.169.254 is on eth0", netsetup.ErrConflict),
	} {
		if got := checkOnly(err); got != err {
			t.Errorf("%v: became %v", err, got)
		}
	}
}

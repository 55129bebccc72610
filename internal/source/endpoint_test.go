package source

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/imds-agent/imds-agent/internal/netnstest"
)

const chainChild = "IMDS_AGENT_TEST_CHAIN_ENDPOINT"

// TestChainEndpoint: with only AWS_ENDPOINT_URL naming STS's endpoint, the
// source chain's own STS call (a source_profile's role, assumed before the
// agent's, or a web identity token's exchange) goes there too. The SDK
// builds that client before it reads the variable, and it would go to
// AWS's public endpoint: so the check runs in a network namespace with
// nothing but loopback, where such a call cannot leave the host.
func TestChainEndpoint(t *testing.T) {
	if os.Getenv(chainChild) != "" {
		chainEndpointCheck(t)
		return
	}
	ns := netnstest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := ns.Command(ctx, os.Args[0], "-test.run=^TestChainEndpoint$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), chainChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in the namespace: %v\n%s", err, out)
	}
}

// chainEndpointCheck is TestChainEndpoint's check, run by the test
// binary started inside its namespace.
func chainEndpointCheck(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL_STS", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	for _, tc := range []struct {
		name, profile string
	}{
		{"source_profile", "[profile base]\naws_access_key_id = AKIAEXAMPLE000000004\naws_secret_access_key = base-secret\n" +
			"[profile app]\nrole_arn = arn:aws:iam::123456789012:role/source\nsource_profile = base\n"},
		{"web identity", "[profile app]\nrole_arn = arn:aws:iam::123456789012:role/source\nweb_identity_token_file = " +
			write(t, "token", "eyJhbGciOiJub25lIn0.e30.", 0o600) + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, hits := countingServer(t)
			t.Setenv("AWS_ENDPOINT_URL", srv.URL)
			cfgFile := write(t, "config", tc.profile, 0o600)
			cfg, err := Load(context.Background(), Settings{Region: "us-east-1", Profile: "app", SharedConfigFiles: []string{cfgFile}, SharedCredentialsFiles: []string{filepath.Join(t.TempDir(), "none")}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err = cfg.Credentials.Retrieve(ctx) // the counting server's empty answer is no credentials
			if hits.Load() == 0 {
				t.Errorf("the source chain's STS call did not go to AWS_ENDPOINT_URL: %v", err)
			}
		})
	}
}

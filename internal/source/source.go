// Package source loads the host's own ("source") AWS credentials and the
// STS and IAM clients the agent calls with them, through the SDK's
// shared-config machinery: static keys, source_profile chains,
// web_identity_token_file, credential_process, SSO and the environment all
// work as they do for any SDK. Two sources are excluded: the instance
// metadata service (the agent would be asking itself, or a real metadata
// service on the network) and the container credentials endpoint.
package source

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/credentials/endpointcreds"
	"github.com/aws/aws-sdk-go-v2/credentials/processcreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/imds-agent/imds-agent/internal/refresh"
)

// Settings say where the source credentials are.
type Settings struct {
	Region                 string
	Profile                string // "" = the SDK's default chain
	SharedConfigFiles      []string
	SharedCredentialsFiles []string
}

// httpTimeout bounds every request of the clients built from the source
// settings, the source chain's own included (an assumed source_profile
// role, web identity, SSO). The SDK's credential cache runs a source's
// request on a context that ignores the caller's cancellation, so without
// a bound of its own a request to an endpoint that never answers would
// stay open, with its goroutines, after each attempt that gave up on it.
var httpTimeout = 30 * time.Second

// ErrExcludedSource is returned when the only credentials the SDK finds
// would come from the instance metadata service or a container endpoint.
var ErrExcludedSource = errors.New("the SDK found no source credentials except the instance metadata service or a container endpoint, which the agent never uses")

// Load resolves the source credentials and returns the SDK configuration
// the agent's own clients are built from. SDK retries are off: the refresh
// manager owns retrying, with its own backoff.
func Load(ctx context.Context, s Settings) (aws.Config, error) {
	if err := CheckSettings(s, Self()); err != nil {
		return aws.Config{}, fmt.Errorf("%w: %w", refresh.ErrNoSourceCredentials, err)
	}
	return LoadProfile(ctx, s)
}

// LoadProfile is Load without its check of the files' owners and modes
// (which CheckSettings makes for a given user): the SDK's load of the
// shared files and the profile, its source_profile chain included. It
// reads local files only; no credentials are fetched, no program is run
// and nothing leaves the host.
func LoadProfile(ctx context.Context, s Settings) (aws.Config, error) {
	chain := &chainEndpoint{}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, append(loadOptions(s),
		awsconfig.WithAssumeRoleCredentialOptions(chain.assumeRole),
		awsconfig.WithWebIdentityRoleCredentialOptions(chain.webIdentity))...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("loading source credentials: %w: %w", refresh.ErrNoSourceCredentials, err)
	}
	chain.url = cfg.BaseEndpoint
	if cfg.Credentials == nil {
		return aws.Config{}, fmt.Errorf("loading source credentials: %w", refresh.ErrNoSourceCredentials)
	}
	if ps, ok := cfg.Credentials.(aws.CredentialProviderSource); ok {
		srcs := ps.ProviderSources()
		if slices.Contains(srcs, aws.CredentialSourceIMDS) || slices.Contains(srcs, aws.CredentialSourceHTTP) && containerEndpointSet() {
			return aws.Config{}, fmt.Errorf("loading source credentials (shared credentials files %v, shared config files %v): %w: %w",
				s.SharedCredentialsFiles, s.SharedConfigFiles, refresh.ErrNoSourceCredentials, ErrExcludedSource)
		}
	}
	cfg.Credentials = sanitizing{cfg.Credentials}
	return cfg, nil
}

// containerVariables name a container credentials endpoint and what
// authorises a request to it.
var containerVariables = []string{
	"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
	"AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
}

// SealEnvironment makes this process's environment, which the programs
// the source chain starts (a credential_process) inherit, keep an SDK in
// them from the two sources the agent never uses either: it sets
// AWS_EC2_METADATA_DISABLED=true (the metadata service would be this
// agent, or a real one on the network) and removes the container
// endpoint's variables. The SDK gives such a program the agent's
// environment as it is. It returns the variables it removed.
func SealEnvironment() (removed []string) {
	_ = os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	for _, k := range containerVariables {
		if _, ok := os.LookupEnv(k); ok {
			_ = os.Unsetenv(k)
			removed = append(removed, k)
		}
	}
	return removed
}

// containerEndpointSet reports whether the environment names a container
// credentials endpoint. The SDK labels credentials from it as coming over
// HTTP, and so it labels a profile's credential_source = Environment (the
// keys in the agent's environment) too; without the variables, the label
// can only mean the latter. The container provider's client refuses every
// request either way.
func containerEndpointSet() bool {
	return os.Getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") != "" || os.Getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI") != ""
}

// loadOptions are the SDK load options for s: its files and profile, no
// SDK retries, and the IMDS and container credential providers replaced by
// refusals.
func loadOptions(s Settings) []func(*awsconfig.LoadOptions) error {
	opts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithHTTPClient(awshttp.NewBuildableClient().WithTimeout(httpTimeout)),
		awsconfig.WithRegion(s.Region),
		awsconfig.WithSharedConfigFiles(s.SharedConfigFiles),
		awsconfig.WithSharedCredentialsFiles(s.SharedCredentialsFiles),
		awsconfig.WithRetryMaxAttempts(1),
		awsconfig.WithEC2IMDSClientEnableState(imds.ClientDisabled),
		awsconfig.WithEC2RoleCredentialOptions(func(o *ec2rolecreds.Options) { o.Client = refuseIMDS{} }),
		awsconfig.WithEndpointCredentialOptions(func(o *endpointcreds.Options) { o.HTTPClient = refuseHTTP{} }),
	}
	if s.Profile != "" {
		opts = append(opts, awsconfig.WithSharedConfigProfile(s.Profile))
	}
	return opts
}

// sanitizing marks a credential provider's errors as the source's, and
// keeps them free of secrets.
//
// A failure to get the source credentials (a credential_process that
// fails, a missing web identity token file) surfaces as the failure of the
// STS or IAM call being signed; marked with refresh.ErrNoSourceCredentials,
// it is reported as the host's credentials and not as STS being down.
//
// The SDK's credential_process provider quotes the process's whole output
// when it cannot parse it, and that output may hold a secret key; the
// agent's errors reach its log, `status` and systemd's STATUS=.
type sanitizing struct{ aws.CredentialsProvider }

func (s sanitizing) Retrieve(ctx context.Context) (aws.Credentials, error) {
	c, err := s.CredentialsProvider.Retrieve(ctx)
	if err == nil {
		return c, nil
	}
	var pe *processcreds.ProviderError
	if errors.As(err, &pe) && strings.Contains(pe.Error(), "parse failed of process output") {
		return c, fmt.Errorf("%w: credential_process printed something other than the credentials JSON (its output is not shown: it may hold secrets)", refresh.ErrNoSourceCredentials)
	}
	if errors.Is(err, refresh.ErrNoSourceCredentials) {
		return c, err
	}
	return c, fmt.Errorf("getting the source credentials: %w: %w", refresh.ErrNoSourceCredentials, err)
}

// ProviderSources keeps the sources visible through the wrapper.
func (s sanitizing) ProviderSources() []aws.CredentialSource {
	if ps, ok := s.CredentialsProvider.(aws.CredentialProviderSource); ok {
		return ps.ProviderSources()
	}
	return nil
}

// Connector returns a refresh.Settings.Connect function building STS and
// IAM clients from freshly loaded source credentials.
func Connector(s Settings) func(ctx context.Context) (refresh.Clients, error) {
	return func(ctx context.Context) (refresh.Clients, error) {
		cfg, err := Load(ctx, s)
		if err != nil {
			return refresh.Clients{}, err
		}
		return refresh.Clients{STS: sts.NewFromConfig(cfg), IAM: iam.NewFromConfig(cfg)}, nil
	}
}

// refuseIMDS stands in for the metadata client of the SDK's EC2 role
// provider, so that no request can ever leave for 169.254.169.254.
type refuseIMDS struct{}

func (refuseIMDS) GetMetadata(context.Context, *imds.GetMetadataInput, ...func(*imds.Options)) (*imds.GetMetadataOutput, error) {
	return nil, ErrExcludedSource
}

// refuseHTTP stands in for the container credential provider's client.
type refuseHTTP struct{}

func (refuseHTTP) Do(*http.Request) (*http.Response, error) { return nil, ErrExcludedSource }

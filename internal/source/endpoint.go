package source

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

// chainEndpoint gives the STS clients the SDK builds for the source chain
// itself (a source_profile's role to assume, a web identity token to
// exchange) the endpoint the settings name in AWS_ENDPOINT_URL or in a
// profile's endpoint_url. The SDK builds those clients before it reads
// that setting, and when AWS_ENDPOINT_URL is set (and AWS_ENDPOINT_URL_STS
// is not) they go by neither, so they would call AWS's public STS
// endpoint: wrong for a private or isolated partition, and a request
// leaving for a host the operator did not name. An endpoint of STS's own
// (AWS_ENDPOINT_URL_STS, a services section) reaches them already and is
// kept.
type chainEndpoint struct {
	url *string // the load's resolved endpoint, set once it returns
}

func (e *chainEndpoint) apply(o *sts.Options) {
	if o.BaseEndpoint == nil && e.url != nil {
		o.BaseEndpoint = e.url
	}
}

// assumeRole and webIdentity are option functions the SDK applies more
// than once, the first time (for web identity) to options without a
// client, whose client it builds only if the functions leave it nil: a
// client is wrapped only once it exists, and only once.
func (e *chainEndpoint) assumeRole(o *stscreds.AssumeRoleOptions) {
	if _, done := o.Client.(assumeRoleClient); o.Client != nil && !done {
		o.Client = assumeRoleClient{o.Client, e}
	}
}

func (e *chainEndpoint) webIdentity(o *stscreds.WebIdentityRoleOptions) {
	if _, done := o.Client.(webIdentityClient); o.Client != nil && !done {
		o.Client = webIdentityClient{o.Client, e}
	}
}

type assumeRoleClient struct {
	stscreds.AssumeRoleAPIClient
	e *chainEndpoint
}

func (c assumeRoleClient) AssumeRole(ctx context.Context, in *sts.AssumeRoleInput, optFns ...func(*sts.Options)) (*sts.AssumeRoleOutput, error) {
	return c.AssumeRoleAPIClient.AssumeRole(ctx, in, append(optFns, c.e.apply)...)
}

type webIdentityClient struct {
	stscreds.AssumeRoleWithWebIdentityAPIClient
	e *chainEndpoint
}

func (c webIdentityClient) AssumeRoleWithWebIdentity(ctx context.Context, in *sts.AssumeRoleWithWebIdentityInput, optFns ...func(*sts.Options)) (*sts.AssumeRoleWithWebIdentityOutput, error) {
	return c.AssumeRoleWithWebIdentityAPIClient.AssumeRoleWithWebIdentity(ctx, in, append(optFns, c.e.apply)...)
}

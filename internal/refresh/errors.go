package refresh

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials/processcreds"
	"github.com/aws/smithy-go"

	"github.com/imds-agent/imds-agent/internal/profile"
)

// Class sorts failures by what the agent should do about them.
type Class uint8

const (
	// Transient: network trouble, timeouts, 5xx. Retry soon.
	Transient Class = iota
	// Throttled: STS or IAM asked us to slow down. Retry, more slowly.
	Throttled
	// Terminal: retrying cannot help until someone changes IAM or the
	// source credentials (AccessDenied, no such role, invalid keys).
	// Retried at a slow pace so a fix is picked up without a restart.
	Terminal
	// DurationTooLong: the role's maximum session is below the requested
	// duration. Handled by asking for one hour instead.
	DurationTooLong
)

var classNames = [...]string{"transient", "throttled", "terminal", "duration-too-long"}

func (c Class) String() string { return classNames[c] }

// ClassNames returns the name of every class, as String gives it.
func ClassNames() []string { return slices.Clone(classNames[:]) }

var terminalCodes = map[string]bool{
	"AccessDenied": true, "AccessDeniedException": true, "NoSuchEntity": true,
	"InvalidClientTokenId": true, "SignatureDoesNotMatch": true, "IncompleteSignature": true,
	"ExpiredToken": true, "ExpiredTokenException": true, "UnrecognizedClientException": true,
	"MalformedPolicyDocument": true, "PackedPolicyTooLarge": true, "RegionDisabledException": true,
	"ValidationError": true, "IDPRejectedClaim": true,
	"UnauthorizedException": true, "InvalidGrantException": true, // SSO: the session expired or was revoked
	"InvalidParameterValue": true, "MissingAuthenticationToken": true, "OptInRequired": true,
}

// clockSkew reports whether the SDK took err for the host's clock being off
// from the service's: a signature error whose response's Date header was
// more than the SDK's threshold (4 minutes) away from the signing time. The
// SDK marks such an error retryable and keeps the offset on the client, so
// the next call with the same client signs with the service's time.
func clockSkew(err error) bool {
	var r interface{ RetryableError() bool }
	var ae smithy.APIError
	if !errors.As(err, &r) || !r.RetryableError() || !errors.As(err, &ae) {
		return false
	}
	switch ae.ErrorCode() {
	case "SignatureDoesNotMatch", "InvalidSignatureException", "AuthFailure", "RequestTimeTooSkewed", "AccessDeniedException":
		return true
	}
	return false
}

// Classify sorts a failed STS or IAM call.
func Classify(err error) Class {
	if clockSkew(err) {
		return Transient
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code := ae.ErrorCode()
		_, throttled := retry.DefaultThrottleErrorCodes[code]
		switch {
		case throttled:
			return Throttled
		case code == "ValidationError" && strings.Contains(ae.ErrorMessage(), "DurationSeconds"):
			return DurationTooLong
		case terminalCodes[code]:
			return Terminal
		}
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		switch s := re.HTTPStatusCode(); {
		case s == http.StatusTooManyRequests:
			return Throttled
		case s >= 500:
			return Transient
		case s == http.StatusForbidden || s == http.StatusUnauthorized:
			return Terminal
		}
	}
	// What remains of the source's failures is terminal when it is the
	// host's setup (no credentials found, a token file missing, a
	// credential_process that cannot be run or whose output is no
	// credentials), and worth retrying soon when something may answer
	// differently next time: a timeout, the network, an AWS service behind
	// the source (a web identity exchange's IDPCommunicationError), or a
	// credential_process that ran and failed (it says nothing of why: its
	// own network, say).
	var ne net.Error
	var pe *processcreds.ProviderError
	var ee *exec.ExitError
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne):
		return Transient
	case errors.Is(err, ErrNoSourceCredentials) && errors.As(err, &ae):
		return Transient
	case errors.Is(err, ErrNoSourceCredentials) && errors.As(err, &pe) && errors.As(pe, &ee) && ee.ExitCode() != 126 && ee.ExitCode() != 127:
		return Transient // 126 and 127: the shell could not run the command
	case errors.Is(err, profile.ErrProfileNotFound) || errors.Is(err, ErrNoSourceCredentials):
		return Terminal
	}
	return Transient
}

// lookupError is a failure to look up the instance profile's role, as
// opposed to one of AssumeRole: iam/info and STATUS= name IAM, not STS.
type lookupError struct{ err error }

func (e *lookupError) Error() string { return e.err.Error() }
func (e *lookupError) Unwrap() error { return e.err }

// ErrNoSourceCredentials means the host has no usable source credentials.
var ErrNoSourceCredentials = errors.New("no source credentials")

// failureCode is the Code iam/info shows for a failure, and failureMessage
// its fixed text: AWS error text never reaches an HTTP client.
func failureCode(c Class, err error) (code, message string) {
	if clockSkew(err) {
		return "ClockSkew", "The host's clock is off from STS's; retrying with STS's time. See the agent's log."
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "UnrecognizedClientException":
			return "InvalidSourceCredentials", "The host's source credentials were rejected. See the agent's log."
		}
	}
	switch {
	case errors.Is(err, ErrNoSourceCredentials) && c == Terminal:
		return "InvalidSourceCredentials", "The host has no usable source credentials. See the agent's log."
	case errors.Is(err, ErrNoSourceCredentials):
		return "InvalidSourceCredentials", "The host's source credentials could not be obtained; retrying. See the agent's log."
	case errors.Is(err, profile.ErrProfileNotFound):
		return "InstanceProfileNotFound", "The instance profile was not found. See the agent's log."
	case errors.As(err, new(*lookupError)) && c == Terminal:
		return "InstanceProfileUnauthorizedAccess", "The agent cannot look up the instance profile's role. See the agent's log."
	case errors.As(err, new(*lookupError)) && c == Throttled:
		return "Throttling", "IAM is throttling the instance profile's look-up; retrying."
	case errors.As(err, new(*lookupError)):
		return "ServiceUnavailable", "IAM could not be reached to look up the instance profile's role; retrying."
	case c == Terminal:
		return "AssumeRoleUnauthorizedAccess", "The agent cannot assume the role. See the agent's log."
	case c == Throttled:
		return "Throttling", "STS is throttling credential requests; retrying."
	}
	return "ServiceUnavailable", "STS could not be reached; retrying."
}

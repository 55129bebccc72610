package imds

import (
	"net/http"
	"time"

	"github.com/imds-agent/imds-agent/internal/snapshot"
)

// Route names the part of the contract a request addressed.
type Route uint8

const (
	RouteUnknown             Route = iota // a path outside any known version
	RouteToken                            // PUT /latest/api/token
	RouteVersionedToken                   // /<version>/api/token, refused
	RouteVersions                         // /
	RouteRoot                             // /latest/
	RouteMetaData                         // /latest/meta-data/
	RouteMetadata                         // any other static metadata path
	RouteUserData                         // /latest/user-data
	RouteIdentity                         // /latest/dynamic/instance-identity/document
	RouteIAM                              // meta-data/iam/
	RouteInfo                             // meta-data/iam/info
	RouteRoleList                         // meta-data/iam/security-credentials/
	RouteRoleListExtended                 // meta-data/iam/security-credentials-extended/
	RouteCredentials                      // meta-data/iam/security-credentials/<role>
	RouteCredentialsExtended              // meta-data/iam/security-credentials-extended/<role>
	routeCount
)

var routeNames = [routeCount]string{
	"unknown", "token", "versioned-token", "versions", "root", "meta-data", "metadata",
	"user-data", "identity-document", "iam", "iam-info", "role-list", "role-list-extended",
	"credentials", "credentials-extended",
}

func (r Route) String() string { return routeNames[r] }

// Routes lists every route, for metrics that pre-register labels.
func Routes() []Route {
	out := make([]Route, routeCount)
	for i := range out {
		out[i] = Route(i)
	}
	return out
}

// Credentials reports whether the route is part of the iam tree, which the
// access policy treats apart from the rest of the metadata.
func (r Route) Credentials() bool { return r >= RouteIAM && r <= RouteCredentialsExtended }

// Secret reports whether a 200 on this route hands out credentials.
func (r Route) Secret() bool { return r == RouteCredentials || r == RouteCredentialsExtended }

// Reason says why a request was refused.
type Reason uint8

const (
	ReasonNone             Reason = iota
	ReasonEndpointDisabled        // http_endpoint: disabled
	ReasonVersionedToken          // token PUT on a dated path
	ReasonMethod                  // method not allowed on the path
	ReasonForwarded               // token PUT carrying X-Forwarded-For
	ReasonBadTTL                  // token TTL header missing or out of range
	ReasonTokenMissing            // no token while tokens are required
	ReasonTokenInvalid            // malformed or forged token
	ReasonTokenExpired            // expired token
	ReasonTokenWrongUser          // token bound to another local user
	ReasonNotFound                // no such path
	ReasonNoRole                  // no role attached
	ReasonUnknownRole             // credentials asked for another role
	ReasonNoCredentials           // role known, credentials not yet
	ReasonHopLimit                // caller beyond http_put_response_hop_limit
	ReasonAccessDenied            // local access policy
	ReasonRateLimited             // per-caller token limit
	ReasonBadHost                 // Host header names no address served
	reasonCount
)

var reasonNames = [reasonCount]string{
	"", "endpoint-disabled", "versioned-token-path", "method-not-allowed", "x-forwarded-for",
	"bad-token-ttl", "token-missing", "token-invalid", "token-expired", "token-wrong-user",
	"not-found", "no-role", "unknown-role", "no-credentials-yet", "hop-limit",
	"access-denied", "rate-limited", "bad-host",
}

func (r Reason) String() string { return reasonNames[r] }

// Reasons lists every refusal reason, ReasonNone first.
func Reasons() []Reason {
	out := make([]Reason, reasonCount)
	for i := range out {
		out[i] = Reason(i)
	}
	return out
}

// Request is one request as the handler understood it, handed to Hooks.
type Request struct {
	HTTP *http.Request
	// Time is when the handler took the request up: the one clock reading
	// that the token check, the hooks and the audit record all use.
	Time   time.Time
	Route  Route
	Reason Reason // why it was refused; ReasonNone when served
	Token  bool   // a valid token was presented
	// Snapshot is the credential snapshot the answer was made from (iam
	// routes only).
	Snapshot *snapshot.Snapshot
	// Conn is what the server's connValue returned for the request's
	// connection; nil for a request that came without a connection record.
	// Hooks may set it, for the later hooks on the same request.
	Conn any

	conn *conn // the server's record of the connection, if any
}

// Hooks is how the agent polices and observes requests without the handler
// knowing about callers, policy, metrics or audit. Every method is called on
// the request path and must be cheap and non-blocking. A Request is valid
// only during the call: the next request on the connection reuses it.
type Hooks interface {
	// CallerUID returns the local UID of the caller, if known.
	CallerUID(req *Request) (uid uint32, known bool)
	// TokenBinding says whether a token issued for req is bound to its UID.
	TokenBinding(req *Request) Binding
	// Admit decides on a request that passed the method and token checks
	// (for the token route: a well-formed PUT). A non-zero status refuses it.
	Admit(req *Request, opts Options) (status int, reason Reason)
	// Served is called once per request with the status sent.
	Served(req *Request, status int)
}

// NopHooks admits everything and observes nothing.
type NopHooks struct{}

func (NopHooks) CallerUID(*Request) (uint32, bool)     { return 0, false }
func (NopHooks) TokenBinding(*Request) Binding         { return Binding{} }
func (NopHooks) Admit(*Request, Options) (int, Reason) { return 0, ReasonNone }
func (NopHooks) Served(*Request, int)                  {}

// Package imds serves the EC2 instance metadata service contract: the IMDSv2
// token API, the metadata tree and the role credential documents, with
// EC2's status codes and byte-exact bodies. It knows nothing of STS: the
// credentials come from an immutable snapshot another component swaps in.
package imds

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/imds-agent/imds-agent/internal/snapshot"
)

// CredentialSource hands out the current credential snapshot. It must never
// block.
type CredentialSource interface {
	Snapshot() *snapshot.Snapshot
}

// Canonical header names (net/http canonicalises incoming headers, so direct
// map access needs no allocation).
const (
	headerToken        = "X-Aws-Ec2-Metadata-Token"
	headerTTL          = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	headerForwardedFor = "X-Forwarded-For"
)

var (
	textPlain   = []string{"text/plain"}
	textHTML    = []string{"text/html"}
	octetStream = []string{"application/octet-stream"}
	allowPut    = []string{"PUT"}
	allowGet    = []string{"GET, HEAD"}
	tokenLength = []string{strconv.Itoa(TokenLen)}
)

// Handler is the metadata service's http.Handler.
type Handler struct {
	held   atomic.Int64 // connections held silent (see drop)
	meta   atomic.Pointer[Metadata]
	creds  CredentialSource
	tokens *Tokens
	now    func() time.Time
	hooks  Hooks
	date   atomic.Pointer[date] // the Date header of the last second served
}

// NewHandler returns a handler serving meta and the credentials of creds.
// now is read once per request, and that reading is the time tokens are
// issued and checked at: it must be the clock tokens was made with. hooks
// may be nil.
func NewHandler(meta *Metadata, creds CredentialSource, tokens *Tokens, now func() time.Time, hooks Hooks) *Handler {
	if hooks == nil {
		hooks = NopHooks{}
	}
	h := &Handler{creds: creds, tokens: tokens, now: now, hooks: hooks}
	h.meta.Store(meta)
	return h
}

// SetMetadata swaps in a new tree and options (on reload).
func (h *Handler) SetMetadata(m *Metadata) { h.meta.Store(m) }

// Metadata returns the tree being served.
func (h *Handler) Metadata() *Metadata { return h.meta.Load() }

// ServeHTTP implements http.Handler. Checks run in EC2's order: the
// endpoint switch, then the method, then the token, then local policy, and
// only then the path's existence.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := connOf(r)
	if c == nil {
		h.serve(w, &Request{HTTP: r, Time: h.now()})
		return
	}
	// A connection's requests come one after the other (HTTP/1.1), and
	// the hooks keep no Request beyond their call: each request reuses
	// the connection's, which is then cleared so that an idle connection
	// holds on to nothing of its last request.
	req := &c.req
	*req = Request{HTTP: r, Time: h.now(), Conn: c.value, conn: c}
	h.serve(w, req)
	*req = Request{}
}

// serve answers req, whose HTTP and Time are set.
func (h *Handler) serve(w http.ResponseWriter, req *Request) {
	m := h.meta.Load()
	r := req.HTTP
	path := r.URL.Path
	if strings.Contains(path, "//") {
		path = collapseSlashes(path)
	}
	var rel string
	req.Route, rel = classify(path)
	if !m.opts.Enabled {
		h.refuse(w, req, http.StatusForbidden, ReasonEndpointDisabled)
		return
	}
	if req.Route == RouteToken || req.Route == RouteVersionedToken {
		h.serveToken(w, req, m)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header()["Allow"] = allowGet
		h.refuse(w, req, http.StatusMethodNotAllowed, ReasonMethod)
		return
	}
	if !h.authorized(w, req, m) {
		return
	}
	if req.Route.Credentials() {
		req.Snapshot = h.creds.Snapshot()
	}
	if status, reason := h.hooks.Admit(req, m.opts); status != 0 {
		h.refuse(w, req, status, reason)
		return
	}
	switch req.Route {
	case RouteVersions:
		h.write(w, req, textPlain, m.versions)
	case RouteRoot:
		h.write(w, req, textPlain, m.root)
	case RouteMetaData:
		if h.creds.Snapshot().State == snapshot.NoRole {
			h.write(w, req, textPlain, m.metaNoIAM)
		} else {
			h.write(w, req, textPlain, m.metaWithIAM)
		}
	case RouteIdentity:
		h.write(w, req, textPlain, m.identityDocument(h.accountID(m)))
	case RouteUserData:
		if b, ok := m.files[rel]; ok {
			h.write(w, req, octetStream, b)
			return
		}
		h.refuse(w, req, http.StatusNotFound, ReasonNotFound)
	case RouteIAM, RouteInfo, RouteRoleList, RouteRoleListExtended, RouteCredentials, RouteCredentialsExtended:
		h.serveIAM(w, req, rel)
	case RouteMetadata:
		if b, ok := m.files[rel]; ok {
			h.write(w, req, textPlain, b)
			return
		}
		h.refuse(w, req, http.StatusNotFound, ReasonNotFound)
	default:
		h.refuse(w, req, http.StatusNotFound, ReasonNotFound)
	}
}

// classify maps a cleaned path to its route and, below a known version, the
// path relative to it without a trailing slash ("meta-data/instance-id").
func classify(path string) (Route, string) {
	if path == "/" || path == "" {
		return RouteVersions, ""
	}
	version, rest, _ := strings.Cut(path[1:], "/")
	if rest == "api/token" {
		if version == "latest" {
			return RouteToken, ""
		}
		return RouteVersionedToken, ""
	}
	if version != "latest" && !versionSet[version] { // SDKs all ask for latest
		return RouteUnknown, ""
	}
	rel := strings.TrimSuffix(rest, "/")
	switch {
	case rel == "":
		return RouteRoot, rel
	case rel == "meta-data":
		return RouteMetaData, rel
	case rel == "user-data":
		return RouteUserData, rel
	case rel == "dynamic/instance-identity/document":
		return RouteIdentity, rel
	case rel == "meta-data/iam":
		return RouteIAM, rel
	case rel == "meta-data/iam/info":
		return RouteInfo, rel
	case rel == "meta-data/iam/security-credentials":
		return RouteRoleList, rel
	case rel == "meta-data/iam/security-credentials-extended":
		return RouteRoleListExtended, rel
	case strings.HasPrefix(rel, "meta-data/iam/security-credentials/"):
		return RouteCredentials, rel[len("meta-data/iam/security-credentials/"):]
	case strings.HasPrefix(rel, "meta-data/iam/security-credentials-extended/"):
		return RouteCredentialsExtended, rel[len("meta-data/iam/security-credentials-extended/"):]
	}
	return RouteMetadata, rel
}

// authorized applies the token rules: a presented token must be valid in
// either mode; no token is accepted only when tokens are optional.
func (h *Handler) authorized(w http.ResponseWriter, req *Request, m *Metadata) bool {
	if v, ok := req.HTTP.Header[headerToken]; ok && len(v) > 0 {
		uid, known := h.hooks.CallerUID(req)
		var memo *tokenMemo
		if req.conn != nil {
			memo = &req.conn.tokens
		}
		switch h.tokens.verify(v[0], uid, known, req.Time.UnixMilli(), memo) {
		case TokenValid:
			req.Token = true
			return true
		case TokenWrongUser:
			h.refuse(w, req, http.StatusUnauthorized, ReasonTokenWrongUser)
		case TokenExpired:
			h.refuse(w, req, http.StatusUnauthorized, ReasonTokenExpired)
		default:
			h.refuse(w, req, http.StatusUnauthorized, ReasonTokenInvalid)
		}
		return false
	}
	if m.opts.TokensRequired {
		h.refuse(w, req, http.StatusUnauthorized, ReasonTokenMissing)
		return false
	}
	return true
}

func (h *Handler) serveToken(w http.ResponseWriter, req *Request, m *Metadata) {
	r := req.HTTP
	if req.Route == RouteVersionedToken {
		h.refuse(w, req, http.StatusForbidden, ReasonVersionedToken)
		return
	}
	if r.Method != http.MethodPut {
		w.Header()["Allow"] = allowPut
		h.refuse(w, req, http.StatusMethodNotAllowed, ReasonMethod)
		return
	}
	if _, ok := r.Header[headerForwardedFor]; ok {
		h.refuse(w, req, http.StatusForbidden, ReasonForwarded)
		return
	}
	ttl, ok := parseTTL(r.Header[headerTTL])
	if !ok {
		h.refuse(w, req, http.StatusBadRequest, ReasonBadTTL)
		return
	}
	if status, reason := h.hooks.Admit(req, m.opts); status != 0 {
		h.refuse(w, req, status, reason)
		return
	}
	tok := h.tokens.issue(ttl, h.hooks.TokenBinding(req), req.Time.UnixMilli())
	if req.conn != nil {
		req.conn.tokens.last.Store(tok) // the GETs that follow on this connection send it
	}
	hdr := h.header(w, req, textPlain, TokenLen, tokenLength)
	if echo := r.Header[headerTTL]; echo[0][0] != '0' {
		hdr[headerTTL] = echo // as sent, which is N: no allocation
	} else {
		hdr[headerTTL] = []string{strconv.Itoa(ttl)} // N without the leading zeros
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(tok.token[:])
	h.hooks.Served(req, http.StatusOK)
}

// parseTTL accepts a single header value of 1 to MaxTokenTTL written in
// plain decimal digits, leading zeros included ("060" is 60).
func parseTTL(v []string) (int, bool) {
	if len(v) != 1 {
		return 0, false
	}
	digits := strings.TrimLeft(v[0], "0")
	if len(v[0]) == 0 || len(digits) > 5 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n >= 1 && n <= MaxTokenTTL
}

func (h *Handler) accountID(m *Metadata) string {
	if a := h.creds.Snapshot().Role.AccountID; a != "" {
		return a
	}
	if m.instance.AccountID != "" {
		return m.instance.AccountID
	}
	return "000000000000"
}

// serveIAM answers below meta-data/iam. For the credential routes, role is
// the role name asked for.
func (h *Handler) serveIAM(w http.ResponseWriter, req *Request, role string) {
	snap := req.Snapshot
	switch {
	case snap.State == snapshot.NoRole:
		// No profile attached: EC2 has no iam/ tree at all.
		h.refuse(w, req, http.StatusNotFound, ReasonNoRole)
		return
	case req.Route == RouteIAM:
		h.write(w, req, textPlain, h.meta.Load().iamListing)
		return
	case req.Route == RouteInfo:
		h.serveInfo(w, req, snap)
		return
	case snap.State == snapshot.Pending:
		switch {
		case snap.Role.Name == "":
			// The role is not resolved yet: no name can be told unknown.
		case req.Route == RouteRoleList || req.Route == RouteRoleListExtended:
			h.write(w, req, textPlain, snap.RoleListing)
			return
		case role != snap.Role.Name:
			h.refuse(w, req, http.StatusNotFound, ReasonUnknownRole)
			return
		}
		h.refuse(w, req, http.StatusServiceUnavailable, ReasonNoCredentials)
		return
	case req.Route == RouteRoleList || req.Route == RouteRoleListExtended:
		h.write(w, req, textPlain, snap.RoleListing)
		return
	case role != snap.Role.Name:
		h.refuse(w, req, http.StatusNotFound, ReasonUnknownRole)
		return
	case req.Route == RouteCredentialsExtended:
		h.write(w, req, textPlain, snap.Extended)
	default:
		h.write(w, req, textPlain, snap.Credentials)
	}
}

// serveInfo answers iam/info: Success while the credentials are current,
// the failure document once they have expired (or never came), never
// Success over an error.
func (h *Handler) serveInfo(w http.ResponseWriter, req *Request, snap *snapshot.Snapshot) {
	switch {
	case snap.State == snapshot.Ready && !snap.Expired(req.Time):
		h.write(w, req, textPlain, snap.Info)
	case snap.Failure.Bytes != nil:
		// The failure document says what went wrong, but never with 200:
		// an error body is never sent as a success.
		req.Reason = ReasonNoCredentials
		h.writeStatus(w, req, http.StatusServiceUnavailable, textPlain, snap.Failure)
	default:
		h.refuse(w, req, http.StatusServiceUnavailable, ReasonNoCredentials)
	}
}

func (h *Handler) write(w http.ResponseWriter, req *Request, ctype []string, b body) {
	h.writeStatus(w, req, http.StatusOK, ctype, b)
}

// writeStatus sends b with status.
func (h *Handler) writeStatus(w http.ResponseWriter, req *Request, status int, ctype []string, b body) {
	h.header(w, req, ctype, len(b.Bytes), b.ContentLength)
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes)
	h.hooks.Served(req, status)
}

// header sets the headers every answer carries and returns w's header.
// The value slices are shared by every response and never modified (an Add
// would reallocate them: each has a capacity of one). n is the body's
// length and length its Content-Length value.
//
// Content-Length is set only for a body net/http would not size itself:
// one of at most netHTTPBuffered bytes, written in one piece before the
// handler returns, is still in net/http's buffer when the handler is done,
// and net/http then writes its length after the header map. That spares
// a map entry, which net/http otherwise parses, copies with the map at
// WriteHeader and writes out with the map's other entries (about 100 ns
// of an answer's header writing). An empty body keeps the header, which
// net/http does not write for a HEAD.
func (h *Handler) header(w http.ResponseWriter, req *Request, ctype []string, n int, length []string) http.Header {
	hdr := w.Header()
	hdr["Content-Type"] = ctype
	if n == 0 || n > netHTTPBuffered {
		hdr["Content-Length"] = length
	}
	hdr["Date"] = h.dateOf(req.Time)
	return hdr
}

// netHTTPBuffered is how much of a body net/http's server holds back
// before it sends the headers (bufferBeforeChunkingSize in its server.go).
// A longer body without a Content-Length would go out chunked, which EC2
// never does. TestContentLength checks both sides of the bound through a
// real server.
const netHTTPBuffered = 2048

// date is a Date header value and the second it says.
type date struct {
	sec   int64
	value []string
}

// dateOf returns the Date header for t, formatted once a second. The
// handler sets it from the clock reading it took the request up with;
// net/http would otherwise read the clock again and format the date for
// every answer.
func (h *Handler) dateOf(t time.Time) []string {
	sec := t.Unix()
	if d := h.date.Load(); d != nil && d.sec == sec {
		return d.value
	}
	d := &date{sec: sec, value: []string{t.UTC().Format(http.TimeFormat)}}
	h.date.Store(d)
	return d.value
}

// StatusDrop, returned by Hooks.Admit, sends no answer at all: the
// connection is held silent until the client gives up, as if the response
// had been lost on the way (a token beyond the hop limit).
const StatusDrop = -1

// dropHold is how long a dropped request's connection is held open, and
// maxHeld how many are held at once: past that, a dropped request's
// connection is closed at once, so a caller beyond the hop limit cannot
// pin down the agent's file descriptors.
const (
	dropHold = 10 * time.Second
	maxHeld  = 256
)

func (h *Handler) refuse(w http.ResponseWriter, req *Request, status int, reason Reason) {
	if status == StatusDrop {
		h.drop(w, req, reason)
		return
	}
	req.Reason = reason
	b := errorPages[status]
	h.header(w, req, textHTML, len(b.Bytes), b.ContentLength)
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes)
	h.hooks.Served(req, status)
}

func (h *Handler) drop(w http.ResponseWriter, req *Request, reason Reason) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		h.refuse(w, req, http.StatusForbidden, reason)
		return
	}
	req.Reason = reason
	h.hooks.Served(req, 0)
	if h.held.Add(1) > maxHeld {
		h.held.Add(-1)
		conn.Close()
		return
	}
	go func() {
		defer h.held.Add(-1)
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(dropHold))
		_, _ = io.Copy(io.Discard, conn)
	}()
}

// collapseSlashes replaces each run of slashes with one, so that
// "//latest/meta-data" (an endpoint written with a trailing slash) is served
// as "/latest/meta-data". It never redirects: SDKs do not follow redirects.
func collapseSlashes(p string) string {
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && i > 0 && p[i-1] == '/' {
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

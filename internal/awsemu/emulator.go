// Package awsemu is a small AWS emulator for STS (AssumeRole,
// GetCallerIdentity) and IAM (GetInstanceProfile) that verifies SigV4
// signatures with the SDK's own signer. It backs `imds-agent dev` and the
// tests, which also use it to inject faults: throttling, 5xx, stalls and
// refusals.
package awsemu

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// User is an IAM user with a long-term access key: the source credentials
// of a host.
type User struct {
	Account         string
	Name            string
	AccessKeyID     string
	SecretAccessKey string
}

// NewUser returns a user with a fresh random access key.
func NewUser(account, name string) User {
	return User{Account: account, Name: name, AccessKeyID: "AKIA" + randomID(16), SecretAccessKey: randomSecret(30)}
}

// ARN returns the user's ARN.
func (u User) ARN() string { return fmt.Sprintf("arn:aws:iam::%s:user/%s", u.Account, u.Name) }

// Role is an IAM role.
type Role struct {
	Account string
	Name    string
	// MaxSession is the role's maximum session duration (default 1h).
	MaxSession time.Duration
	// Trusted lists the principal ARNs its trust policy allows; empty
	// trusts every user of the role's account.
	Trusted []string
	// ExternalID, when set, must be presented by AssumeRole.
	ExternalID string
	// IssueFor, when set, is the lifetime of every credential issued,
	// whatever was asked (STS caps chained sessions this way).
	IssueFor time.Duration
}

// ARN returns the role's ARN.
func (r Role) ARN() string { return fmt.Sprintf("arn:aws:iam::%s:role/%s", r.Account, r.Name) }

// InstanceProfile is an IAM instance profile holding at most one role.
type InstanceProfile struct {
	Account string
	Name    string
	Role    string // role name; "" for none
}

// ARN returns the instance profile's ARN.
func (p InstanceProfile) ARN() string {
	return fmt.Sprintf("arn:aws:iam::%s:instance-profile/%s", p.Account, p.Name)
}

// Fault is an injected answer to one call.
type Fault struct {
	// Status is the HTTP status; 0 means 400 with a Code (AWS's client
	// errors, throttling among them) and 500 without.
	Status  int
	Code    string // AWS error code, e.g. Throttling; "" for InternalFailure
	Message string
	// Hang holds the request until the client gives up (or Release).
	Hang bool
}

// apiError is the error response f stands for.
func (f *Fault) apiError() *apiError {
	a := &apiError{status: f.Status, code: f.Code, message: f.Message}
	switch {
	case a.status == 0 && a.code != "":
		a.status = http.StatusBadRequest
	case a.status == 0:
		a.status = http.StatusInternalServerError
	}
	if a.code == "" {
		a.code = "InternalFailure"
	}
	return a
}

// Injector decides, per call, whether to inject a fault. action is e.g.
// "AssumeRole"; a nil result serves the call normally.
type Injector func(action string) *Fault

// Session is a set of temporary credentials the emulator issued.
type Session struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
	AssumedRoleARN  string // arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION
	AssumedRoleID   string // AROA…:SESSION: the role's unique id (as IAM gives it) and the session name
	Account         string
}

// Emulator is an http.Handler serving STS and IAM.
type Emulator struct {
	now func() time.Time
	log *slog.Logger

	mu       sync.Mutex
	users    map[string]User // by access key id
	roles    map[string]Role // by name
	profiles map[string]InstanceProfile
	sessions map[string]Session // by access key id
	calls    map[string]int
	inject   Injector
	release  chan struct{}
	skew     time.Duration // STS's wall clock minus the host's
}

// New returns an empty emulator. now is the emulator's clock (STS's clock:
// it sets expirations and checks signature times).
func New(now func() time.Time, log *slog.Logger) *Emulator {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Emulator{
		now:      now,
		log:      log,
		users:    map[string]User{},
		roles:    map[string]Role{},
		profiles: map[string]InstanceProfile{},
		sessions: map[string]Session{},
		calls:    map[string]int{},
		release:  make(chan struct{}),
	}
}

// AddUser adds a user and its access key.
func (e *Emulator) AddUser(u User) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.users[u.AccessKeyID] = u
}

// RemoveUser deletes the user owning an access key (the key stops working).
func (e *Emulator) RemoveUser(accessKeyID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.users, accessKeyID)
}

// PutRole adds or replaces a role.
func (e *Emulator) PutRole(r Role) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if r.MaxSession == 0 {
		r.MaxSession = time.Hour
	}
	e.roles[r.Name] = r
}

// DeleteRole removes a role.
func (e *Emulator) DeleteRole(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.roles, name)
}

// PutInstanceProfile adds or replaces an instance profile.
func (e *Emulator) PutInstanceProfile(p InstanceProfile) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.profiles[p.Name] = p
}

// DeleteInstanceProfile removes an instance profile: IAM then answers
// NoSuchEntity for it.
func (e *Emulator) DeleteInstanceProfile(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.profiles, name)
}

// Inject sets the fault injector; nil serves everything normally.
func (e *Emulator) Inject(f Injector) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.inject = f
}

// SetClockSkew makes STS's wall clock run d ahead of the host's (behind,
// for a negative d): signatures are judged by it and responses carry it in
// their Date header, as a real endpoint's would when the host's clock is
// off.
func (e *Emulator) SetClockSkew(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.skew = d
}

// wallClock is STS's real-time clock (now may be simulated).
func (e *Emulator) wallClock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return time.Now().Add(e.skew)
}

// Release ends every hanging request.
func (e *Emulator) Release() {
	e.mu.Lock()
	defer e.mu.Unlock()
	close(e.release)
	e.release = make(chan struct{})
}

// Calls returns how many calls of action were received (faulted ones
// included).
func (e *Emulator) Calls(action string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls[action]
}

// Sessions returns the temporary credentials issued so far that have not
// expired.
func (e *Emulator) Sessions() []Session {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Session, 0, len(e.sessions))
	for _, s := range e.sessions {
		out = append(out, s)
	}
	return out
}

// apiError is an AWS error response.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

// ServeHTTP implements http.Handler.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "reading body", http.StatusBadRequest)
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil || r.Method != http.MethodPost {
		e.writeError(w, "sts", errorf(400, "InvalidAction", "expected a POST of the AWS query protocol"))
		return
	}
	w.Header().Set("Date", e.wallClock().UTC().Format(http.TimeFormat))
	action := form.Get("Action")
	service := "sts"
	if action == "GetInstanceProfile" {
		service = "iam"
	}
	e.mu.Lock()
	e.calls[action]++
	inject, release := e.inject, e.release
	e.mu.Unlock()
	if inject != nil {
		if f := inject(action); f != nil {
			if f.Hang {
				select {
				case <-r.Context().Done():
				case <-release:
				}
				return
			}
			e.writeError(w, service, f.apiError())
			return
		}
	}
	caller, aerr := e.authenticate(r, body, service)
	if aerr != nil {
		e.writeError(w, service, aerr)
		return
	}
	var out any
	switch action {
	case "AssumeRole":
		out, aerr = e.assumeRole(caller, form)
	case "GetCallerIdentity":
		out = getCallerIdentityResponse{Result: callerIdentity{Arn: caller.arn, UserID: caller.userID, Account: caller.account}}
	case "GetInstanceProfile":
		out, aerr = e.getInstanceProfile(caller, form)
	default:
		aerr = errorf(400, "InvalidAction", "Could not find operation %s", action)
	}
	if aerr != nil {
		e.writeError(w, service, aerr)
		return
	}
	e.writeXML(w, http.StatusOK, out)
}

// caller is an authenticated principal.
type caller struct {
	arn, userID, account string
	session              bool // temporary credentials
}

// authenticate verifies the request's SigV4 signature by signing the same
// request again, with the SDK's signer, under the secret the emulator holds
// for the access key.
func (e *Emulator) authenticate(r *http.Request, body []byte, service string) (caller, *apiError) {
	auth := r.Header.Get("Authorization")
	const algo = "AWS4-HMAC-SHA256 "
	if !strings.HasPrefix(auth, algo) {
		return caller{}, errorf(400, "MissingAuthenticationToken", "Request is missing Authentication Token")
	}
	fields := map[string]string{}
	for _, part := range strings.Split(auth[len(algo):], ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		fields[k] = v
	}
	scope := strings.Split(fields["Credential"], "/")
	if len(scope) != 5 || scope[4] != "aws4_request" {
		return caller{}, errorf(400, "IncompleteSignature", "Credential scope is malformed")
	}
	keyID, region, svc := scope[0], scope[2], scope[3]
	if svc != service {
		return caller{}, errorf(400, "SignatureDoesNotMatch", "Credential should be scoped to correct service: '%s'", service)
	}
	signingTime, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil {
		return caller{}, errorf(400, "IncompleteSignature", "X-Amz-Date is missing or malformed")
	}
	// Signatures are dated by the signer's real clock; STS's own clock (now)
	// may be simulated, so freshness is judged on the real one.
	wall := e.wallClock()
	switch d := wall.Sub(signingTime); {
	case d > 15*time.Minute:
		return caller{}, errorf(403, "SignatureDoesNotMatch", "Signature expired: %s is now earlier than %s", signingTime.Format("20060102T150405Z"), wall.UTC().Add(-15*time.Minute).Format("20060102T150405Z"))
	case d < -15*time.Minute:
		return caller{}, errorf(403, "SignatureDoesNotMatch", "Signature not yet current: %s is still later than %s", signingTime.Format("20060102T150405Z"), wall.UTC().Add(15*time.Minute).Format("20060102T150405Z"))
	}
	now := e.now()

	e.mu.Lock()
	user, isUser := e.users[keyID]
	sess, isSession := e.sessions[keyID]
	e.mu.Unlock()
	var creds aws.Credentials
	var who caller
	switch {
	case isUser:
		creds = aws.Credentials{AccessKeyID: keyID, SecretAccessKey: user.SecretAccessKey}
		who = caller{arn: user.ARN(), userID: "AIDA" + keyID[4:], account: user.Account}
	case isSession:
		if !now.Before(sess.Expiration) {
			return caller{}, errorf(400, "ExpiredToken", "The security token included in the request is expired")
		}
		if r.Header.Get("X-Amz-Security-Token") != sess.SessionToken {
			return caller{}, errorf(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
		}
		creds = aws.Credentials{AccessKeyID: keyID, SecretAccessKey: sess.SecretAccessKey, SessionToken: sess.SessionToken}
		who = caller{arn: sess.AssumedRoleARN, userID: sess.AssumedRoleID, account: sess.Account, session: true}
	default:
		return caller{}, errorf(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
	}

	// Rebuild the request from exactly the headers the client signed.
	check, err := http.NewRequest(r.Method, "http://"+r.Host+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return caller{}, errorf(400, "IncompleteSignature", "unparseable request")
	}
	check.Host = r.Host
	check.ContentLength = 0
	for _, h := range strings.Split(fields["SignedHeaders"], ";") {
		switch h {
		case "host":
		case "content-length":
			check.ContentLength = int64(len(body))
		default:
			for _, v := range r.Header.Values(h) {
				check.Header.Add(h, v)
			}
		}
	}
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, check, hex.EncodeToString(sum[:]), service, region, signingTime); err != nil {
		return caller{}, errorf(500, "InternalFailure", "signing: %v", err)
	}
	if check.Header.Get("Authorization") != auth {
		return caller{}, errorf(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")
	}
	return who, nil
}

func (e *Emulator) assumeRole(c caller, form url.Values) (any, *apiError) {
	roleARN := form.Get("RoleArn")
	session := form.Get("RoleSessionName")
	if l := len(session); l < 2 || l > 64 {
		return nil, errorf(400, "ValidationError", "1 validation error detected: Value '%s' at 'roleSessionName' failed to satisfy constraint: Member must have length between 2 and 64", session)
	}
	duration := time.Hour
	if v := form.Get("DurationSeconds"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 900 || n > 43200 {
			return nil, errorf(400, "ValidationError", "1 validation error detected: Value '%s' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 43200", v)
		}
		duration = time.Duration(n) * time.Second
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var role Role
	found := false
	for _, r := range e.roles {
		if r.ARN() == roleARN {
			role, found = r, true
		}
	}
	notAuthorized := errorf(403, "AccessDenied", "User: %s is not authorized to perform: sts:AssumeRole on resource: %s", c.arn, roleARN)
	if !found {
		return nil, notAuthorized
	}
	if len(role.Trusted) > 0 {
		ok := false
		for _, t := range role.Trusted {
			ok = ok || t == c.arn
		}
		if !ok {
			return nil, notAuthorized
		}
	} else if role.Account != c.account {
		return nil, notAuthorized
	}
	if role.ExternalID != "" && form.Get("ExternalId") != role.ExternalID {
		return nil, notAuthorized
	}
	limit := role.MaxSession
	if c.session {
		limit = time.Hour // role chaining
	}
	if duration > limit {
		return nil, errorf(400, "ValidationError", "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.")
	}
	if role.IssueFor > 0 {
		duration = role.IssueFor
	}
	now := e.now()
	s := Session{
		AccessKeyID:     "ASIA" + randomID(16),
		SecretAccessKey: randomSecret(30),
		SessionToken:    randomSecret(360),
		Expiration:      now.Add(duration).Truncate(time.Second),
		AssumedRoleARN:  fmt.Sprintf("arn:aws:sts::%s:assumed-role/%s/%s", role.Account, role.Name, session),
		AssumedRoleID:   "AROA" + hashID(role.ARN()) + ":" + session,
		Account:         role.Account,
	}
	for k, old := range e.sessions { // forget expired sessions
		if !now.Before(old.Expiration) {
			delete(e.sessions, k)
		}
	}
	e.sessions[s.AccessKeyID] = s
	e.log.Debug("AssumeRole", "caller", c.arn, "role", roleARN, "session", session, "duration", duration)
	return assumeRoleResponse{Result: assumeRoleResult{
		Credentials: stsCredentials{
			AccessKeyID:     s.AccessKeyID,
			SecretAccessKey: s.SecretAccessKey,
			SessionToken:    s.SessionToken,
			Expiration:      s.Expiration.UTC().Format(time.RFC3339),
		},
		AssumedRoleUser: assumedRoleUser{Arn: s.AssumedRoleARN, AssumedRoleID: s.AssumedRoleID},
	}}, nil
}

func (e *Emulator) getInstanceProfile(c caller, form url.Values) (any, *apiError) {
	name := form.Get("InstanceProfileName")
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.profiles[name]
	if !ok || p.Account != c.account {
		return nil, errorf(404, "NoSuchEntity", "Instance Profile %s cannot be found.", name)
	}
	out := instanceProfile{
		Path:                "/",
		InstanceProfileName: p.Name,
		InstanceProfileID:   "AIPA" + hashID(p.ARN()),
		Arn:                 p.ARN(),
		CreateDate:          "2026-01-01T00:00:00Z",
	}
	if r, ok := e.roles[p.Role]; ok && p.Role != "" {
		out.Roles = []role{{Path: "/", RoleName: r.Name, RoleID: "AROA" + hashID(r.ARN()), Arn: r.ARN(), CreateDate: "2026-01-01T00:00:00Z"}}
	}
	return getInstanceProfileResponse{Result: getInstanceProfileResult{InstanceProfile: out}}, nil
}

func (e *Emulator) writeError(w http.ResponseWriter, service string, err *apiError) {
	kind := "Sender"
	if err.status >= 500 {
		kind = "Receiver"
	}
	e.writeXML(w, err.status, errorResponse{
		XMLNS:     namespace(service),
		Error:     errorBody{Type: kind, Code: err.code, Message: err.message},
		RequestID: randomRequestID(),
	})
}

func (e *Emulator) writeXML(w http.ResponseWriter, status int, v any) {
	switch r := v.(type) {
	case assumeRoleResponse:
		r.XMLNS, r.Metadata.RequestID = namespace("sts"), randomRequestID()
		v = r
	case getCallerIdentityResponse:
		r.XMLNS, r.Metadata.RequestID = namespace("sts"), randomRequestID()
		v = r
	case getInstanceProfileResponse:
		r.XMLNS, r.Metadata.RequestID = namespace("iam"), randomRequestID()
		v = r
	}
	out, err := xml.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(out)
}

func namespace(service string) string {
	if service == "iam" {
		return "https://iam.amazonaws.com/doc/2010-05-08/"
	}
	return "https://sts.amazonaws.com/doc/2011-06-15/"
}

// Server is a running emulator on a loopback port.
type Server struct {
	*Emulator
	URL string
	srv *http.Server
	ln  net.Listener
}

// Start serves e on an ephemeral port of 127.0.0.1 until Close.
func Start(e *Emulator) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("awsemu: listening: %w", err)
	}
	s := &Server{Emulator: e, URL: "http://" + ln.Addr().String(), ln: ln,
		srv: &http.Server{Handler: e, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// Close stops the server, ending hanging requests.
func (s *Server) Close() error {
	s.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return s.srv.Close()
	}
	return err
}

const idAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = idAlphabet[int(b[i])%len(idAlphabet)]
	}
	return string(b)
}

func randomSecret(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func hashID(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	b := make([]byte, 17)
	for i := range b {
		b[i] = idAlphabet[int(sum[i])%len(idAlphabet)]
	}
	return string(b)
}

func randomRequestID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

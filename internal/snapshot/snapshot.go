// Package snapshot owns the immutable credential snapshot: everything the
// metadata handler serves about the instance's role, rendered to response
// bytes once per change so that serving it costs no work and no lock. The
// refresher builds snapshots and swaps them in atomically; readers hold on to
// whichever one they loaded.
package snapshot

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
)

// State says what the metadata service can answer about the role.
type State uint8

const (
	// NoRole: no instance profile or role is attached, or the profile has
	// no role. EC2 answers 404 on the iam paths.
	NoRole State = iota
	// Pending: a role is configured but no credentials were obtained yet.
	// The credential paths answer 503.
	Pending
	// Ready: credentials exist. They may have expired if refreshing has
	// failed for long enough; they are still served with their true
	// expiration so SDKs apply their static-stability rules.
	Ready
)

func (s State) String() string {
	switch s {
	case NoRole:
		return "no-role"
	case Pending:
		return "pending"
	case Ready:
		return "ready"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Role identifies the role being served and the instance profile it came
// from.
type Role struct {
	Name       string
	ARN        string
	AccountID  string
	ProfileARN string
	ProfileID  string
}

// Credentials are temporary role credentials.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
}

// Body is a pre-rendered response body and its Content-Length value.
type Body struct {
	Bytes         []byte
	ContentLength []string
}

// NewBody wraps b with its Content-Length.
func NewBody(b []byte) Body {
	return Body{Bytes: b, ContentLength: []string{strconv.Itoa(len(b))}}
}

// Snapshot is one immutable view of the role and its credentials. Fields
// must not be modified after the snapshot is published.
type Snapshot struct {
	State State
	Role  Role
	// RoleListing is the body of iam/security-credentials/: the role name.
	RoleListing Body
	// Expiration and LastUpdated describe the served credentials (Ready).
	Expiration  time.Time
	LastUpdated time.Time
	// KeySuffix is the last four characters of the access key id, the most
	// of it that may be logged.
	KeySuffix string
	// Credentials and Extended are the two credential documents (Ready).
	Credentials Body
	Extended    Body
	// Info is the iam/info document saying Success. Failure is the iam/info
	// document served once the credentials have expired or, while Pending,
	// once obtaining them has failed; its Code names the failure.
	Info    Body
	Failure Body
	// FailureCode is the Code in Failure, "" while nothing has failed.
	FailureCode string
}

// Expired reports whether the served credentials have expired at now.
func (s *Snapshot) Expired(now time.Time) bool {
	return s.State == Ready && !now.Before(s.Expiration)
}

// None is the snapshot of an instance without a role.
func None() *Snapshot { return &Snapshot{State: NoRole} }

// NewPending is the snapshot of a role whose credentials are not yet known.
// role.Name may be empty while the instance profile is being resolved.
func NewPending(role Role) *Snapshot {
	s := &Snapshot{State: Pending, Role: role}
	if role.Name != "" {
		s.RoleListing = NewBody([]byte(role.Name))
	}
	return s
}

// New renders a Ready snapshot for creds obtained at updated.
func New(role Role, creds Credentials, updated time.Time) *Snapshot {
	s := &Snapshot{
		State:       Ready,
		Role:        role,
		RoleListing: NewBody([]byte(role.Name)),
		Expiration:  creds.Expiration,
		LastUpdated: updated,
		KeySuffix:   Suffix(creds.AccessKeyID),
	}
	doc := credentialDocument{
		Code:            "Success",
		LastUpdated:     Timestamp(updated),
		Type:            "AWS-HMAC",
		AccessKeyID:     creds.AccessKeyID,
		SecretAccessKey: creds.SecretAccessKey,
		Token:           creds.SessionToken,
		Expiration:      Timestamp(creds.Expiration),
	}
	s.Credentials = NewBody(marshal(doc))
	s.Extended = NewBody(marshal(extendedDocument{credentialDocument: doc, AccountID: role.AccountID}))
	s.Info = NewBody(marshal(infoDocument{
		Code:               "Success",
		LastUpdated:        Timestamp(updated),
		InstanceProfileArn: role.ProfileARN,
		InstanceProfileID:  role.ProfileID,
	}))
	return s
}

// WithFailure returns a copy of s whose Failure document carries code and
// message, for a refresh that failed at when. The credentials are kept.
func (s *Snapshot) WithFailure(code, message string, when time.Time) *Snapshot {
	c := *s
	c.FailureCode = code
	c.Failure = NewBody(marshal(failureDocument{
		Code:               code,
		Message:            message,
		LastUpdated:        Timestamp(when),
		InstanceProfileArn: s.Role.ProfileARN,
		InstanceProfileID:  s.Role.ProfileID,
	}))
	return &c
}

// Timestamp formats t as EC2 does: UTC, whole seconds, a literal Z.
func Timestamp(t time.Time) string {
	return t.UTC().Truncate(time.Second).Format("2006-01-02T15:04:05Z")
}

// Suffix returns the last four characters of an access key id: as much of
// it as logs and status output may show.
func Suffix(keyID string) string {
	if len(keyID) <= 4 {
		return keyID
	}
	return keyID[len(keyID)-4:]
}

type credentialDocument struct {
	Code            string `json:"Code"`
	LastUpdated     string `json:"LastUpdated"`
	Type            string `json:"Type"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
	Expiration      string `json:"Expiration"`
}

type extendedDocument struct {
	credentialDocument
	AccountID string `json:"AccountId"`
}

type infoDocument struct {
	Code               string `json:"Code"`
	LastUpdated        string `json:"LastUpdated"`
	InstanceProfileArn string `json:"InstanceProfileArn"`
	InstanceProfileID  string `json:"InstanceProfileId"`
}

type failureDocument struct {
	Code               string `json:"Code"`
	Message            string `json:"Message"`
	LastUpdated        string `json:"LastUpdated"`
	InstanceProfileArn string `json:"InstanceProfileArn,omitempty"`
	InstanceProfileID  string `json:"InstanceProfileId,omitempty"`
}

// marshal renders v as compact JSON without HTML escaping and without the
// encoder's trailing newline: bodies end exactly where EC2's do.
func marshal(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only strings and embedded structs are encoded; this cannot fail.
		panic("snapshot: encoding a fixed document: " + err.Error())
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

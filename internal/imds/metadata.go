package imds

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/imds-agent/imds-agent/internal/snapshot"
)

// Instance is what the host presents itself as.
type Instance struct {
	ID               string
	Region           string
	AvailabilityZone string
	Type             string
	AMIID            string
	// AccountID is used in the identity document when no role says which
	// account the instance belongs to.
	AccountID     string
	Hostname      string
	LocalHostname string
	LocalIPv4     string
	MAC           string
	Architecture  string
	PendingTime   time.Time
	// UserData is served at user-data when not empty (EC2 has no empty
	// user data: without any, user-data is not listed and is a 404).
	UserData []byte
}

// Options are EC2's instance metadata options.
type Options struct {
	Enabled        bool // http_endpoint
	TokensRequired bool // http_tokens
	HopLimit       int  // http_put_response_hop_limit
}

// versions are the metadata API versions EC2 lists at "/", oldest first.
// Each is served like "latest".
var versions = [...]string{
	"1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15",
	"2008-02-01", "2008-09-01", "2009-04-04", "2011-01-01", "2011-05-01",
	"2012-01-12", "2014-02-25", "2014-11-05", "2015-10-20", "2016-04-19",
	"2016-06-30", "2016-09-02", "2018-03-28", "2018-08-17", "2018-09-24",
	"2019-10-01", "2020-10-27", "2021-01-03", "2021-03-23", "2021-07-15",
	"2022-09-24", "latest",
}

// Metadata is an immutable metadata tree with its options; the handler
// serves one and a reload swaps in another.
type Metadata struct {
	opts     Options
	instance Instance

	versions     body // "/"
	root         body // "/latest/"
	metaNoIAM    body // meta-data/ without iam/ (no role attached)
	metaWithIAM  body // meta-data/ with iam/
	iamListing   body
	dynamic      body
	identityList body
	files        map[string]body // static leaves and listings, by path below the version
	// identity caches the identity document for the account it names.
	identity atomic.Pointer[identityBody]
}

type identityBody struct {
	account string
	body    body
}

// body is a response body with its pre-rendered Content-Length.
type body = snapshot.Body

func newBody(s string) body { return snapshot.NewBody([]byte(s)) }

func bodyOf(b []byte) body { return snapshot.NewBody(b) }

func listing(entries ...string) body { return newBody(strings.Join(entries, "\n")) }

// NewMetadata renders the tree for an instance.
func NewMetadata(in Instance, opts Options) *Metadata {
	m := &Metadata{opts: opts, instance: in}
	m.versions = listing(versions[:]...)
	// EC2 has no user data rather than an empty one: an empty body is
	// never a 200.
	hasUserData := len(in.UserData) > 0
	if hasUserData {
		m.root = listing("dynamic", "meta-data", "user-data")
	} else {
		m.root = listing("dynamic", "meta-data")
	}
	// In EC2's order: sorted.
	entries := []string{"ami-id", "hostname", "instance-id", "instance-type", "local-hostname", "local-ipv4", "mac", "placement/"}
	m.metaNoIAM = listing(entries...)
	withIAM := append([]string{"iam/"}, entries...)
	slices.Sort(withIAM)
	m.metaWithIAM = listing(withIAM...)
	m.iamListing = listing("info", "security-credentials/")
	m.dynamic = listing("instance-identity/")
	m.identityList = listing("document")
	m.files = map[string]body{
		"meta-data/ami-id":                      newBody(in.AMIID),
		"meta-data/hostname":                    newBody(in.Hostname),
		"meta-data/instance-id":                 newBody(in.ID),
		"meta-data/instance-type":               newBody(in.Type),
		"meta-data/local-hostname":              newBody(in.LocalHostname),
		"meta-data/local-ipv4":                  newBody(in.LocalIPv4),
		"meta-data/mac":                         newBody(in.MAC),
		"meta-data/placement":                   listing("availability-zone", "region"),
		"meta-data/placement/availability-zone": newBody(in.AvailabilityZone),
		"meta-data/placement/region":            newBody(in.Region),
		"dynamic":                               m.dynamic,
		"dynamic/instance-identity":             m.identityList,
	}
	if hasUserData {
		m.files["user-data"] = bodyOf(in.UserData)
	}
	return m
}

// Versions returns the metadata API versions served, oldest first.
func Versions() []string { return versions[:] }

// Options returns the metadata options this tree is served with.
func (m *Metadata) Options() Options { return m.opts }

// Instance returns the instance this tree describes.
func (m *Metadata) Instance() Instance { return m.instance }

// identityDocument returns the instance identity document naming account.
func (m *Metadata) identityDocument(account string) body {
	if c := m.identity.Load(); c != nil && c.account == account {
		return c.body
	}
	in := m.instance
	doc := identityDocument{
		AccountID:        account,
		Architecture:     in.Architecture,
		AvailabilityZone: in.AvailabilityZone,
		ImageID:          in.AMIID,
		InstanceID:       in.ID,
		InstanceType:     in.Type,
		PendingTime:      in.PendingTime.UTC().Truncate(time.Second).Format("2006-01-02T15:04:05Z"),
		PrivateIP:        in.LocalIPv4,
		Region:           in.Region,
		Version:          "2017-09-30",
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(doc) // strings and nulls only
	c := &identityBody{account: account, body: bodyOf(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))}
	m.identity.Store(c)
	return c.body
}

// identityDocument is EC2's instance identity document, fields in EC2's
// order; the null fields are null on EC2 for most instances too.
type identityDocument struct {
	AccountID               string   `json:"accountId"`
	Architecture            string   `json:"architecture"`
	AvailabilityZone        string   `json:"availabilityZone"`
	BillingProducts         []string `json:"billingProducts"`
	DevpayProductCodes      []string `json:"devpayProductCodes"`
	MarketplaceProductCodes []string `json:"marketplaceProductCodes"`
	ImageID                 string   `json:"imageId"`
	InstanceID              string   `json:"instanceId"`
	InstanceType            string   `json:"instanceType"`
	KernelID                *string  `json:"kernelId"`
	PendingTime             string   `json:"pendingTime"`
	PrivateIP               string   `json:"privateIp"`
	RamdiskID               *string  `json:"ramdiskId"`
	Region                  string   `json:"region"`
	Version                 string   `json:"version"`
}

var versionSet = func() map[string]bool {
	s := make(map[string]bool, len(versions))
	for _, v := range versions {
		s[v] = true
	}
	return s
}()

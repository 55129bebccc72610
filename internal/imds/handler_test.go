package imds

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/imds-agent/imds-agent/internal/snapshot"
)

var (
	testNow      = time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)
	testInstance = Instance{
		ID:               "i-0123456789abcdef0",
		Region:           "eu-west-1",
		AvailabilityZone: "eu-west-1a",
		Type:             "m5.large",
		AMIID:            "ami-0123456789abcdef0",
		Hostname:         "ip-10-0-0-5.eu-west-1.compute.internal",
		LocalHostname:    "ip-10-0-0-5.eu-west-1.compute.internal",
		LocalIPv4:        "10.0.0.5",
		MAC:              "0e:12:34:56:78:9a",
		Architecture:     "x86_64",
		PendingTime:      time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC),
	}
	testRole = snapshot.Role{
		Name:       "web",
		ARN:        "arn:aws:iam::123456789012:role/web",
		AccountID:  "123456789012",
		ProfileARN: "arn:aws:iam::123456789012:instance-profile/web",
		ProfileID:  "AIPAEXAMPLEPROFILE01",
	}
	testCreds = snapshot.Credentials{
		AccessKeyID:     "ASIAEXAMPLEKEY000001",
		SecretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
		SessionToken:    "IQoJb3JpZ2luX2VjEXAMPLETOKEN+/=",
		Expiration:      time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC),
	}
	testUpdated = time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC)
)

const (
	credsJSON    = `{"Code":"Success","LastUpdated":"2026-11-27T03:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAEXAMPLEKEY000001","SecretAccessKey":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY","Token":"IQoJb3JpZ2luX2VjEXAMPLETOKEN+/=","Expiration":"2026-11-27T09:00:00Z"}`
	extendedJSON = `{"Code":"Success","LastUpdated":"2026-11-27T03:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAEXAMPLEKEY000001","SecretAccessKey":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY","Token":"IQoJb3JpZ2luX2VjEXAMPLETOKEN+/=","Expiration":"2026-11-27T09:00:00Z","AccountId":"123456789012"}`
	infoJSON     = `{"Code":"Success","LastUpdated":"2026-11-27T03:00:00Z","InstanceProfileArn":"arn:aws:iam::123456789012:instance-profile/web","InstanceProfileId":"AIPAEXAMPLEPROFILE01"}`
	identityJSON = `{"accountId":"123456789012","architecture":"x86_64","availabilityZone":"eu-west-1a","billingProducts":null,"devpayProductCodes":null,"marketplaceProductCodes":null,"imageId":"ami-0123456789abcdef0","instanceId":"i-0123456789abcdef0","instanceType":"m5.large","kernelId":null,"pendingTime":"2026-11-27T00:00:00Z","privateIp":"10.0.0.5","ramdiskId":null,"region":"eu-west-1","version":"2017-09-30"}`
	metaListing  = "ami-id\nhostname\niam/\ninstance-id\ninstance-type\nlocal-hostname\nlocal-ipv4\nmac\nplacement/"
)

type fakeCreds struct {
	p atomic.Pointer[snapshot.Snapshot]
}

func (f *fakeCreds) Snapshot() *snapshot.Snapshot { return f.p.Load() }

type fixture struct {
	t      testing.TB
	srv    *httptest.Server // started by the first do
	h      *Handler
	tokens *Tokens
	creds  *fakeCreds
	now    *atomic.Pointer[time.Time]
}

func newFixture(t testing.TB, opts Options, in Instance) *fixture {
	t.Helper()
	f := &fixture{t: t, creds: &fakeCreds{}, now: &atomic.Pointer[time.Time]{}}
	now := testNow
	f.now.Store(&now)
	clock := func() time.Time { return *f.now.Load() }
	var err error
	f.tokens, err = NewTokens(clock)
	if err != nil {
		t.Fatal(err)
	}
	f.creds.p.Store(snapshot.New(testRole, testCreds, testUpdated))
	f.h = NewHandler(NewMetadata(in, opts), f.creds, f.tokens, clock, nil)
	return f
}

func (f *fixture) advance(d time.Duration) {
	n := f.now.Load().Add(d)
	f.now.Store(&n)
}

// do sends a request to the handler through a real server on loopback and
// returns the answer as a client reads it: what net/http adds to the
// handler's answer (its Content-Length for a short body) is part of it.
// The request goes out as written, so "//x" stays a path.
func (f *fixture) do(method, path string, hdr map[string]string) (*http.Response, string) {
	if f.srv == nil {
		f.srv = httptest.NewServer(f.h)
		f.t.Cleanup(f.srv.Close)
	}
	failed := func(err error) (*http.Response, string) {
		// Errorf, not Fatalf: do runs on subtests' goroutines too.
		f.t.Errorf("%s %s: %v", method, path, err)
		return &http.Response{Header: http.Header{}}, ""
	}
	c, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		return failed(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	b.WriteString(method + " " + path + " HTTP/1.1\r\nHost: 169.254.169.254\r\n")
	for k, v := range hdr {
		b.WriteString(k + ": " + v + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		return failed(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		return failed(err)
	}
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return failed(err)
	}
	return res, string(body)
}

func (f *fixture) token(t testing.TB) string {
	t.Helper()
	res, body := f.do(http.MethodPut, "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
	if res.StatusCode != http.StatusOK {
		t.Fatalf("token PUT: %d %s", res.StatusCode, body)
	}
	return body
}

var (
	required = Options{Enabled: true, TokensRequired: true, HopLimit: 1}
	optional = Options{Enabled: true, TokensRequired: false, HopLimit: 1}
	tokenRe  = regexp.MustCompile(`^[A-Za-z0-9_-]{56}$`)
)

func page(status int) string { return string(errorPages[status].Bytes) }

// TestTokenAPI covers the token rows of imds-contract.md.
func TestTokenAPI(t *testing.T) {
	f := newFixture(t, required, testInstance)
	res, body := f.do(http.MethodPut, "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
	if res.StatusCode != 200 || !tokenRe.MatchString(body) {
		t.Fatalf("PUT token: %d %q", res.StatusCode, body)
	}
	if got := res.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"); got != "21600" {
		t.Errorf("TTL echo = %q, want 21600", got)
	}
	if got := res.Header.Get("Content-Type"); got != "text/plain" {
		t.Errorf("Content-Type = %q", got)
	}
	if got := res.Header.Get("Content-Length"); got != "56" {
		t.Errorf("Content-Length = %q", got)
	}

	for _, tc := range []struct {
		name   string
		method string
		path   string
		hdr    map[string]string
		status int
	}{
		{"ttl 1", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "1"}, 200},
		{"ttl max", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "21600"}, 200},
		{"ttl missing", "PUT", "/latest/api/token", nil, 400},
		{"ttl empty", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": ""}, 400},
		{"ttl not a number", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "ten"}, 400},
		{"ttl fraction", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "1.5"}, 400},
		{"ttl zero", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "0"}, 400},
		{"ttl negative", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "-1"}, 400},
		{"ttl too long", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "21601"}, 400},
		{"ttl huge", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "99999999999999999999"}, 400},
		{"ttl with leading zeros", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "000060"}, 200},
		{"ttl zeros only", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "000"}, 400},
		{"x-forwarded-for", "PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.1"}, 403},
		{"versioned token path", "PUT", "/2021-03-23/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"}, 403},
		{"GET token path", "GET", "/latest/api/token", nil, 405},
		{"POST token path", "POST", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"}, 405},
		{"DELETE token path", "DELETE", "/latest/api/token", nil, 405},
		{"PUT metadata", "PUT", "/latest/meta-data/", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"}, 405},
		{"POST metadata", "POST", "/latest/meta-data/instance-id", nil, 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, body := f.do(tc.method, tc.path, tc.hdr)
			if res.StatusCode != tc.status {
				t.Fatalf("status = %d, want %d (body %q)", res.StatusCode, tc.status, body)
			}
			if tc.status != 200 {
				if body != page(tc.status) || res.Header.Get("Content-Type") != "text/html" {
					t.Errorf("error body/type = %q %q, want EC2's %d page", res.Header.Get("Content-Type"), body, tc.status)
				}
			}
			if tc.status == 405 && res.Header.Get("Allow") == "" {
				t.Errorf("405 without Allow")
			}
			if want := tc.hdr["X-aws-ec2-metadata-token-ttl-seconds"]; tc.status == 200 && res.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") != strings.TrimLeft(want, "0") {
				t.Errorf("TTL echoed as %q for %q, want N", res.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"), want)
			}
		})
	}
}

func TestTokenRules(t *testing.T) {
	for _, mode := range []struct {
		name    string
		opts    Options
		noToken int
	}{{"required", required, 401}, {"optional", optional, 200}} {
		t.Run(mode.name, func(t *testing.T) {
			f := newFixture(t, mode.opts, testInstance)
			tok := f.token(t)
			get := func(token string) int {
				hdr := map[string]string{}
				if token != "" {
					hdr["X-aws-ec2-metadata-token"] = token
				}
				res, _ := f.do("GET", "/latest/meta-data/instance-id", hdr)
				return res.StatusCode
			}
			if s := get(tok); s != 200 {
				t.Errorf("valid token: %d", s)
			}
			if s := get(""); s != mode.noToken {
				t.Errorf("no token: %d, want %d", s, mode.noToken)
			}
			forged := []byte(tok)
			forged[len(forged)-1] ^= 1
			for name, bad := range map[string]string{
				"garbage":   "not-a-token",
				"forged":    string(forged),
				"truncated": tok[:55],
				"too long":  tok + "A",
			} {
				if s := get(bad); s != 401 {
					t.Errorf("%s token: %d, want 401", name, s)
				}
			}
			other := newFixture(t, mode.opts, testInstance).token(t)
			if s := get(other); s != 401 {
				t.Errorf("token from another process (key): %d, want 401", s)
			}
			short := func() string {
				res, body := f.do("PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "5"})
				if res.StatusCode != 200 {
					t.Fatal(res.StatusCode)
				}
				return body
			}()
			f.advance(4 * time.Second)
			if s := get(short); s != 200 {
				t.Errorf("token before expiry: %d", s)
			}
			f.advance(time.Second)
			if s := get(short); s != 401 {
				t.Errorf("expired token: %d, want 401", s)
			}
		})
	}
}

// TestPaths covers the path rows of imds-contract.md with exact bytes.
func TestPaths(t *testing.T) {
	in := testInstance
	f := newFixture(t, required, in)
	tok := f.token(t)
	for _, tc := range []struct {
		path   string
		status int
		body   string
		ctype  string
	}{
		{"/", 200, strings.Join(Versions(), "\n"), "text/plain"},
		{"/latest", 200, "dynamic\nmeta-data", "text/plain"},
		{"/latest/", 200, "dynamic\nmeta-data", "text/plain"},
		{"/latest/user-data", 404, page(404), "text/html"},
		{"/latest/meta-data", 200, metaListing, "text/plain"},
		{"/latest/meta-data/", 200, metaListing, "text/plain"},
		{"/latest/meta-data/instance-id", 200, "i-0123456789abcdef0", "text/plain"},
		{"/latest/meta-data/instance-type", 200, "m5.large", "text/plain"},
		{"/latest/meta-data/ami-id", 200, "ami-0123456789abcdef0", "text/plain"},
		{"/latest/meta-data/hostname", 200, "ip-10-0-0-5.eu-west-1.compute.internal", "text/plain"},
		{"/latest/meta-data/local-hostname", 200, "ip-10-0-0-5.eu-west-1.compute.internal", "text/plain"},
		{"/latest/meta-data/local-ipv4", 200, "10.0.0.5", "text/plain"},
		{"/latest/meta-data/mac", 200, "0e:12:34:56:78:9a", "text/plain"},
		{"/latest/meta-data/placement", 200, "availability-zone\nregion", "text/plain"},
		{"/latest/meta-data/placement/", 200, "availability-zone\nregion", "text/plain"},
		{"/latest/meta-data/placement/availability-zone", 200, "eu-west-1a", "text/plain"},
		{"/latest/meta-data/placement/availability-zone/", 200, "eu-west-1a", "text/plain"},
		{"/latest/meta-data/placement/region", 200, "eu-west-1", "text/plain"},
		{"/latest/meta-data/iam", 200, "info\nsecurity-credentials/", "text/plain"},
		{"/latest/meta-data/iam/", 200, "info\nsecurity-credentials/", "text/plain"},
		{"/latest/meta-data/iam/info", 200, infoJSON, "text/plain"},
		{"/latest/meta-data/iam/security-credentials", 200, "web", "text/plain"},
		{"/latest/meta-data/iam/security-credentials/", 200, "web", "text/plain"},
		{"/latest/meta-data/iam/security-credentials/web", 200, credsJSON, "text/plain"},
		{"/latest/meta-data/iam/security-credentials/other", 404, page(404), "text/html"},
		{"/latest/meta-data/iam/security-credentials-extended/", 200, "web", "text/plain"},
		{"/latest/meta-data/iam/security-credentials-extended/web", 200, extendedJSON, "text/plain"},
		{"/latest/meta-data/iam/security-credentials-extended/other", 404, page(404), "text/html"},
		{"/latest/meta-data/iam/nonsense", 404, page(404), "text/html"},
		{"/latest/dynamic", 200, "instance-identity/", "text/plain"},
		{"/latest/dynamic/", 200, "instance-identity/", "text/plain"},
		{"/latest/dynamic/instance-identity/", 200, "document", "text/plain"},
		{"/latest/dynamic/instance-identity/document", 200, identityJSON, "text/plain"},
		{"/2009-04-04/meta-data/instance-id", 200, "i-0123456789abcdef0", "text/plain"},
		{"/2009-04-04/meta-data/", 200, metaListing, "text/plain"},
		{"/2021-03-23/meta-data/iam/security-credentials/web", 200, credsJSON, "text/plain"},
		{"//latest/meta-data/instance-id", 200, "i-0123456789abcdef0", "text/plain"},
		{"//latest//meta-data//iam/security-credentials/", 200, "web", "text/plain"},
		{"/latest/meta-data/no-such-thing", 404, page(404), "text/html"},
		{"/1999-01-01/meta-data/instance-id", 404, page(404), "text/html"},
		{"/nonsense", 404, page(404), "text/html"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			res, body := f.do("GET", tc.path, map[string]string{"X-aws-ec2-metadata-token": tok})
			if res.StatusCode != tc.status {
				t.Fatalf("status = %d, want %d (body %q)", res.StatusCode, tc.status, body)
			}
			if diff := cmp.Diff(tc.body, body); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
			if got := res.Header.Get("Content-Type"); got != tc.ctype {
				t.Errorf("Content-Type = %q, want %q", got, tc.ctype)
			}
			if got, want := res.Header.Get("Content-Length"), len(tc.body); got != strconv.Itoa(want) {
				t.Errorf("Content-Length = %s, want %d", got, want)
			}
			if res.StatusCode >= 300 && res.StatusCode < 400 {
				t.Errorf("redirect sent")
			}
		})
	}
}

// TestHead: HEAD answers with the GET's status and length, and no body,
// through a real server.
func TestHead(t *testing.T) {
	f := newFixture(t, optional, testInstance)
	srv := httptest.NewServer(f.h)
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "HEAD /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\nGET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
	br := bufio.NewReader(c)
	head, err := http.ReadResponse(br, &http.Request{Method: http.MethodHead})
	if err != nil {
		t.Fatal(err)
	}
	if head.StatusCode != 200 || head.Header.Get("Content-Length") != "19" {
		t.Errorf("HEAD: %d, Content-Length %q", head.StatusCode, head.Header.Get("Content-Length"))
	}
	// The next response must start right after the HEAD's headers: a body
	// sent for the HEAD would be read as garbage here.
	get, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("the answer after HEAD is unreadable (a body was sent for HEAD?): %v", err)
	}
	body, _ := io.ReadAll(get.Body)
	if string(body) != testInstance.ID {
		t.Errorf("GET after HEAD: %q", body)
	}
}

func TestUserData(t *testing.T) {
	in := testInstance
	in.UserData = []byte("#!/bin/sh\necho hello\n")
	f := newFixture(t, optional, in)
	res, body := f.do("GET", "/latest/", nil)
	if res.StatusCode != 200 || body != "dynamic\nmeta-data\nuser-data" {
		t.Errorf("/latest/: %d %q", res.StatusCode, body)
	}
	res, body = f.do("GET", "/latest/user-data", nil)
	if res.StatusCode != 200 || body != string(in.UserData) || res.Header.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("user-data: %d %q %q", res.StatusCode, body, res.Header.Get("Content-Type"))
	}

	// An empty user-data file is no user data, as on EC2: not listed, and
	// 404 rather than an empty 200.
	in.UserData = []byte{}
	f = newFixture(t, optional, in)
	if res, body := f.do("GET", "/latest/", nil); body != "dynamic\nmeta-data" {
		t.Errorf("empty user data: /latest/: %d %q", res.StatusCode, body)
	}
	if res, _ := f.do("GET", "/latest/user-data", nil); res.StatusCode != 404 {
		t.Errorf("empty user data: /latest/user-data: %d, want 404", res.StatusCode)
	}
}

// TestContentLength: every answer, GET or HEAD, carries its Content-Length
// and is never chunked, on both sides of the size up to which the handler
// leaves the header to net/http (netHTTPBuffered).
func TestContentLength(t *testing.T) {
	for _, n := range []int{0, 1, netHTTPBuffered - 1, netHTTPBuffered, netHTTPBuffered + 1, 2 * netHTTPBuffered, 70000} {
		in := testInstance
		path := "/latest/user-data"
		if n == 0 {
			in.AMIID, path = "", "/latest/meta-data/ami-id" // user data is never empty
		} else {
			in.UserData = []byte(strings.Repeat("u", n))
		}
		f := newFixture(t, optional, in)
		for _, method := range []string{"GET", "HEAD"} {
			res, body := f.do(method, path, nil)
			if res.StatusCode != 200 {
				t.Fatalf("%s %d bytes: status %d", method, n, res.StatusCode)
			}
			if got := res.Header.Get("Content-Length"); got != strconv.Itoa(n) || res.TransferEncoding != nil {
				t.Errorf("%s %d bytes: Content-Length %q, Transfer-Encoding %q", method, n, got, res.TransferEncoding)
			}
			want := n
			if method == "HEAD" {
				want = 0
			}
			if len(body) != want {
				t.Errorf("%s %d bytes: a body of %d", method, n, len(body))
			}
		}
	}
}

func TestEndpointDisabled(t *testing.T) {
	f := newFixture(t, Options{Enabled: false, TokensRequired: true, HopLimit: 1}, testInstance)
	for _, tc := range []struct{ method, path string }{
		{"PUT", "/latest/api/token"}, {"GET", "/latest/meta-data/"}, {"GET", "/"},
		{"GET", "/latest/meta-data/iam/security-credentials/web"},
	} {
		res, body := f.do(tc.method, tc.path, map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"})
		if res.StatusCode != 403 || body != page(403) {
			t.Errorf("%s %s: %d, want 403", tc.method, tc.path, res.StatusCode)
		}
	}
}

// TestCredentialStates covers no role (404, as on EC2), no credentials yet
// (503) and expired credentials (served with their true expiration, while
// iam/info stops saying Success).
func TestCredentialStates(t *testing.T) {
	f := newFixture(t, optional, testInstance)

	f.creds.p.Store(snapshot.None())
	for _, p := range []string{
		"/latest/meta-data/iam", "/latest/meta-data/iam/info", "/latest/meta-data/iam/security-credentials/",
		"/latest/meta-data/iam/security-credentials/web", "/latest/meta-data/iam/security-credentials-extended/",
	} {
		if res, _ := f.do("GET", p, nil); res.StatusCode != 404 {
			t.Errorf("no role: %s = %d, want 404", p, res.StatusCode)
		}
	}
	if _, body := f.do("GET", "/latest/meta-data/", nil); strings.Contains(body, "iam/") {
		t.Errorf("no role: meta-data listing still has iam/: %q", body)
	}
	if res, body := f.do("GET", "/latest/dynamic/instance-identity/document", nil); res.StatusCode != 200 || !strings.Contains(body, `"accountId":"000000000000"`) {
		t.Errorf("no role: identity document %d %s", res.StatusCode, body)
	}

	f.creds.p.Store(snapshot.NewPending(testRole))
	if res, body := f.do("GET", "/latest/meta-data/iam/security-credentials/", nil); res.StatusCode != 200 || body != "web" {
		t.Errorf("pending: listing %d %q", res.StatusCode, body)
	}
	for _, p := range []string{"/latest/meta-data/iam/security-credentials/web", "/latest/meta-data/iam/info"} {
		if res, body := f.do("GET", p, nil); res.StatusCode != 503 || body != page(503) {
			t.Errorf("pending: %s = %d, want 503", p, res.StatusCode)
		}
	}
	for _, p := range []string{"/latest/meta-data/iam/security-credentials/other", "/latest/meta-data/iam/security-credentials-extended/other"} {
		if res, _ := f.do("GET", p, nil); res.StatusCode != 404 {
			t.Errorf("pending: %s = %d, want 404 (not the role the listing names)", p, res.StatusCode)
		}
	}
	failing := snapshot.NewPending(testRole).WithFailure("AssumeRoleUnauthorizedAccess", "The agent cannot assume the role.", testNow)
	f.creds.p.Store(failing)
	if res, body := f.do("GET", "/latest/meta-data/iam/info", nil); res.StatusCode != 503 || strings.Contains(body, "Success") ||
		!strings.Contains(body, `"Code":"AssumeRoleUnauthorizedAccess"`) {
		t.Errorf("pending with failure: info %d %s", res.StatusCode, body)
	}
	if res, _ := f.do("GET", "/latest/meta-data/iam/security-credentials/web", nil); res.StatusCode != 503 {
		t.Errorf("pending with failure: credentials %d, want 503", res.StatusCode)
	}

	ready := snapshot.New(testRole, testCreds, testUpdated).WithFailure("ServiceUnavailable", "STS could not be reached; retrying.", testNow)
	f.creds.p.Store(ready)
	if _, body := f.do("GET", "/latest/meta-data/iam/info", nil); body != infoJSON {
		t.Errorf("failing but unexpired: info = %s, want Success", body)
	}
	f.advance(testCreds.Expiration.Sub(testNow))
	if res, body := f.do("GET", "/latest/meta-data/iam/security-credentials/web", nil); res.StatusCode != 200 || body != credsJSON {
		t.Errorf("expired: credentials %d %s, want the last ones with their true expiration", res.StatusCode, body)
	}
	want := `{"Code":"ServiceUnavailable","Message":"STS could not be reached; retrying.","LastUpdated":"2026-11-27T04:00:00Z","InstanceProfileArn":"arn:aws:iam::123456789012:instance-profile/web","InstanceProfileId":"AIPAEXAMPLEPROFILE01"}`
	if res, body := f.do("GET", "/latest/meta-data/iam/info", nil); body != want || res.StatusCode != 503 {
		t.Errorf("expired: info = %d\n%s\nwant 503 and\n%s", res.StatusCode, body, want)
	}
}

// TestHeaderCase sends raw requests with header names in the case each SDK
// uses, through a real server.
func TestHeaderCase(t *testing.T) {
	f := newFixture(t, required, testInstance)
	srv := httptest.NewServer(f.h)
	defer srv.Close()
	for _, name := range []string{"x-aws-ec2-metadata-token-ttl-seconds", "X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "X-AWS-EC2-METADATA-TOKEN-TTL-SECONDS"} {
		req, _ := http.NewRequest("PUT", srv.URL+"/latest/api/token", nil)
		req.Header[name] = []string{"60"} // bypass canonicalisation on the client
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		tok, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("%s: %d", name, res.StatusCode)
		}
		req, _ = http.NewRequest("GET", srv.URL+"/latest/meta-data/instance-id", nil)
		req.Header["x-aws-ec2-metadata-token"] = []string{string(tok)}
		res, err = srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Errorf("lower-case token header: %d", res.StatusCode)
		}
	}
}

// seenHooks copies the Request each hook call gets, then replaces its
// connection value, as a hook may.
type seenHooks struct {
	NopHooks
	seen *[]Request
}

func (h seenHooks) Served(req *Request, _ int) {
	*h.seen = append(*h.seen, *req)
	req.Conn = "set by a hook"
}

// TestConnectionRequestReused: the requests of one connection share one
// Request, yet each reaches the hooks as if it were new (nothing of the
// one before, the connection's value restored), and an idle connection
// keeps nothing of its last request.
func TestConnectionRequestReused(t *testing.T) {
	f := newFixture(t, optional, testInstance)
	var seen []Request
	f.h.hooks = seenHooks{seen: &seen}
	tok := f.token(t)
	seen = nil
	ctx := WithConn(t.Context(), nil, "the connection's")
	c := connOf(httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil))

	creds := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://169.254.169.254/latest/meta-data/iam/security-credentials/"+testRole.Name, nil)
	creds.Header.Set("X-aws-ec2-metadata-token", tok)
	plain := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://169.254.169.254/latest/meta-data/instance-id", nil)
	missing := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://169.254.169.254/latest/meta-data/nothing-here", nil)
	for _, r := range []*http.Request{creds, plain, missing} {
		f.advance(time.Second)
		f.h.ServeHTTP(httptest.NewRecorder(), r)
		if c.req != (Request{}) {
			t.Fatalf("after %s the connection still holds %+v", r.URL.Path, c.req)
		}
	}
	want := []Request{
		{HTTP: creds, Time: testNow.Add(time.Second), Route: RouteCredentials, Token: true, Snapshot: f.creds.Snapshot(), Conn: "the connection's", conn: c},
		{HTTP: plain, Time: testNow.Add(2 * time.Second), Route: RouteMetadata, Conn: "the connection's", conn: c},
		{HTTP: missing, Time: testNow.Add(3 * time.Second), Route: RouteMetadata, Reason: ReasonNotFound, Conn: "the connection's", conn: c},
	}
	if len(seen) != len(want) {
		t.Fatalf("the hooks saw %d requests, want %d", len(seen), len(want))
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Errorf("request %d reached the hooks as %+v, want %+v", i, seen[i], want[i])
		}
	}
}

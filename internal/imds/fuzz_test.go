package imds

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzVerify: no input panics, and only tokens this process issued verify.
func FuzzVerify(f *testing.F) {
	tk, _ := NewTokens(func() time.Time { return testNow })
	issued := tk.Issue(60, Binding{})
	f.Add(issued)
	f.Add("")
	f.Add(strings.Repeat("A", TokenLen))
	f.Add(issued[:TokenLen-1] + "=")
	f.Fuzz(func(t *testing.T, tok string) {
		s := tk.Verify(tok, 0, true)
		if s == TokenValid && tok != issued {
			// A second valid token would mean a MAC collision or a
			// decoding that accepts two spellings of one token.
			t.Fatalf("token %q verified but was never issued", tok)
		}
	})
}

// FuzzHandler sends arbitrary requests: none panics, every answer is one of
// the contract's, no redirect is ever sent, and credentials are only ever
// handed to a request holding a valid token.
func FuzzHandler(f *testing.F) {
	f.Add("GET", "/latest/meta-data/iam/security-credentials/web", "", "", false)
	f.Add("PUT", "/latest/api/token", "21600", "", false)
	f.Add("PUT", "/latest/api/token", "21600", "10.0.0.1", false)
	f.Add("GET", "//latest//meta-data/", "", "", true)
	f.Add("HEAD", "/2009-04-04/meta-data/placement/availability-zone/", "", "", true)
	f.Add("DELETE", "/latest/api/token", "0", "", false)
	f.Add("GET", "/latest/meta-data/iam/security-credentials-extended/web/", "", "", true)
	f.Add("GET", "/latest/../latest/meta-data", "", "", true)
	f.Add("GET", "/%2e%2e/", "", "", true)
	fx := newFixture(f, required, testInstance)
	tok := fx.token(f)
	f.Fuzz(func(t *testing.T, method, path, ttl, xff string, withToken bool) {
		r, err := http.NewRequest(method, "http://169.254.169.254/", nil)
		if err != nil {
			return
		}
		r.URL.Path = "/" + strings.TrimPrefix(path, "/")
		if ttl != "" {
			r.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", ttl)
		}
		if xff != "" {
			r.Header.Set("X-Forwarded-For", xff)
		}
		if withToken {
			r.Header.Set("X-aws-ec2-metadata-token", tok)
		}
		rec := httptest.NewRecorder()
		fx.h.ServeHTTP(rec, r)
		res := rec.Result()
		switch res.StatusCode {
		case 200, 400, 401, 403, 404, 405, 503:
		default:
			t.Fatalf("%s %q: status %d outside the contract", method, path, res.StatusCode)
		}
		body := rec.Body.String()
		if strings.Contains(body, testCreds.SecretAccessKey) && !withToken {
			t.Fatalf("%s %q: credentials served without a token", method, path)
		}
		if res.StatusCode != 200 && strings.Contains(body, testCreds.SecretAccessKey) {
			t.Fatalf("%s %q: credentials in a %d body", method, path, res.StatusCode)
		}
		if strings.HasSuffix(body, "\n") {
			t.Fatalf("%s %q: body ends in a newline", method, path)
		}
	})
}

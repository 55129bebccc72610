package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNoSecretInOutput runs the agent through a full life (start, clients,
// rotations, status, forced refresh, a failed reload, rotated and then
// revoked source keys, refusals, shutdown) and scans every byte it and the
// commands printed for the secrets involved: the source secret key, every
// role secret key and session token served, and the IMDS session tokens.
func TestNoSecretInOutput(t *testing.T) {
	m := startMoto(t)
	var creds string
	a := runConfig(t, append(baseEnv(t), "AWS_ENDPOINT_URL="+m.url), func(dir string) string {
		creds = filepath.Join(dir, "credentials")
		if err := os.WriteFile(creds, []byte(fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", m.keyID, m.secret)), 0o600); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("instance:\n  id: %s\ncredentials:\n  instance_profile: %s\n  session_duration: 15m\n  refresh_before_expiry: 14m50s\n  shared_credentials_files: [%s]\n  shared_config_files: []\nmetrics:\n  listen: 127.0.0.1:0\n",
			motoInstanceID, motoProfile, creds)
	})
	waitReady(t, a.url)
	secrets := map[string]string{"source secret key": m.secret}
	var outputs []string
	grab := func() {
		req, _ := http.NewRequest(http.MethodPut, a.url+"/latest/api/token", nil)
		req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		tok, _ := io.ReadAll(res.Body)
		res.Body.Close()
		secrets["IMDS token "+string(tok[:8])] = string(tok)
		req, _ = http.NewRequest(http.MethodGet, a.url+"/latest/meta-data/iam/security-credentials-extended/"+motoRole, nil)
		req.Header.Set("X-aws-ec2-metadata-token", string(tok))
		res, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var doc struct{ AccessKeyId, SecretAccessKey, Token string }
		if err := json.NewDecoder(res.Body).Decode(&doc); err != nil {
			t.Fatal(err)
		}
		secrets["secret key of "+doc.AccessKeyId] = doc.SecretAccessKey
		secrets["session token of "+doc.AccessKeyId] = doc.Token
	}
	cmd := func(args ...string) {
		out, errOut, _ := runClientOutputs(t, baseEnv(t), binary, args...)
		outputs = append(outputs, out, errOut)
	}
	grab()
	time.Sleep(6 * time.Second) // a rotation or two
	grab()
	cmd("status", "--socket", a.socket)
	cmd("status", "--socket", a.socket, "--json")
	cmd("refresh", "--socket", a.socket)
	grab()
	cli, err := runClient(t, append(clientEnv(t, a.url, true), "AWS_DEFAULT_REGION=us-east-1"), "aws", "sts", "get-caller-identity", "--endpoint-url", m.url)
	if err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, cli)

	// A refusal, a failed reload, then revoked source keys.
	res, err := http.Get(a.url + "/latest/meta-data/iam/security-credentials/" + motoRole)
	if err == nil {
		res.Body.Close()
	}
	orig, _ := os.ReadFile(a.config)
	_ = os.WriteFile(a.config, append(orig, []byte("nonsense: [\n")...), 0o644)
	_ = a.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "the failed reload", func() bool { return strings.Contains(a.stderr.String(), "reload failed") })
	_ = os.WriteFile(a.config, orig, 0o644)
	_ = os.WriteFile(creds, []byte(fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", m.keyID, "revoked-"+m.secret)), 0o600)
	secrets["revoked source secret"] = "revoked-" + m.secret
	cmd("refresh", "--socket", a.socket)
	cmd("status", "--socket", a.socket)
	if !strings.Contains(strings.Join(outputs, ""), "SignatureDoesNotMatch") {
		t.Errorf("the revoked keys' failure is not reported:\n%s", strings.Join(outputs, "\n"))
	}
	a.stop(t)

	all := a.stdout.String() + a.stderr.String() + strings.Join(outputs, "\n")
	if len(secrets) < 8 {
		t.Fatalf("only %d secrets collected", len(secrets))
	}
	for what, s := range secrets {
		if len(s) < 8 {
			t.Fatalf("%s is too short to scan for: %q", what, s)
		}
		if strings.Contains(all, s) {
			t.Errorf("the %s appears in the output", what)
		}
	}
	t.Logf("scanned %d bytes of output for %d secrets", len(all), len(secrets))
}

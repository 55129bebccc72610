package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
)

// moto is a moto_server on a loopback port, checking SigV4 signatures and
// IAM policies once its seeding calls are spent.
type moto struct {
	url  string
	cmd  *exec.Cmd
	logs *syncBuffer
	// keys of the seeded host user
	keyID, secret string
}

const (
	motoAccount    = "123456789012"
	motoRole       = "app"
	motoProfile    = "web"
	motoInstanceID = "i-0123456789abcdef0"
	// motoSeedCalls is the number of unauthenticated calls seedMoto makes;
	// authentication and policy checks apply after them.
	motoSeedCalls = 6
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startMoto starts moto_server on this host's loopback and seeds a host
// user with keys and a policy allowing sts:AssumeRole and
// iam:GetInstanceProfile, a role trusting that user, and an instance
// profile holding the role.
func startMoto(t *testing.T) *moto {
	return startMotoWith(t, exec.Command, http.DefaultClient, freePort(t))
}

// startMotoWith starts moto with command (which may start it inside a
// network namespace) and seeds it through client.
func startMotoWith(t *testing.T, command func(string, ...string) *exec.Cmd, client *http.Client, port int) *moto {
	t.Helper()
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		t.Fatalf("moto_server not found: %v (the test command installs it)", err)
	}
	m := &moto{url: fmt.Sprintf("http://127.0.0.1:%d", port), logs: &syncBuffer{}}
	m.cmd = command(bin, "-H", "127.0.0.1", "-p", fmt.Sprint(port))
	m.cmd.Env = append(baseEnv(t), fmt.Sprintf("INITIAL_NO_AUTH_ACTION_COUNT=%d", motoSeedCalls))
	m.cmd.Stdout, m.cmd.Stderr = m.logs, m.logs
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGCONT)
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGTERM)
		_ = m.cmd.Wait()
		if t.Failed() {
			t.Logf("moto output:\n%s", m.logs.String())
		}
	})
	waitFor(t, 30*time.Second, "moto_server", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.url+"/moto-api/", nil)
		res, err := client.Do(req)
		if err == nil {
			res.Body.Close()
		}
		return err == nil
	})
	m.seed(t, client)
	return m
}

func (m *moto) seed(t *testing.T, client *http.Client) {
	t.Helper()
	ctx := context.Background()
	c := iam.NewFromConfig(aws.Config{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(m.url),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIASEEDING000000000", "seeding", ""),
		HTTPClient:   client,
	})
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("seeding moto: %v", err)
		}
	}
	must(c.CreateUser(ctx, &iam.CreateUserInput{UserName: aws.String("host")}))
	key, err := c.CreateAccessKey(ctx, &iam.CreateAccessKeyInput{UserName: aws.String("host")})
	if err != nil {
		t.Fatal(err)
	}
	m.keyID, m.secret = *key.AccessKey.AccessKeyId, *key.AccessKey.SecretAccessKey
	must(c.PutUserPolicy(ctx, &iam.PutUserPolicyInput{
		UserName: aws.String("host"), PolicyName: aws.String("imds-agent"),
		PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["sts:AssumeRole","iam:GetInstanceProfile"],"Resource":"*"}]}`),
	}))
	must(c.CreateRole(ctx, &iam.CreateRoleInput{
		RoleName: aws.String(motoRole),
		AssumeRolePolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` +
			motoAccount + `:user/host"},"Action":"sts:AssumeRole"}]}`),
		MaxSessionDuration: aws.Int32(43200),
	}))
	must(c.CreateInstanceProfile(ctx, &iam.CreateInstanceProfileInput{InstanceProfileName: aws.String(motoProfile)}))
	must(c.AddRoleToInstanceProfile(ctx, &iam.AddRoleToInstanceProfileInput{
		InstanceProfileName: aws.String(motoProfile), RoleName: aws.String(motoRole),
	}))
}

// runAgent writes source credentials and a config serving on a loopback
// port, and starts `imds-agent run`. Its STS and IAM endpoint is moto,
// given through the SDK's standard AWS_ENDPOINT_URL setting.
func runAgent(t *testing.T, m *moto, keyID, secret, extraCredentials string) *runningAgent {
	t.Helper()
	a := runConfig(t, append(baseEnv(t), "AWS_ENDPOINT_URL="+m.url), func(dir string) string {
		creds := filepath.Join(dir, "credentials")
		if err := os.WriteFile(creds, []byte(fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", keyID, secret)), 0o600); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf(`instance:
  id: %s
  region: us-east-1
credentials:
  instance_profile: arn:aws:iam::%s:instance-profile/%s
  shared_config_files: [%s]
  shared_credentials_files: [%s]
%s
metrics:
  listen: 127.0.0.1:0
`, motoInstanceID, motoAccount, motoProfile, filepath.Join(dir, "aws-config"), creds, extraCredentials)
	})
	return a
}

const motoAssumedRole = "arn:aws:sts::" + motoAccount + ":assumed-role/" + motoRole + "/" + motoInstanceID

// TestMotoEndToEnd: with moto verifying signatures and policies, the agent
// resolves the instance profile, assumes the role as the instance, and the
// Go SDK and the AWS CLI on the host, using only the agent, are that role.
func TestMotoEndToEnd(t *testing.T) {
	m := startMoto(t)
	url := runAgent(t, m, m.keyID, m.secret, "").url
	waitReady(t, url)

	t.Run("aws-sdk-go-v2", func(t *testing.T) {
		setClientEnv(t, url, true)
		if got := goCallerARN(t, m.url); got != motoAssumedRole {
			t.Errorf("caller = %s, want %s", got, motoAssumedRole)
		}
	})
	t.Run("aws-cli", func(t *testing.T) {
		env := append(clientEnv(t, url, true), "AWS_DEFAULT_REGION=us-east-1")
		out, err := runClient(t, env, "aws", "sts", "get-caller-identity", "--endpoint-url", m.url, "--query", "Arn", "--output", "text")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(out); got != motoAssumedRole {
			t.Errorf("aws sts get-caller-identity = %s, want %s", got, motoAssumedRole)
		}
	})
}

// TestMotoWrongSourceKeys: with a wrong secret the agent stays up, answers
// 503 on the credential paths, and logs one clear error per backoff step.
func TestMotoWrongSourceKeys(t *testing.T) {
	m := startMoto(t)
	a := runAgent(t, m, m.keyID, "not-the-secret", "")
	p, url := a.process, a.url
	status, _ := imdsGet(url, "/latest/meta-data/iam/security-credentials/")
	if status != http.StatusServiceUnavailable {
		t.Errorf("role listing: %d, want 503 while the profile cannot be resolved", status)
	}
	// The first look-up runs beside serving: until it has failed,
	// iam/info is the plain 503 page.
	var body string
	waitFor(t, 10*time.Second, "iam/info to name the failure", func() bool {
		status, body = imdsGet(url, "/latest/meta-data/iam/info")
		return strings.Contains(body, `"Code":`)
	})
	if status != http.StatusServiceUnavailable || !strings.Contains(body, `"Code":"InvalidSourceCredentials"`) || strings.Contains(body, "Success") {
		t.Errorf("iam/info: %d %s", status, body)
	}
	time.Sleep(3 * time.Second) // let any retry storm show itself
	errs := 0
	for _, l := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(l, "level=ERROR") {
			errs++
			if !strings.Contains(l, "SignatureDoesNotMatch") {
				t.Errorf("error line does not name the cause: %s", l)
			}
		}
	}
	if errs != 1 {
		t.Errorf("%d error lines in 3s, want exactly one (terminal failures back off for 15-30s)", errs)
	}
	if status, _ := imdsGet(url, "/latest/meta-data/instance-id"); status != http.StatusOK {
		t.Errorf("the rest of the metadata is not served: %d", status)
	}
	// The failures are the instance profile's look-ups (no AssumeRole is
	// tried without the role), and status and the metrics count them.
	out, err := runClient(t, baseEnv(t), binary, "status", "--socket", a.socket, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Metrics        string
		Failures       int
		LookupFailures int `json:"profile_lookup_failures"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if st.LookupFailures < 1 || st.Failures != 0 {
		t.Errorf("status: %d failed look-ups, %d failed AssumeRole calls; want the look-ups counted", st.LookupFailures, st.Failures)
	}
	// Read after status: a look-up may have failed again in between.
	if v := metricsOf(t, st.Metrics)("imds_agent_profile_lookup_failures_total", map[string]string{"class": "terminal"}); v < float64(st.LookupFailures) {
		t.Errorf("terminal look-up failures in the metrics = %v, status said %d", v, st.LookupFailures)
	}
}

// accessKey returns the access key id the agent serves now.
func accessKey(t *testing.T, url string) string {
	t.Helper()
	status, body := imdsGet(url, "/latest/meta-data/iam/security-credentials/"+motoRole)
	if status != http.StatusOK {
		t.Fatalf("credentials: %d %s", status, body)
	}
	i := strings.Index(body, `"AccessKeyId":"`)
	if i < 0 {
		t.Fatalf("no access key in %s", body)
	}
	rest := body[i+len(`"AccessKeyId":"`):]
	return rest[:strings.IndexByte(rest, '"')]
}

// TestMotoPausedAcrossRotationAndReload: STS (moto) is frozen with SIGSTOP
// across due rotations and a SIGHUP reload. No client request fails or waits
// on STS meanwhile, and rotation completes once STS is back.
func TestMotoPausedAcrossRotationAndReload(t *testing.T) {
	m := startMoto(t)
	// 15-minute sessions replaced 14m50s before expiry: a rotation every
	// few seconds.
	a := runAgent(t, m, m.keyID, m.secret, "  session_duration: 15m\n  refresh_before_expiry: 14m50s")
	p, url := a.process, a.url
	waitReady(t, url)
	first := accessKey(t, url)
	waitFor(t, 30*time.Second, "a first rotation", func() bool { return accessKey(t, url) != first })

	type result struct {
		worst    time.Duration
		requests int
		failures []string
	}
	stop := make(chan struct{})
	results := make(chan result, 2)
	for range 2 {
		go func() {
			var r result
			for {
				select {
				case <-stop:
					results <- r
					return
				default:
				}
				start := time.Now()
				status, body := imdsGet(url, "/latest/meta-data/iam/security-credentials/"+motoRole)
				took := time.Since(start)
				r.requests++
				r.worst = max(r.worst, took)
				if status != http.StatusOK || !strings.Contains(body, `"Code":"Success"`) {
					r.failures = append(r.failures, fmt.Sprintf("%d %.80s", status, body))
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}

	beforePause := accessKey(t, url)
	if err := syscall.Kill(-m.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	time.Sleep(4 * time.Second)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the reload while STS is paused", func() bool {
		return strings.Contains(p.stderr.String(), "configuration reloaded")
	})
	time.Sleep(8 * time.Second)
	stalled := time.Since(paused)
	if k := accessKey(t, url); k != beforePause {
		t.Logf("note: a rotation completed while paused (%s -> %s)", beforePause, k)
	}
	if err := syscall.Kill(-m.cmd.Process.Pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	waitFor(t, 45*time.Second, "a rotation after STS resumed", func() bool { return accessKey(t, url) != beforePause })
	rotatedAfter := time.Since(resumed)
	close(stop)
	var total result
	for range 2 {
		r := <-results
		total.requests += r.requests
		total.worst = max(total.worst, r.worst)
		total.failures = append(total.failures, r.failures...)
	}
	t.Logf("STS paused %v; %d client requests, longest %v; rotation completed %v after resuming",
		stalled.Round(time.Millisecond), total.requests, total.worst, rotatedAfter.Round(time.Millisecond))
	// A request that waited for STS would have failed: imdsGet gives up
	// after 2 s, and STS was stalled for longer.
	if len(total.failures) > 0 {
		t.Errorf("%d requests failed, first: %s", len(total.failures), total.failures[0])
	}
}

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

const devAssumedRole = "arn:aws:sts::123456789012:assumed-role/imds-agent-demo/"

// setClientEnv points this process's SDK at the agent, as clientEnv does
// for child processes.
func setClientEnv(t *testing.T, metadataURL string, v1Disabled bool) {
	t.Helper()
	for _, kv := range clientEnv(t, metadataURL, v1Disabled) {
		k, v, _ := strings.Cut(kv, "=")
		if k != "PATH" {
			t.Setenv(k, v)
		}
	}
	if !v1Disabled {
		t.Setenv("AWS_EC2_METADATA_V1_DISABLED", "false")
	}
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
		"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"} {
		t.Setenv(k, "")
	}
}

// goCallerARN loads the SDK's default configuration in this process (the
// caller set the environment), checks the credentials it finds, and asks
// STS at stsURL who they belong to.
func goCallerARN(t *testing.T, stsURL string) string {
	t.Helper()
	ctx := context.Background()
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion("us-east-1"))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(creds.AccessKeyID, "ASIA") || creds.SessionToken == "" || !creds.CanExpire {
		t.Errorf("credentials = %s (token %d bytes, can expire %v)", creds.AccessKeyID, len(creds.SessionToken), creds.CanExpire)
	}
	out, err := sts.NewFromConfig(cfg, func(o *sts.Options) { o.BaseEndpoint = aws.String(stsURL) }).
		GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatal(err)
	}
	return *out.Arn
}

// TestDevClients runs every mainstream client's default chain against
// `imds-agent dev`, with IMDSv1 fallback allowed and forbidden.
func TestDevClients(t *testing.T) {
	d := startDev(t)
	for _, v1Disabled := range []bool{false, true} {
		name := "v1-allowed"
		if v1Disabled {
			name = "v1-disabled"
		}
		t.Run(name+"/aws-sdk-go-v2", func(t *testing.T) {
			setClientEnv(t, d.metadataURL, v1Disabled)
			ctx := context.Background()
			cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithEC2IMDSRegion())
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Region != "us-east-1" {
				t.Errorf("region from IMDS = %q, want us-east-1", cfg.Region)
			}
			if got := goCallerARN(t, d.emulatorURL); !strings.HasPrefix(got, devAssumedRole+"i-") {
				t.Errorf("caller = %s, want %s<instance id>", got, devAssumedRole)
			}
		})
		t.Run(name+"/feature-ec2-imds", func(t *testing.T) {
			setClientEnv(t, d.metadataURL, v1Disabled)
			ctx := context.Background()
			// From the SDK's configuration, so AWS_EC2_METADATA_V1_DISABLED
			// and the endpoint come from the environment as in applications.
			sdk, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion("us-east-1"))
			if err != nil {
				t.Fatal(err)
			}
			c := imds.NewFromConfig(sdk)
			region, err := c.GetRegion(ctx, nil)
			if err != nil || region.Region != "us-east-1" {
				t.Errorf("GetRegion = %+v, %v", region, err)
			}
			doc, err := c.GetInstanceIdentityDocument(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if doc.Region != "us-east-1" || doc.AccountID != "123456789012" || !strings.HasPrefix(doc.InstanceID, "i-") ||
				doc.PendingTime.IsZero() || doc.Architecture == "" {
				t.Errorf("identity document = %+v", doc)
			}
			id, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: "instance-id"})
			if err != nil {
				t.Fatal(err)
			}
			defer id.Content.Close()
			b, _ := io.ReadAll(id.Content)
			if string(b) != doc.InstanceID {
				t.Errorf("instance-id %q differs from the identity document's %q", b, doc.InstanceID)
			}
		})
		t.Run(name+"/boto3", func(t *testing.T) {
			py := python(t)
			_, here, _, _ := runtime.Caller(0)
			script := filepath.Join(filepath.Dir(here), "testdata", "boto3_client.py")
			out, err := runClient(t, clientEnv(t, d.metadataURL, v1Disabled), py, script, d.emulatorURL)
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				Method, Region, Arn string
			}
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("boto3 output %q: %v", out, err)
			}
			if got.Method != "iam-role" || got.Region != "us-east-1" || !strings.HasPrefix(got.Arn, devAssumedRole+"i-") {
				t.Errorf("boto3 = %+v", got)
			}
		})
		t.Run(name+"/aws-cli", func(t *testing.T) {
			env := append(clientEnv(t, d.metadataURL, v1Disabled), "AWS_DEFAULT_REGION=us-east-1")
			out, err := runClient(t, env, "aws", "sts", "get-caller-identity", "--endpoint-url", d.emulatorURL, "--output", "json")
			if err != nil {
				t.Fatal(err)
			}
			var got struct{ Arn string }
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("aws output %q: %v", out, err)
			}
			if !strings.HasPrefix(got.Arn, devAssumedRole+"i-") {
				t.Errorf("aws sts get-caller-identity = %s", got.Arn)
			}
		})
	}
}

// TestDevBanner: what dev prints works. Its unset and export lines, run by
// bash, leave none of the settings that would take an SDK's credentials or
// STS calls elsewhere; its status command answers; and a port already in
// use says how to choose another.
func TestDevBanner(t *testing.T) {
	d := startDev(t)
	var unset, export string
	for _, l := range strings.Split(d.stdout.String(), "\n") {
		switch {
		case strings.HasPrefix(l, "  unset "):
			unset = l
		case strings.HasPrefix(l, "  export "):
			export = l
		}
	}
	if unset == "" || export == "" {
		t.Fatalf("banner lacks the unset or export line:\n%s", d.stdout.String())
	}
	// A developer's shell in an EKS pod, an ECS task, or with endpoints of
	// its own; nothing here is used to reach anything.
	hostile := []string{
		"AWS_PROFILE=work", "AWS_ACCESS_KEY_ID=AKIAOWN", "AWS_SECRET_ACCESS_KEY=own", "AWS_SESSION_TOKEN=own",
		"AWS_ROLE_ARN=arn:aws:iam::111111111111:role/pod", "AWS_WEB_IDENTITY_TOKEN_FILE=/var/run/token",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9/creds", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/creds",
		"AWS_CONTAINER_AUTHORIZATION_TOKEN=own", "AWS_EC2_METADATA_DISABLED=true",
		"AWS_ENDPOINT_URL_STS=http://127.0.0.1:9", "AWS_ENDPOINT_URL_IAM=http://127.0.0.1:9",
		"AWS_CONFIG_FILE=/home/dev/.aws/config", "AWS_SHARED_CREDENTIALS_FILE=/home/dev/.aws/credentials",
	}
	env, err := runClient(t, append(baseEnv(t), hostile...), "bash", "-c", unset+"\n"+export+"\nenv")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hostile {
		if name := h[:strings.IndexByte(h, '=')]; strings.Contains("\n"+env, "\n"+h+"\n") {
			t.Errorf("%s survives the banner's lines", name)
		}
	}
	if !strings.Contains(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT="+d.metadataURL+"/\n") {
		t.Errorf("the export line does not point at the agent:\n%s", export)
	}
	status := d.statusCommand(t)
	out, err := runClient(t, baseEnv(t), status[0], status[1:]...)
	if err != nil || !strings.Contains(out, "imds-agent-demo") {
		t.Errorf("the banner's status command %q: %v\n%s", status, err, out)
	}
	addr := strings.TrimPrefix(d.metadataURL, "http://")
	busy := exec.Command(binary, "dev", "--listen", addr)
	busy.Env = baseEnv(t)
	msg, _ := busy.CombinedOutput()
	if code := busy.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(msg), "choose another with --listen 127.0.0.1:PORT") {
		t.Errorf("dev on a port in use: exit %d:\n%s", code, msg)
	}
}

// TestDevStartsAndStops: the README's first command serves credentials
// and exits cleanly on Ctrl-C.
func TestDevStartsAndStops(t *testing.T) {
	d := startDev(t)
	status, body := imdsGet(d.metadataURL, "/latest/meta-data/iam/security-credentials/imds-agent-demo")
	if status != 200 || !strings.Contains(body, `"Code":"Success"`) {
		t.Fatalf("credentials: %d %s", status, body)
	}
	if !strings.Contains(d.stdout.String(), "export AWS_EC2_METADATA_SERVICE_ENDPOINT="+d.metadataURL+"/") {
		t.Errorf("banner lacks the export line:\n%s", d.stdout.String())
	}
	// The admin socket is in a directory of the developer's own, which
	// goes when dev does.
	socketDir := filepath.Dir(d.statusCommand(t)[3])
	if fi, err := os.Stat(socketDir); err != nil || fi.Mode() != os.ModeDir|0o700 || socketDir == os.TempDir() {
		t.Errorf("the admin socket's directory %s: %v, %v; want one of its own, 0700", socketDir, fi, err)
	}
	d.stop(t)
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code after SIGINT = %d, want 0", code)
	}
	if _, err := os.Stat(socketDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the admin socket's directory after dev stopped: %v", err)
	}
}

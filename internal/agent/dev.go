package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/imds-agent/imds-agent/internal/awsemu"
	"github.com/imds-agent/imds-agent/internal/config"
	"github.com/imds-agent/imds-agent/internal/hostinfo"
	"github.com/imds-agent/imds-agent/internal/refresh"
)

// The demo account `imds-agent dev` serves.
const (
	DevAccount = "123456789012"
	DevUser    = "imds-agent-dev"
	DevRole    = "imds-agent-demo"
	DevProfile = "imds-agent-demo"
)

// Dev is the whole agent on loopback with its own AWS: an emulator seeded
// with a host user, a role trusting it and an instance profile holding the
// role, and the configuration that attaches the profile to this "instance".
type Dev struct {
	Emulator *awsemu.Server
	Config   *config.Config
	// Connect builds the SDK's STS and IAM clients for the emulator, with
	// the host user's keys. Nothing from the developer's environment
	// (AWS_PROFILE, ~/.aws) is read.
	Connect func(ctx context.Context) (refresh.Clients, error)

	dir string // the admin socket's, the developer's own
}

// Close stops the emulator and removes the admin socket's directory.
func (d *Dev) Close() {
	d.Emulator.Close()
	_ = os.RemoveAll(d.dir)
}

// DevInstanceID is the instance id dev serves on a host without a machine
// id to derive one from (a container, often): AWS's own example id.
const DevInstanceID = "i-0123456789abcdef0"

// StartDev starts the emulator on an ephemeral loopback port and returns
// the configuration serving on listen, on host. Tokens are required and
// sessions last an hour, as in production.
func StartDev(listen string, host hostinfo.Host, log *slog.Logger) (*Dev, error) {
	ap, err := config.ParseListenAddress(listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %w", err)
	}
	if !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("--listen %s: dev serves on loopback only (127.0.0.0/8 or [::1]): its role is for this host's own programs", listen)
	}
	emu := awsemu.New(time.Now, log.With("component", "aws-emulator"))
	user := awsemu.NewUser(DevAccount, DevUser)
	emu.AddUser(user)
	emu.PutRole(awsemu.Role{Account: DevAccount, Name: DevRole, MaxSession: 12 * time.Hour, Trusted: []string{user.ARN()}})
	emu.PutInstanceProfile(awsemu.InstanceProfile{Account: DevAccount, Name: DevProfile, Role: DevRole})
	// The admin socket goes in a directory of the developer's own, made
	// afresh: in the shared temporary directory, a name others can guess
	// could be taken first by someone else's socket, and status would
	// then ask theirs.
	dir, err := os.MkdirTemp("", "imds-agent-dev-")
	if err != nil {
		return nil, fmt.Errorf("the admin socket's directory: %w", err)
	}
	srv, err := awsemu.Start(emu)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	cfg := config.Default()
	cfg.Listen.Link = ""
	cfg.Listen.Addresses = []string{listen}
	cfg.Credentials.InstanceProfile = awsemu.InstanceProfile{Account: DevAccount, Name: DevProfile}.ARN()
	cfg.Credentials.SharedConfigFiles = []string{}
	cfg.Credentials.SharedCredentialsFiles = []string{}
	cfg.Admin.Socket = filepath.Join(dir, "admin.sock")
	if _, err := host.InstanceID(); err != nil {
		// run needs instance.id set then; the demo names itself.
		cfg.Instance.ID = DevInstanceID
		log.Info("no machine id to derive the instance id from: serving as "+DevInstanceID, "error", err)
	}
	sdk := aws.Config{
		Region:           cfg.Instance.Region,
		BaseEndpoint:     aws.String(srv.URL),
		Credentials:      aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(user.AccessKeyID, user.SecretAccessKey, "")),
		RetryMaxAttempts: 1,
	}
	return &Dev{
		Emulator: srv,
		Config:   cfg,
		dir:      dir,
		Connect: func(context.Context) (refresh.Clients, error) {
			return refresh.Clients{STS: sts.NewFromConfig(sdk), IAM: iam.NewFromConfig(sdk)}, nil
		},
	}, nil
}

package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/imds-agent/imds-agent/internal/awsemu"
	"github.com/imds-agent/imds-agent/internal/config"
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
	Emulator      *awsemu.Server
	Config        *config.Config
	SourceOptions []func(*awsconfig.LoadOptions) error
}

// StartDev starts the emulator on an ephemeral loopback port and returns
// the configuration serving on listen. Tokens are required and sessions
// last an hour, as in production.
func StartDev(listen string, log *slog.Logger) (*Dev, error) {
	emu := awsemu.New(time.Now, log)
	user := awsemu.NewUser(DevAccount, DevUser)
	emu.AddUser(user)
	emu.PutRole(awsemu.Role{Account: DevAccount, Name: DevRole, MaxSession: 12 * time.Hour, Trusted: []string{user.ARN()}})
	emu.PutInstanceProfile(awsemu.InstanceProfile{Account: DevAccount, Name: DevProfile, Role: DevRole})
	srv, err := awsemu.Start(emu)
	if err != nil {
		return nil, err
	}
	cfg := config.Default()
	cfg.Listen.Link = ""
	cfg.Listen.Addresses = []string{listen}
	cfg.Credentials.InstanceProfile = awsemu.InstanceProfile{Account: DevAccount, Name: DevProfile}.ARN()
	cfg.Credentials.SharedConfigFiles = []string{}
	cfg.Credentials.SharedCredentialsFiles = []string{}
	cfg.Admin.Socket = filepath.Join(os.TempDir(), "imds-agent-dev-"+strconv.Itoa(os.Getuid())+".sock")
	return &Dev{
		Emulator: srv,
		Config:   cfg,
		SourceOptions: []func(*awsconfig.LoadOptions) error{
			awsconfig.WithBaseEndpoint(srv.URL),
			awsconfig.WithCredentialsProvider(aws.NewCredentialsCache(
				credentials.NewStaticCredentialsProvider(user.AccessKeyID, user.SecretAccessKey, ""))),
		},
	}, nil
}

// Command goclient is an application that uses the AWS SDK for Go v2 the
// way applications on EC2 do: the default credential chain and IMDS region,
// no configuration. It prints the ARN STS reports for the credentials it
// found, for the end-to-end tests (which point STS at a loopback emulator
// with AWS_ENDPOINT_URL and run it where 169.254.169.254 is the agent under
// test).
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithEC2IMDSRegion())
	if err != nil {
		fmt.Fprintln(os.Stderr, "goclient:", err)
		os.Exit(1)
	}
	out, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "goclient:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %s\n", cfg.Region, *out.Arn)
}

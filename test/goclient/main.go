// Command goclient is an application that uses the AWS SDK for Go v2 the
// way applications on EC2 do: the default credential chain and IMDS region,
// no configuration. It prints the region and the ARN STS reports for the
// credentials it found, for the end-to-end tests (which point STS at a
// loopback emulator with AWS_ENDPOINT_URL and run it where 169.254.169.254
// is the agent under test).
//
// With the argument "imds PATH" it instead fetches one metadata path the
// IMDSv2 way from AWS_EC2_METADATA_SERVICE_ENDPOINT and prints the status
// of the token request, then of the GET: the tests run it as other local
// users to check the access policy. With IMDS_TOKEN set it uses that token;
// with IMDS_BIND_DEVICE set its sockets are bound to that device
// (SO_BINDTODEVICE), as a local user may do to hide from the agent's
// caller lookup.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"golang.org/x/sys/unix"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if len(os.Args) == 3 && os.Args[1] == "imds" {
		if err := fetch(ctx, os.Getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT"), os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "goclient:", err)
			os.Exit(1)
		}
		return
	}
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

// fetch prints "PUT <status> GET <status>". With IMDS_TOKEN set it uses
// that token instead of asking for one, and prints only "GET <status>".
func fetch(ctx context.Context, endpoint, path string) error {
	base := strings.TrimSuffix(endpoint, "/")
	tr := &http.Transport{Proxy: nil}
	if dev := os.Getenv("IMDS_BIND_DEVICE"); dev != "" {
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var err error
			if cerr := rc.Control(func(fd uintptr) { err = unix.BindToDevice(int(fd), dev) }); cerr != nil {
				return cerr
			}
			return err
		}}
		tr.DialContext = d.DialContext
	}
	c := &http.Client{Transport: tr}
	if tok := os.Getenv("IMDS_TOKEN"); tok != "" {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		req.Header.Set("X-aws-ec2-metadata-token", tok)
		res, err := c.Do(req)
		if err != nil {
			return err
		}
		res.Body.Close()
		fmt.Printf("GET %d\n", res.StatusCode)
		return nil
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, base+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	tok, _ := io.ReadAll(res.Body)
	res.Body.Close()
	fmt.Printf("PUT %d ", res.StatusCode)
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if res.StatusCode == http.StatusOK {
		req.Header.Set("X-aws-ec2-metadata-token", string(tok))
	}
	res, err = c.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	fmt.Printf("GET %d\n", res.StatusCode)
	return nil
}

// Command floor is the benchmark's floor: a bare net/http server answering
// the three requests of an SDK's credential fetch (PUT /latest/api/token,
// GET the role list, GET the role's credentials) with fixed bytes of the
// agent's sizes. It checks nothing: no token, no caller, no policy, no
// metrics, no audit. What it costs is what the kernel and net/http must
// spend anyway; the harness compares the agent with it. It runs with the
// agent's server timeouts unless -timeouts=false.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

const (
	role = "imds-agent-demo"
	// token is 56 base64url characters, the length of the agent's (and
	// EC2's) tokens.
	token = "AQAAAABrCv1qAAAAAADJiK7VAWSoRbdFuaWmCx7W-0BdTN2Xc03mzZYO"
	// credsLen is the length of the dev agent's credential document.
	credsLen = 698
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	timeouts := flag.Bool("timeouts", true, "the agent's server timeouts (imds.ReadHeaderTimeout and the rest), as any server facing clients needs")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().String())
	srv := &http.Server{Handler: handler()}
	if *timeouts {
		// The agent's values: the cost of setting deadlines on every
		// request is net/http's, and a metadata server cannot do without.
		srv.ReadHeaderTimeout = 5 * time.Second
		srv.ReadTimeout = 10 * time.Second
		srv.WriteTimeout = 10 * time.Second
		srv.IdleTimeout = 30 * time.Second
		srv.MaxHeaderBytes = 8 << 10
	}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func handler() http.Handler {
	var (
		textPlain = []string{"text/plain"}
		ttl       = []string{"21600"}
		tok       = []byte(token)
		tokLen    = []string{strconv.Itoa(len(tok))}
		list      = []byte(role)
		listLen   = []string{strconv.Itoa(len(list))}
		creds     = []byte(credentials())
		credsLen  = []string{strconv.Itoa(len(creds))}
	)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = textPlain
		switch r.URL.Path {
		case "/latest/api/token":
			h["X-Aws-Ec2-Metadata-Token-Ttl-Seconds"] = ttl
			h["Content-Length"] = tokLen
			_, _ = w.Write(tok)
		case "/latest/meta-data/iam/security-credentials/":
			h["Content-Length"] = listLen
			_, _ = w.Write(list)
		default:
			h["Content-Length"] = credsLen
			_, _ = w.Write(creds)
		}
	})
}

// credentials returns a credential document shaped like the agent's, padded
// to its length.
func credentials() string {
	head := `{"Code":"Success","LastUpdated":"2026-11-28T16:07:24Z","Type":"AWS-HMAC","AccessKeyId":"ASIAON3QKRBYISRL62MI","SecretAccessKey":"0z/tL5JD17vwfdZs/xNkJNp6A8VBXhBMFCmBCrhK","Token":"`
	tail := `","Expiration":"2026-11-28T17:07:24Z"}`
	return head + strings.Repeat("x", credsLen-len(head)-len(tail)) + tail
}

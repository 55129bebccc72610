package source

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"golang.org/x/sys/unix"

	"github.com/imds-agent/imds-agent/internal/refresh"
)

const keys = "[default]\naws_access_key_id = AKIAEXAMPLE000000001\naws_secret_access_key = secret-value\n"

func write(t *testing.T, name, body string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeOwned writes text to path with mode, owned by uid and gid (root
// only), and returns path.
func writeOwned(t *testing.T, path, text string, mode os.FileMode, uid, gid int) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheckFiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		mode os.FileMode
		want string
	}{
		{"root only", keys, 0o600, ""},
		{"group of the agent", keys, 0o640, ""},
		{"world readable", keys, 0o644, "readable by every user on this host (mode 0644)"},
		{"settings only, world readable", "[default]\nregion = eu-west-1\n", 0o644, ""},
		{"session token, world readable", "[default]\naws_session_token = x\n", 0o604, "every user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(t, "credentials", tc.body, tc.mode)
			err := CheckFilesAs([]string{p}, Self())
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrExposedSecret) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			for _, fix := range []string{p, "chmod 0640"} {
				if !strings.Contains(err.Error(), fix) {
					t.Errorf("error does not name %q: %v", fix, err)
				}
			}
		})
	}
	if err := CheckFilesAs([]string{filepath.Join(t.TempDir(), "missing")}, Self()); err != nil {
		t.Errorf("missing file: %v", err)
	}
	// A path the check cannot walk is an error of its own, not a finding
	// about who may write.
	p := filepath.Join(write(t, "file", "", 0o600), "config")
	if err := CheckFilesAs([]string{p}, Self()); err == nil || errors.Is(err, ErrUntrustedFile) || !strings.Contains(err.Error(), "checking who may change "+p) {
		t.Errorf("a path through a file: %v", err)
	}
}

func TestGroupReadableByAnotherGroup(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to give the file to another group")
	}
	p := write(t, "credentials", keys, 0o640)
	if err := os.Chown(p, 0, 65534); err != nil {
		t.Fatal(err)
	}
	if err := CheckFilesAs([]string{p}, Self()); err == nil || !strings.Contains(err.Error(), "readable by the members of group") {
		t.Errorf("err = %v", err)
	}
}

// TestCheckFilesWriters: a shared config or credentials file that someone
// other than root and the agent could change, or create or replace through
// a directory above it, is refused, secret or not.
func TestCheckFilesWriters(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to give files and directories to other users")
	}
	const settings = "[default]\ncredential_process = /usr/local/bin/creds\n"
	dir := func(t *testing.T, mode os.FileMode) string {
		d := filepath.Join(t.TempDir(), "d")
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		return d
	}
	file := func(t *testing.T, d string, mode os.FileMode, uid, gid int) string {
		return writeOwned(t, filepath.Join(d, "config"), settings, mode, uid, gid)
	}
	// linkTo returns a link to target in a directory of root's.
	linkTo := func(t *testing.T, target string) string {
		link := filepath.Join(dir(t, 0o755), "link")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		return link
	}
	// groupDir returns a directory of root's that group 65534 may write
	// to, sticky as /nix/store is.
	groupDir := func(t *testing.T) string {
		d := dir(t, 0o775|os.ModeSticky)
		if err := os.Chown(d, 0, 65534); err != nil {
			t.Fatal(err)
		}
		return d
	}
	for _, tc := range []struct {
		name string
		path func(t *testing.T) string
		want string // "" = accepted
	}{
		{"root's, in root's directory", func(t *testing.T) string { return file(t, dir(t, 0o755), 0o644, 0, 0) }, ""},
		{"missing, in root's directory", func(t *testing.T) string { return filepath.Join(dir(t, 0o755), "config") }, ""},
		{"root's, in a sticky directory", func(t *testing.T) string { return file(t, dir(t, 0o777|os.ModeSticky), 0o644, 0, 0) }, ""},
		{"world-writable", func(t *testing.T) string { return file(t, dir(t, 0o755), 0o666, 0, 0) }, "can be changed by every user on this host, through it"},
		{"writable by another group", func(t *testing.T) string { return file(t, dir(t, 0o755), 0o664, 0, 65534) }, "can be changed by the members of group"},
		{"another user's", func(t *testing.T) string { return file(t, dir(t, 0o755), 0o644, 65534, 0) }, "can be changed by its owner, user"},
		{"in a world-writable directory", func(t *testing.T) string { return file(t, dir(t, 0o777), 0o644, 0, 0) }, "can be changed by every user on this host, through the directory"},
		{"another user's, in a sticky directory", func(t *testing.T) string { return file(t, dir(t, 0o777|os.ModeSticky), 0o644, 65534, 0) }, "its owner, user"},
		{"missing, in a sticky directory", func(t *testing.T) string { return filepath.Join(dir(t, 0o777|os.ModeSticky), "config") }, "every user on this host, through the directory"},
		{"root's, in a sticky directory another group may write to", func(t *testing.T) string { return file(t, groupDir(t), 0o644, 0, 0) }, ""},
		{"missing, in a sticky directory another group may write to", func(t *testing.T) string { return filepath.Join(groupDir(t), "config") }, "the members of group"},
		{"a link to a file in a world-writable directory", func(t *testing.T) string {
			return linkTo(t, file(t, dir(t, 0o777), 0o644, 0, 0))
		}, "every user on this host, through the directory"},
		{"missing, in a missing directory", func(t *testing.T) string { return filepath.Join(dir(t, 0o755), "none", "config") }, ""},
		{"missing, in a missing directory under a world-writable one", func(t *testing.T) string {
			return filepath.Join(dir(t, 0o777), "none", "config")
		}, "every user on this host, through the directory"},
		{"a link to a link in a world-writable directory", func(t *testing.T) string {
			real := file(t, dir(t, 0o755), 0o644, 0, 0)
			open := dir(t, 0o777)
			inner := filepath.Join(open, "inner")
			if err := os.Symlink(real, inner); err != nil {
				t.Fatal(err)
			}
			return linkTo(t, inner)
		}, "every user on this host, through the directory"},
		{"a relative link, through .., to a file in root's directory", func(t *testing.T) string {
			d := dir(t, 0o755)
			mkdir := filepath.Join(d, "sub")
			if err := os.Mkdir(mkdir, 0o755); err != nil {
				t.Fatal(err)
			}
			real := file(t, d, 0o644, 0, 0)
			link := filepath.Join(mkdir, "link")
			if err := os.Symlink("../"+filepath.Base(real), link); err != nil {
				t.Fatal(err)
			}
			return link
		}, ""},
		{"a dangling link into a world-writable directory", func(t *testing.T) string {
			return linkTo(t, filepath.Join(dir(t, 0o777), "missing"))
		}, "every user on this host, through the directory"},
		{"a .. after a link, into another user's directory", func(t *testing.T) string {
			eve := dir(t, 0o755)
			if err := os.Chown(eve, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			sub := filepath.Join(eve, "sub")
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			// The kernel reads eve's directory; the text, cleaned, names
			// a missing file in root's.
			return linkTo(t, sub) + "/../config"
		}, "its owner, user"},
		{"another user's link", func(t *testing.T) string {
			link := linkTo(t, file(t, dir(t, 0o755), 0o644, 0, 0))
			if err := os.Lchown(link, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return link
		}, "its owner, user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.path(t)
			err := CheckFilesAs([]string{p}, Self())
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrUntrustedFile) || !strings.Contains(err.Error(), filepath.Clean(p)) {
				t.Fatalf("err = %v, want one naming %s and %q", err, p, tc.want)
			}
		})
	}
}

// TestCheckSettingsNamedFiles: what the profile in use names besides the
// shared files (the program each credential_process starts, through PATH
// and source_profile too; web_identity_token_file, ca_bundle, and their
// environment variables) is refused when others could change it, and a
// file no profile in use names is not looked at.
func TestCheckSettingsNamedFiles(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to give files to other users")
	}
	for _, k := range []string{"AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE"} {
		t.Setenv(k, "")
	}
	// open returns a world-writable executable in a directory of root's.
	open := func(t *testing.T, name string) string {
		d := t.TempDir()
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
		return p
	}
	safe := write(t, "creds", "#!/bin/sh\nexit 1\n", 0o755)
	openDir := t.TempDir()
	if err := os.Chmod(openDir, 0o777); err != nil {
		t.Fatal(err)
	}
	shebang := write(t, "shebang-creds", "#!"+open(t, "interp")+"\n", 0o755)
	spaced := open(t, "my creds")
	inPath := open(t, "imds-test-creds")
	for _, tc := range []struct {
		name    string
		config  string
		profile string
		env     map[string]string
		want    string // "" = accepted; else the refused path and what names it
	}{
		{"a safe program", "[default]\ncredential_process = " + safe + " --x\n", "", nil, ""},
		{"a missing program", "[default]\ncredential_process = /nonexistent/creds\n", "", nil, ""},
		{"an open program", "[default]\ncredential_process = " + open(t, "creds") + " --profile x\n", "", nil, "what credential_process runs in profile default"},
		{"an open program, quoted", "[default]\ncredential_process = \"" + spaced + "\" --x\n", "", nil, spaced},
		{"an open program, escaped", "[default]\ncredential_process = " + strings.ReplaceAll(spaced, " ", "\\ ") + " --x\n", "", nil, spaced},
		{"an open program after exec", "[default]\ncredential_process = exec " + open(t, "creds") + " --x\n", "", nil, "what credential_process runs in profile default"},
		{"a missing program in a missing directory of root's", "[default]\ncredential_process = " + filepath.Join(filepath.Dir(open(t, "x")), "sub", "creds") + "\n", "", nil, ""},
		{"a missing program where anyone could put it", "[default]\ncredential_process = " + filepath.Join(openDir, "creds") + "\n", "", nil, filepath.Join(openDir, "creds")},
		{"an open program found in PATH", "[default]\ncredential_process = imds-test-creds --x\n", "", map[string]string{"PATH": filepath.Dir(inPath)}, inPath},
		{"a program where anyone could put one earlier in PATH", "[default]\ncredential_process = creds\n", "", map[string]string{"PATH": openDir + ":" + filepath.Dir(safe)}, filepath.Join(openDir, "creds")},
		{"an sh where anyone could put one earlier in PATH", "[default]\ncredential_process = " + safe + "\n", "", map[string]string{"PATH": openDir + ":/usr/bin:/bin"}, "a directory of PATH, where credential_process's programs are found: " + openDir},
		{"a directory anyone may write later in PATH", "[default]\ncredential_process = " + safe + "\n", "", map[string]string{"PATH": "/usr/bin:/bin:" + openDir}, "a directory of PATH"},
		{"an open script an interpreter runs", "[default]\ncredential_process = /bin/sh " + open(t, "creds.sh") + "\n", "", nil, "creds.sh can be changed by every user"},
		{"an open interpreter a script names", "[default]\ncredential_process = " + shebang + "\n", "", nil, "interp can be changed by every user"},
		{"an open program through source_profile", "[profile main]\nrole_arn = arn:aws:iam::123456789012:role/r\nsource_profile = base\n[profile base]\ncredential_process = " + open(t, "creds") + "\n",
			"main", nil, "what credential_process runs in profile base"},
		{"the profile AWS_PROFILE names", "[profile main]\ncredential_process = " + open(t, "creds") + "\n", "", map[string]string{"AWS_PROFILE": "main"}, "profile main"},
		{"an open program in a profile not in use", "[default]\ncredential_process = " + safe + "\n[profile other]\ncredential_process = " + open(t, "creds") + "\n", "", nil, ""},
		{"an open web identity token file", "[default]\nrole_arn = arn:aws:iam::123456789012:role/r\nweb_identity_token_file = " + open(t, "token") + "\n", "", nil, "web_identity_token_file of profile default"},
		{"an open CA bundle", "[default]\nca_bundle = " + open(t, "ca.pem") + "\n", "", nil, "ca_bundle of profile default"},
		{"an open CA bundle in AWS_CA_BUNDLE", "[default]\n", "", map[string]string{"AWS_CA_BUNDLE": open(t, "ca.pem")}, "AWS_CA_BUNDLE"},
		{"an open token file in AWS_WEB_IDENTITY_TOKEN_FILE", "[default]\n", "", map[string]string{"AWS_WEB_IDENTITY_TOKEN_FILE": open(t, "token")}, "AWS_WEB_IDENTITY_TOKEN_FILE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg := write(t, "config", tc.config, 0o600)
			err := CheckSettings(Settings{Profile: tc.profile, SharedConfigFiles: []string{cfg}, SharedCredentialsFiles: []string{}}, Self())
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrUntrustedFile) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "can be changed by every user on this host") {
				t.Fatalf("err = %v, want a refusal naming %q", err, tc.want)
			}
		})
	}

	// A relative path is judged where the SDK would open it: in the
	// working directory.
	t.Run("a relative, open token file", func(t *testing.T) {
		token := open(t, "token")
		t.Chdir(filepath.Dir(token))
		cfg := write(t, "config", "[default]\nrole_arn = arn:aws:iam::123456789012:role/r\nweb_identity_token_file = token\n", 0o600)
		err := CheckSettings(Settings{SharedConfigFiles: []string{cfg}, SharedCredentialsFiles: []string{}}, Self())
		if !errors.Is(err, ErrUntrustedFile) || !strings.Contains(err.Error(), token+" can be changed by every user") {
			t.Errorf("err = %v, want a refusal naming %s", err, token)
		}
	})

	// A program the check cannot tell, as sh would find it, is refused:
	// the check fails closed.
	for _, command := range []string{"$HOME/creds", "~/creds", "/opt/*/creds", `"/opt/$X/creds"`, "PATH=/tmp creds", "A=1 " + safe, "time " + safe, safe + " && /bin/true", "'/opt/creds", "no-such-program-imds-test"} {
		cfg := write(t, "config", "[default]\ncredential_process = "+command+"\n", 0o600)
		err := CheckSettings(Settings{SharedConfigFiles: []string{cfg}, SharedCredentialsFiles: []string{}}, Self())
		if err == nil || errors.Is(err, ErrUntrustedFile) || !strings.Contains(err.Error(), "what credential_process runs in profile default: ") {
			t.Errorf("credential_process = %s: %v, want a refusal saying to name the program by its path", command, err)
		}
	}

	// Load refuses as the check does, and the program is never run.
	ran := filepath.Join(t.TempDir(), "ran")
	script := open(t, "creds")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ntouch "+ran+"\nexit 1\n"), 0o777); err != nil {
		t.Fatal(err)
	}
	cfg := write(t, "config", "[default]\ncredential_process = "+script+"\n", 0o600)
	cfgs, err := Load(context.Background(), Settings{Region: "us-east-1", SharedConfigFiles: []string{cfg}, SharedCredentialsFiles: []string{}})
	if !errors.Is(err, refresh.ErrNoSourceCredentials) || !errors.Is(err, ErrUntrustedFile) {
		t.Errorf("Load with an open credential_process program: %v", err)
	} else if cfgs.Credentials != nil {
		t.Errorf("Load refused but returned credentials")
	}
	if _, err := os.Stat(ran); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the open program ran: %v", err)
	}
}

// TestCommandFiles: the files that decide what a credential_process
// command runs, as sh would run it, or a refusal where the check cannot
// follow sh.
func TestCommandFiles(t *testing.T) {
	bin := t.TempDir()
	script := func(name, text string) string {
		p := filepath.Join(bin, name)
		if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tool := script("creds-tool", "#!/bin/sh\n")
	helper := script("helper-imds-test", "no #! line\n")
	viaEnv := script("via-env", "#!/usr/bin/env helper-imds-test -x\n")
	viaPath := script("via-path", "#!"+bin+"/nested\n")
	nested := script("nested", "#!/opt/imds-test/interp\n")
	awsCLI := script("aws", "#!/usr/bin/python3\n")
	// The README's example, an ELF program with its certificate and key.
	const readmeExample = "/usr/bin/aws_signing_helper credential-process --certificate /etc/imds-agent/aws/host.pem --private-key /etc/imds-agent/aws/host.key " +
		"--trust-anchor-arn arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/TA --profile-arn arn:aws:rolesanywhere:eu-west-1:123456789012:profile/P --role-arn arn:aws:iam::123456789012:role/host-bootstrap"
	envOption := script("env-option", "#!/usr/bin/env -S helper-imds-test\n")
	// A chain of six scripts, one more than the kernel runs; the last
	// five are within its limit.
	chain := make([]string, 6)
	for i := range chain {
		chain[i] = filepath.Join(bin, fmt.Sprintf("chain%d", i))
	}
	for i := range chain {
		next := "/opt/imds-test/x"
		if i+1 < len(chain) {
			next = chain[i+1]
		}
		script(filepath.Base(chain[i]), "#!"+next+"\n")
	}
	t.Setenv("PATH", bin)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for command, want := range map[string]string{
		"  /a/b --x":          "/a/b",
		"'/dir/my creds' --x": "/dir/my creds",
		`"/dir/my creds"`:     "/dir/my creds",
		`/dir/my\ creds`:      "/dir/my creds",
		`'/dir'/creds`:        "/dir/creds",
		`"/dir/a\"b"`:         `/dir/a"b`,
		"exec /open/creds":    "/open/creds",
		readmeExample:         "/usr/bin/aws_signing_helper,/etc/imds-agent/aws/host.pem,/etc/imds-agent/aws/host.key",
		"aws configure export-credentials --profile x --format process": awsCLI + ",/usr/bin/python3",
		"/bin/sh /opt/s.sh --x": "/bin/sh,/opt/s.sh",
		"/usr/bin/true LD_PRELOAD=/a:/b --role arn:aws:iam::1:role/r": "/usr/bin/true,/a,/b",
		"/usr/bin/env x":               "!",
		"/usr/bin/env /open/creds":     "!",
		"timeout 10 creds-tool":        "!",
		"/bin/sh -c /x":                "!",
		"/bin/sh s.sh":                 "!",
		"python3 -c x":                 "!",
		"/usr/bin/python3 -u /x.py":    "!",
		"LD_PRELOAD+=/x /usr/bin/true": "!",
		"exec A=1 creds-tool":          "!",
		chain[0]:                       "!",
		chain[1]:                       strings.Join(chain[1:], ",") + ",/opt/imds-test/x",
		"/usr/bin/python3 /opt/x.py --cert=/etc/c.pem --role arn:aws:iam::1:role/r": "/usr/bin/python3,/opt/x.py,/etc/c.pem",
		"creds-tool --profile x":      tool + ",/bin/sh",
		"exec creds-tool":             tool + ",/bin/sh",
		viaEnv:                        viaEnv + ",/usr/bin/env," + helper,
		viaPath:                       viaPath + "," + nested + ",/opt/imds-test/interp",
		"bin/creds":                   wd + "/bin/creds",
		"sub/../creds":                wd + "/sub/../creds",
		"":                            "",
		"   ":                         "",
		envOption:                     "!",
		"FOO=1 /open/creds":           "!",
		"LD_PRELOAD=/x /usr/bin/true": "!",
		"FOO=1":                       "!",
		"exec A=1 /x":                 "!",
		"exec exec /x":                "!",
		"exec -a name /x":             "!",
		"time /x":                     "!",
		"command /x":                  "!",
		". /x":                        "!",
		"/a/b ; /c":                   "!",
		"/a/b;c":                      "!",
		"/a/b > /tmp/out":             "!",
		"/a/b 2>&1":                   "!",
		"$HOME/creds":                 "!",
		"~/creds":                     "!",
		"/a/*/creds":                  "!",
		"/a/b?":                       "!",
		`"/a/$X"`:                     "!",
		"`which creds`":               "!",
		"'/unclosed":                  "!",
		`"/unclosed`:                  "!",
		`/a\`:                         "!",
		"(creds-tool)":                "!",
		`"" /x`:                       "!",
		"no-such-program-imds-test":   "!",
	} {
		got, _, err := commandFiles(command)
		if want == "!" {
			if err == nil {
				t.Errorf("commandFiles(%q) = %q, want a refusal", command, got)
			}
			continue
		}
		if err != nil || strings.Join(got, ",") != want {
			t.Errorf("commandFiles(%q) = %q, %v; want %q", command, got, err, want)
		}
	}

	if _, _, err := commandFiles("LD_PRELOAD=/x /usr/bin/true"); err == nil || !strings.Contains(err.Error(), "sets LD_PRELOAD before its program") {
		t.Errorf("a variable set before the program: %v, want a refusal naming it", err)
	}

	// A name is judged in every directory of PATH: sh runs whichever of
	// them it can, in order.
	for _, path := range []string{"/nonexistent-imds-test:" + bin, bin + ":/nonexistent-imds-test"} {
		t.Setenv("PATH", path)
		want := strings.ReplaceAll(path, ":", "/creds-tool,") + "/creds-tool,/bin/sh"
		if got, _, err := commandFiles("creds-tool"); err != nil || strings.Join(got, ",") != want {
			t.Errorf("PATH=%s: commandFiles(creds-tool) = %q, %v; want %q", path, got, err, want)
		}
	}
	// Every file of the name in PATH, and the #! line of each: sh moves on
	// past one it cannot run.
	second := t.TempDir()
	if err := os.WriteFile(filepath.Join(second, "creds-tool"), []byte("#!/opt/imds-test/second\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+second)
	if got, _, err := commandFiles("creds-tool"); err != nil || !slices.Contains(got, "/opt/imds-test/second") {
		t.Errorf("commandFiles(creds-tool) with two in PATH = %q, %v; want the second one's interpreter too", got, err)
	}
	for _, path := range []string{"bin:" + bin, bin + "::/usr/bin", bin + ":/opt/%func"} {
		t.Setenv("PATH", path)
		if got, _, err := commandFiles("creds-tool"); err == nil {
			t.Errorf("PATH=%s: commandFiles(creds-tool) = %q, want a refusal", path, got)
		}
	}
}

// TestCheckFilesAsTheService: judged as the service (its user and groups),
// root's group is not the agent's, though it is root's own; and a file the
// check could not look at does not hide a refusal of another.
func TestCheckFilesAsTheService(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to give files to root's group and to judge as another identity")
	}
	d := t.TempDir()
	p := filepath.Join(d, "config")
	if err := os.WriteFile(p, []byte("[default]\nregion = eu-west-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o664); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := CheckFilesAs([]string{p}, Self()); err != nil {
		t.Errorf("as root: %v", err)
	}
	service := Identity{UID: 999, Groups: []uint32{999}}
	if err := CheckFilesAs([]string{p}, service); err == nil || !errors.Is(err, ErrUntrustedFile) || !strings.Contains(err.Error(), "can be changed by the members of group root") {
		t.Errorf("as the service: %v, want a refusal naming group root", err)
	}

	if err := CheckFilesAs([]string{p}, Identity{UID: 999}); err == nil {
		t.Error("as an identity without groups: accepted a file root's group may write")
	}

	unwalkable := filepath.Join(write(t, "file", "", 0o600), "config") // through a file
	open := write(t, "open", "[default]\n", 0o666)
	err := CheckFilesAs([]string{unwalkable, open}, Self())
	if err == nil || !errors.Is(err, ErrUntrustedFile) || !strings.Contains(err.Error(), open) {
		t.Errorf("a path the check cannot walk, then a world-writable file: %v, want the refusal of %s", err, open)
	}
}

// TestLoadNeverUsesIMDS: with no source credentials configured, loading
// fails clearly instead of falling back to the instance metadata service
// or a container endpoint (whose clients are replaced by refusals, so no
// request could leave anyway).
func TestLoadNeverUsesIMDS(t *testing.T) {
	// IMDS enabled as on a host, but pointed at loopback: should anything
	// slip through, nothing leaves the machine.
	t.Setenv("AWS_EC2_METADATA_DISABLED", "")
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9/")
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9/creds")
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"} {
		t.Setenv(k, "")
	}
	dir := t.TempDir()
	s := Settings{Region: "us-east-1", SharedConfigFiles: []string{filepath.Join(dir, "config")}, SharedCredentialsFiles: []string{filepath.Join(dir, "credentials")}}
	_, err := Load(context.Background(), s)
	if err == nil || !errors.Is(err, refresh.ErrNoSourceCredentials) {
		t.Fatalf("Load = %v, want no source credentials", err)
	}

	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "")
	cfg, err := Load(context.Background(), s)
	if err == nil {
		_, err = cfg.Credentials.Retrieve(context.Background())
	}
	if err == nil || !errors.Is(err, refresh.ErrNoSourceCredentials) && !errors.Is(err, ErrExcludedSource) {
		t.Fatalf("without any source: %v, want a refusal to use IMDS", err)
	}

	creds := write(t, "credentials", keys, 0o600)
	s.SharedCredentialsFiles = []string{creds}
	cfg, err = Load(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	v, err := cfg.Credentials.Retrieve(context.Background())
	if err != nil || v.AccessKeyID != "AKIAEXAMPLE000000001" {
		t.Errorf("static keys: %+v %v", v, err)
	}
}

// countingServer is a loopback server that answers nothing and counts
// the requests it gets: where a source must never send anything.
func countingServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	hits := new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	t.Cleanup(srv.Close)
	return srv, hits
}

// TestCredentialSourceEnvironment: a profile assuming a role with the keys
// in the agent's environment (credential_source = Environment) is a source
// like any other, though the SDK labels it as it labels a container
// endpoint; with a container endpoint named in the environment, the agent
// stays on the safe side and refuses it.
func TestCredentialSourceEnvironment(t *testing.T) {
	srv, hits := countingServer(t)
	t.Setenv("AWS_ENDPOINT_URL", srv.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE000000002")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
	for _, k := range []string{"AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"} {
		t.Setenv(k, "")
	}
	cfgFile := write(t, "config", "[profile app]\nrole_arn = arn:aws:iam::123456789012:role/web\ncredential_source = Environment\n", 0o600)
	s := Settings{Region: "us-east-1", Profile: "app", SharedConfigFiles: []string{cfgFile}, SharedCredentialsFiles: []string{filepath.Join(t.TempDir(), "none")}}
	if _, err := Load(context.Background(), s); err != nil {
		t.Errorf("credential_source = Environment: %v", err)
	}
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9/creds")
	if _, err := Load(context.Background(), s); !errors.Is(err, ErrExcludedSource) || !strings.Contains(err.Error(), "shared config files ["+cfgFile+"]") {
		t.Errorf("with a container endpoint named: %v, want a refusal naming the shared config files", err)
	}
	if hits.Load() != 0 {
		t.Errorf("loading called AWS %d times", hits.Load())
	}
}

// TestCredentialProcessOutputNotShown: a credential_process whose output
// is not the expected JSON fails without quoting that output.
func TestCredentialProcessOutputNotShown(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"} {
		t.Setenv(k, "")
	}
	dir := t.TempDir()
	script := write(t, "process", "#!/bin/sh\necho 'AccessKeyId=AKIA SecretAccessKey=leaked-secret-value'\n", 0o755)
	cfgFile := write(t, "config", "[default]\ncredential_process = "+script+"\n", 0o600)
	cfg, err := Load(context.Background(), Settings{Region: "us-east-1", SharedConfigFiles: []string{cfgFile}, SharedCredentialsFiles: []string{filepath.Join(dir, "none")}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfg.Credentials.Retrieve(context.Background())
	if err == nil || strings.Contains(err.Error(), "leaked-secret-value") || !strings.Contains(err.Error(), "credential_process") {
		t.Errorf("err = %v", err)
	}
}

// TestSourceFailureIsTheSources: a credential_process that fails makes the
// STS call it was to sign fail as the host's source credentials, never as
// STS being unreachable, and is retried soon (it says nothing of why it
// failed); STS is never called.
func TestSourceFailureIsTheSources(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"} {
		t.Setenv(k, "")
	}
	srv, hits := countingServer(t)
	t.Setenv("AWS_ENDPOINT_URL", srv.URL)
	script := write(t, "process", "#!/bin/sh\necho 'vault sealed' >&2\nexit 1\n", 0o755)
	cfgFile := write(t, "config", "[default]\ncredential_process = "+script+"\n", 0o600)
	connect := Connector(Settings{Region: "us-east-1", SharedConfigFiles: []string{cfgFile}, SharedCredentialsFiles: []string{filepath.Join(t.TempDir(), "none")}})
	clients, err := connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = clients.STS.AssumeRole(context.Background(), &sts.AssumeRoleInput{RoleArn: aws.String("arn:aws:iam::123456789012:role/web"), RoleSessionName: aws.String("test")})
	if err == nil || !errors.Is(err, refresh.ErrNoSourceCredentials) || refresh.Classify(err) != refresh.Transient {
		t.Errorf("err = %v (class %v), want the source's failure, transient", err, refresh.Classify(err))
	}
	if hits.Load() != 0 {
		t.Errorf("STS was called %d times without credentials to sign with", hits.Load())
	}
}

// TestExcludedSourcesNeverContacted: even past the load-time check, the
// SDK's IMDS and container providers are wired to refuse without sending
// anything: a profile asking for Ec2InstanceMetadata, with the IMDS
// endpoint pointed at a counting server, never reaches it.
func TestExcludedSourcesNeverContacted(t *testing.T) {
	srv, hits := countingServer(t)
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", srv.URL)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "")
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", srv.URL+"/creds")
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"} {
		t.Setenv(k, "")
	}
	for _, source := range []string{"Ec2InstanceMetadata", "EcsContainer"} {
		cfgFile := write(t, "config", "[default]\nrole_arn = arn:aws:iam::123456789012:role/x\ncredential_source = "+source+"\n", 0o600)
		cfg, err := awsconfig.LoadDefaultConfig(context.Background(), loadOptions(Settings{Region: "us-east-1", SharedConfigFiles: []string{cfgFile}})...)
		if err != nil {
			continue // refused while loading: nothing sent either
		}
		if _, err := cfg.Credentials.Retrieve(context.Background()); err == nil {
			t.Errorf("%s: credentials retrieved", source)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the excluded endpoints were contacted %d times", n)
	}
}

// TestSourceRequestsBounded: a source that calls AWS itself (here a
// source_profile whose role is assumed) against an endpoint that never
// answers: each attempt that gives up leaves no request open past the
// source clients' own timeout. The SDK's credential cache ignores the
// attempt's cancellation, so without that timeout every retry would add
// an open connection and its goroutines for as long as the endpoint hangs.
func TestSourceRequestsBounded(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"} {
		t.Setenv(k, "")
	}
	defer func(d time.Duration) { httpTimeout = d }(httpTimeout)
	httpTimeout = 300 * time.Millisecond
	var open, hits atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		open.Add(1)
		defer open.Add(-1)
		// Read the body, so that a client's close cancels r's context;
		// never answer.
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	// The STS-specific variable too: this test is about time, and must
	// not depend on the endpoint fix TestChainEndpoint checks (without it,
	// AWS_ENDPOINT_URL alone would send the chain's call off the host).
	t.Setenv("AWS_ENDPOINT_URL", srv.URL)
	t.Setenv("AWS_ENDPOINT_URL_STS", srv.URL)
	cfgFile := write(t, "config", "[profile base]\naws_access_key_id = AKIAEXAMPLE000000003\naws_secret_access_key = base-secret\n"+
		"[profile app]\nrole_arn = arn:aws:iam::123456789012:role/source\nsource_profile = base\n", 0o600)
	s := Settings{Region: "us-east-1", Profile: "app", SharedConfigFiles: []string{cfgFile}, SharedCredentialsFiles: []string{filepath.Join(t.TempDir(), "none")}}
	for range 3 {
		cfg, err := Load(context.Background(), s) // each attempt loads afresh, as a reconnect does
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		if _, err := cfg.Credentials.Retrieve(ctx); err == nil {
			t.Fatal("the hanging endpoint gave credentials")
		}
		cancel()
	}
	if hits.Load() != 3 {
		t.Fatalf("the source chain's endpoint got %d requests, want 3", hits.Load())
	}
	deadline := time.Now().Add(5 * time.Second)
	for open.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := open.Load(); n > 0 {
		t.Errorf("%d requests of the source chain still open 5s after their attempts gave up", n)
	}
}

// TestReadsAsTheService: judged for the service, a file it could not open
// is refused, for its own mode or for a directory above it; one it may
// read as its owner, through its group or through an ACL passes; the
// token file the environment names is judged too, the program
// credential_process names for running (and reading, unless an ELF
// binary), and the script it gives a shell for reading; and the check
// leaves every thread of this process as it was.
func TestReadsAsTheService(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to judge reads as another user")
	}
	service := Identity{UID: 4242, Groups: []uint32{4243}}
	dir := t.TempDir()
	// t.TempDir's directories are root's alone: open them to everyone.
	for d := dir; d != filepath.Clean(os.TempDir()) && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(path string, mode os.FileMode, uid, gid int) string {
		t.Helper()
		return writeOwned(t, path, "[default]\nregion = eu-west-1\n", mode, uid, gid)
	}
	hidden := filepath.Join(dir, "hidden")
	if err := os.Mkdir(hidden, 0o700); err != nil {
		t.Fatal(err)
	}
	rootOnly := mk(filepath.Join(dir, "root-only"), 0o600, 0, 0)
	underHidden := mk(filepath.Join(hidden, "config"), 0o644, 0, 0)
	byGroup := mk(filepath.Join(dir, "by-group"), 0o640, 0, 4243)
	byOwner := mk(filepath.Join(dir, "by-owner"), 0o600, 4242, 4243)
	byACL := mk(filepath.Join(dir, "by-acl"), 0o600, 0, 0)
	aclSet := setReadACL(t, byACL, 4242)

	before := threadIdentities(t)
	for _, p := range []string{rootOnly, underHidden} {
		err := CheckFilesAs([]string{byGroup, p}, service)
		if !errors.Is(err, ErrUnreadable) || !strings.Contains(err.Error(), p+" cannot be read by user 4242") {
			t.Errorf("%s: %v, want a refusal naming it", p, err)
		}
		if errors.Is(err, fs.ErrPermission) {
			t.Errorf("%s: %v is taken for this process's own lack of access", p, err)
		}
		if err := CheckFilesAs([]string{p}, Self()); err != nil {
			t.Errorf("%s as root: %v", p, err)
		}
	}
	readable := []string{byGroup, byOwner, filepath.Join(dir, "missing")}
	if aclSet {
		readable = append(readable, byACL)
	}
	if err := CheckFilesAs(readable, service); err != nil {
		t.Errorf("files the service may read: %v", err)
	}

	t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", rootOnly)
	err := CheckSettings(Settings{SharedConfigFiles: []string{byGroup}, SharedCredentialsFiles: []string{}}, service)
	if !errors.Is(err, ErrUnreadable) || !strings.Contains(err.Error(), "AWS_WEB_IDENTITY_TOKEN_FILE") {
		t.Errorf("a token file only root may read: %v, want a refusal naming AWS_WEB_IDENTITY_TOKEN_FILE", err)
	}
	t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", byGroup)
	if err := CheckSettings(Settings{SharedConfigFiles: []string{byGroup}, SharedCredentialsFiles: []string{}}, service); err != nil {
		t.Errorf("a token file the service may read: %v", err)
	}

	// The program credential_process names by its path: the service must
	// be able to run it, and to read it too unless it is an ELF binary;
	// the script it gives a shell, to read it. (PATH: directories only
	// root may change, for the check of who may change sh.)
	t.Setenv("PATH", "/usr/bin:/bin")
	elf, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	const sh = "#!/bin/sh\necho\n"
	direct := func(p string) string { return p }
	viaShell := func(p string) string { return "/bin/sh " + p }
	for _, tc := range []struct {
		name, text string
		command    func(string) string
		mode       os.FileMode
		gid        int
		refusal    string // after the file's path; "" for none
	}{
		{"script-root-only", sh, direct, 0o700, 0, " cannot be run by user 4242"},
		{"script-group", sh, direct, 0o750, 4243, ""},
		{"script-group-run-only", sh, direct, 0o710, 4243, " cannot be run by user 4242"},
		{"text-group-run-only", "echo\n", direct, 0o710, 4243, " cannot be run by user 4242"},
		{"program-group-run-only", string(elf), direct, 0o710, 4243, ""},
		{"program-group-read-only", string(elf), direct, 0o740, 4243, " cannot be run by user 4242"},
		{"shell-script-root-only", sh, viaShell, 0o600, 0, " cannot be read by user 4242"},
		{"shell-script-group", sh, viaShell, 0o640, 4243, ""},
	} {
		prog := writeOwned(t, filepath.Join(dir, tc.name), tc.text, tc.mode, 0, tc.gid)
		cfg := writeOwned(t, filepath.Join(dir, "config-"+tc.name), "[default]\ncredential_process = "+tc.command(prog)+"\n", 0o640, 0, 4243)
		err := CheckSettings(Settings{SharedConfigFiles: []string{cfg}, SharedCredentialsFiles: []string{}}, service)
		switch {
		case tc.refusal == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.refusal != "" && (!errors.Is(err, ErrUnreadable) || !strings.Contains(err.Error(), prog+tc.refusal)):
			t.Errorf("%s: %v, want a refusal naming it", tc.name, err)
		}
	}
	// Whoever could change the program is refused before a shared file
	// the service could not read.
	open := writeOwned(t, filepath.Join(dir, "world-writable"), sh, 0o757, 0, 4243)
	cfg := writeOwned(t, filepath.Join(dir, "config-open-program"), "[default]\ncredential_process = "+open+"\n", 0o600, 0, 0)
	err = CheckSettings(Settings{SharedConfigFiles: []string{cfg}, SharedCredentialsFiles: []string{}}, service)
	if !errors.Is(err, ErrUntrustedFile) || !strings.Contains(err.Error(), open) {
		t.Errorf("a program anyone may change, named by a file the service cannot read: %v, want the program refused", err)
	}
	cfg = writeOwned(t, filepath.Join(dir, "config-a-directory"), "[default]\ncredential_process = "+dir+"\n", 0o640, 0, 4243)
	err = CheckSettings(Settings{SharedConfigFiles: []string{cfg}, SharedCredentialsFiles: []string{}}, service)
	if !errors.Is(err, ErrUnreadable) || !strings.Contains(err.Error(), dir+" is not a regular file") {
		t.Errorf("a directory as the program: %v, want a refusal naming it", err)
	}
	missing := filepath.Join(dir, "missing-program")
	cfg = writeOwned(t, filepath.Join(dir, "config-missing"), "[default]\ncredential_process = "+missing+"\n", 0o640, 0, 4243)
	err = CheckSettings(Settings{SharedConfigFiles: []string{cfg}, SharedCredentialsFiles: []string{}}, service)
	if !errors.Is(err, ErrUnreadable) || !strings.Contains(err.Error(), missing+" does not exist") {
		t.Errorf("a program that does not exist: %v, want a refusal naming it", err)
	}

	if after := threadIdentities(t); !slices.Equal(after, before) {
		t.Errorf("threads' identities after the checks:\n%q\nbefore:\n%q", after, before)
	}
}

// threadIdentities returns the distinct Uid, Gid and Groups lines of this
// process's threads (real, effective, saved and file-system IDs).
func threadIdentities(t *testing.T) []string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/status")
		if err != nil {
			continue // the thread ended
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "Uid:") || strings.HasPrefix(line, "Gid:") || strings.HasPrefix(line, "Groups:") {
				if !slices.Contains(ids, line) {
					ids = append(ids, line)
				}
			}
		}
	}
	slices.Sort(ids)
	return ids
}

// setReadACL gives uid read access to path through a POSIX ACL (the
// system.posix_acl_access attribute, as setfacl writes it), and reports
// whether the file system took it.
func setReadACL(t *testing.T, path string, uid uint32) bool {
	t.Helper()
	const (
		userObj, user, groupObj, mask, other = 0x01, 0x02, 0x04, 0x10, 0x20
		undefined                            = 0xffffffff
	)
	acl := binary.LittleEndian.AppendUint32(nil, 2) // the format's version
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{userObj, 6, undefined}, {user, 4, uid}, {groupObj, 0, undefined}, {mask, 4, undefined}, {other, 0, undefined}} {
		acl = binary.LittleEndian.AppendUint16(acl, e.tag)
		acl = binary.LittleEndian.AppendUint16(acl, e.perm)
		acl = binary.LittleEndian.AppendUint32(acl, e.id)
	}
	if err := unix.Setxattr(path, "system.posix_acl_access", acl, 0); err != nil {
		t.Logf("no ACL on %s (%v): the ACL case is left out", path, err)
		return false
	}
	return true
}

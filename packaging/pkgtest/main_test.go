package pkgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imds-agent/imds-agent/packaging/internal/build"
)

// The two builds: the first a dev build, the second a release that must
// upgrade it.
const (
	version1 = "0.0.0~dev20250101000000.aaaaaaa"
	version2 = "0.0.1"
)

// pkgs holds the packages TestMain built for this machine's architecture.
var pkgs struct {
	deb1, deb2, rpm1, rpm2 string
}

// repoRoot is the repository the packages are built from: $PKGTEST_ROOT, or
// the one this module sits in.
func repoRoot() (string, error) {
	if r := os.Getenv("PKGTEST_ROOT"); r != "" {
		return filepath.Abs(r)
	}
	return filepath.Abs("../..")
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "imds-agent-pkgtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	err = buildPackages(dir)
	code := 1
	if err == nil {
		code = m.Run()
	} else {
		fmt.Fprintln(os.Stderr, "pkgtest: building the packages:", err)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildPackages(dir string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	arch := runtime.GOARCH
	for i, v := range []string{version1, version2} {
		bin := filepath.Join(dir, fmt.Sprintf("bin%d", i+1), "imds-agent")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
			"-ldflags", "-s -w -X main.version="+v+" -X main.commit=pkgtest",
			"-o", bin, "./cmd/imds-agent")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("go build: %v\n%s", err, out)
		}
		artifacts, err := build.Build(build.Options{
			Root: root, Version: v, Commit: "pkgtest", Date: time.Unix(1735689600, 0),
			Arch: arch, Binary: bin, OutDir: filepath.Join(dir, "dist"),
		})
		if err != nil {
			return err
		}
		for _, a := range artifacts {
			switch {
			case a.Format == "deb" && i == 0:
				pkgs.deb1 = a.Path
			case a.Format == "deb":
				pkgs.deb2 = a.Path
			case i == 0:
				pkgs.rpm1 = a.Path
			default:
				pkgs.rpm2 = a.Path
			}
		}
	}
	return nil
}

// need skips the test when a tool is missing, except in CI, where
// scripts/test-packages.sh has installed them and a missing one is a failure.
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed (scripts/test-packages.sh installs it)", tool)
			}
			t.Skipf("%s is not installed", tool)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the package tests run as root in CI")
		}
		t.Skip("needs root")
	}
}

// run runs a command with a deadline and returns its combined output.
func run(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	return runIn(t, timeout, nil, name, args...)
}

func runIn(t *testing.T, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %s: %w", name, timeout, ctx.Err())
	}
	return out.String(), err
}

func mustRun(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := run(t, timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// unprivileged is a scratch directory owned by the user nobody, for the
// linters, which must not run as root.
type unprivileged struct {
	dir      string
	uid, gid int
}

func newUnprivileged(t *testing.T) *unprivileged {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("no user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "imds-agent-lint-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	return &unprivileged{dir: dir, uid: uid, gid: gid}
}

// copy copies src into the directory, owned by nobody, and returns the copy.
func (u *unprivileged) copy(t *testing.T, src string, mode os.FileMode) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(u.dir, filepath.Base(src))
	if err := os.WriteFile(dst, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dst, u.uid, u.gid); err != nil {
		t.Fatal(err)
	}
	return dst
}

// run runs a command as nobody with a minimal environment.
func (u *unprivileged) run(t *testing.T, timeout time.Duration, path string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	argv := append([]string{"--reuid=" + strconv.Itoa(u.uid), "--regid=" + strconv.Itoa(u.gid), "--clear-groups",
		"env", "-i", "HOME=" + u.dir, "TMPDIR=" + u.dir, "PATH=" + path, "LC_ALL=C.UTF-8"}, args...)
	cmd := exec.CommandContext(ctx, "setpriv", argv...)
	cmd.Dir = u.dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %s: %w", timeout, ctx.Err())
	}
	return string(out), err
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, os.ErrNotExist)
}

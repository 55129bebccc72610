package build

import (
	"bytes"
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/mod/module"
)

// noticeFile matches the files at a module's root that carry its licence
// terms: LICENSE, LICENCE, COPYING, NOTICE and PATENTS (Go's patent grant),
// alone or with a suffix after a dot or hyphen (LICENSE.txt, LICENSE-MIT,
// COPYING.LESSER), Go source aside.
var noticeFile = regexp.MustCompile(`(?i)^(licen[cs]e|copying|notice|patents)([-.][0-9a-z._-]*[0-9a-z])?$`)

// isNoticeFile reports whether a file at a module's root carries its
// licence terms.
func isNoticeFile(name string) bool {
	return noticeFile.MatchString(name) && !strings.HasSuffix(strings.ToLower(name), ".go")
}

// NoticesName is the file, beside the project's own licence, that holds the
// licences and notices of the code linked into the binary.
const NoticesName = "THIRD_PARTY_NOTICES"

// Notices returns the licences and notices of everything linked into the
// binary: the Go standard library's and each module's, read from the
// module cache, in the order of the binary's build information. MIT and
// BSD licences ask for their text to ship with a binary, and Apache 2.0
// for the NOTICE files. A module with no licence file is an error: no
// package ships without one.
func Notices(binary string) ([]byte, error) {
	bi, err := buildinfo.ReadFile(binary)
	if err != nil {
		return nil, fmt.Errorf("notices: %w", err)
	}
	goroot, modcache, err := goEnv()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "The imds-agent binary contains code from the following, under the licences\nthat follow. imds-agent itself is under the Apache License 2.0 (LICENSE).\n")
	if err := appendNotices(&b, "The Go standard library and runtime ("+bi.GoVersion+")", goroot); err != nil {
		return nil, err
	}
	for _, d := range bi.Deps {
		if d.Replace != nil {
			if d.Replace.Version == "" { // a directory of the builder's
				return nil, fmt.Errorf("notices: %s is replaced by the directory %s, whose licence files are not in the module cache; build the packages without the replacement", d.Path, d.Replace.Path)
			}
			d = d.Replace
		}
		esc, err := module.EscapePath(d.Path)
		if err != nil {
			return nil, fmt.Errorf("notices: %s: %w", d.Path, err)
		}
		escVer, err := module.EscapeVersion(d.Version)
		if err != nil {
			return nil, fmt.Errorf("notices: %s: %w", d.Path, err)
		}
		if err := appendNotices(&b, d.Path+" "+d.Version, filepath.Join(modcache, esc+"@"+escVer)); err != nil {
			return nil, err
		}
	}
	return b.Bytes(), nil
}

// appendNotices adds the licence files at dir's top to b under a heading.
func appendNotices(b *bytes.Buffer, heading, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("notices: %s: %w (is the module downloaded? go mod download)", heading, err)
	}
	var files []string
	for _, e := range entries {
		if e.Type().IsRegular() && isNoticeFile(e.Name()) {
			files = append(files, e.Name())
		}
	}
	if len(files) == 0 {
		return fmt.Errorf("notices: %s: no licence file in %s", heading, dir)
	}
	slices.Sort(files)
	fmt.Fprintf(b, "\n%s\n%s\n", strings.Repeat("=", 79), heading)
	for _, f := range files {
		text, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return fmt.Errorf("notices: %w", err)
		}
		fmt.Fprintf(b, "%s\n-- %s --\n\n%s", strings.Repeat("-", 79), f, text)
		if !bytes.HasSuffix(text, []byte("\n")) {
			b.WriteByte('\n')
		}
	}
	return nil
}

// goEnv returns the Go toolchain's root and module cache.
func goEnv() (goroot, modcache string, err error) {
	out, err := exec.Command("go", "env", "GOROOT", "GOMODCACHE").Output()
	if err != nil {
		return "", "", fmt.Errorf("notices: go env: %w", err)
	}
	f := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(f) != 2 || f[0] == "" || f[1] == "" {
		return "", "", fmt.Errorf("notices: go env gave %q", out)
	}
	return f[0], f[1], nil
}

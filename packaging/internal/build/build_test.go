package build

import (
	"bytes"
	"debug/buildinfo"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/module"
)

func TestPackageVersion(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "v1.2.3", want: "1.2.3"},
		{in: "1.2.3", want: "1.2.3"},
		{in: "1.2.3-4-gabc1234", want: "1.2.3+4.gabc1234"},
		{in: "v1.2.3-4-gabc1234", want: "1.2.3+4.gabc1234"},
		{in: "0.0.0~dev20261128155038.b27d8c7", want: "0.0.0~dev20261128155038.b27d8c7"},
		{in: "", err: "starts with a digit"},
		{in: "v1.3.0-rc1", want: "1.3.0~rc1"},
		{in: "1.3.0-rc.2", want: "1.3.0~rc.2"},
		{in: "v1.3.0-beta-4-gabc1234", want: "1.3.0~beta+4.gabc1234"},
		{in: "1.2.3-4", err: "starts with a digit"},
		{in: "1.2.3-", err: "starts with a digit"},
		{in: "dev", err: "starts with a digit"},
		{in: "1.2 3", err: "starts with a digit"},
	} {
		got, err := PackageVersion(tc.in)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("PackageVersion(%q) = %q, %v; want an error containing %q", tc.in, got, err, tc.err)
			}
		case err != nil || got != tc.want:
			t.Errorf("PackageVersion(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// TestVersionsSortAlikeInDpkgAndRpm checks, with the real tools, that each
// version (after the packages' release "-1") sorts before the next one in
// both dpkg and rpm, so upgrades go the same way on both.
func TestVersionsSortAlikeInDpkgAndRpm(t *testing.T) {
	ascending := []string{
		"0.0.0~dev20250101000000.aaaaaaa",
		"0.0.0~dev20250101000001.0000000",
		"0.0.0~dev20260101000000.fffffff",
		"0.0.0",
		"0.0.1",
		"1.2.3",
		"1.2.3-4-gabc1234",
		"1.2.3-10-g0000000",
		"1.2.4",
		"1.3.0-alpha",
		"1.3.0-rc1",
		"1.3.0-rc1-4-gabc1234",
		"1.3.0-rc2",
		"1.3.0",
		"1.3.0-1-g0000000",
		"1.10.0",
	}
	var vs []string
	for _, v := range ascending {
		pv, err := PackageVersion(v)
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, pv+"-1")
	}
	ran := false
	if _, err := exec.LookPath("dpkg"); err == nil {
		ran = true
		for i := 0; i+1 < len(vs); i++ {
			if err := exec.Command("dpkg", "--compare-versions", vs[i], "lt", vs[i+1]).Run(); err != nil {
				t.Errorf("dpkg: %s is not before %s", vs[i], vs[i+1])
			}
		}
	}
	if _, err := exec.LookPath("rpm"); err == nil {
		ran = true
		for i := 0; i+1 < len(vs); i++ {
			expr := `%{lua: print(rpm.vercmp("` + vs[i] + `", "` + vs[i+1] + `"))}`
			out, err := exec.Command("rpm", "--eval", expr).Output()
			if err != nil {
				t.Fatalf("rpm --eval: %v", err)
			}
			if got := strings.TrimSpace(string(out)); got != "-1" {
				t.Errorf("rpm: vercmp(%s, %s) = %s, want -1", vs[i], vs[i+1], got)
			}
		}
	}
	if !ran {
		t.Skip("neither dpkg nor rpm is installed")
	}
}

// TestNotices: the notices of a binary (the packaging program's) hold the
// Go licence and, for every module it links, that module's licence files;
// a module with none, or missing from the module cache, is an error.
func TestNotices(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "packaging")
	if out, err := exec.Command("go", "build", "-o", bin, "../..").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	got, err := Notices(bin)
	if err != nil {
		t.Fatal(err)
	}
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(got, []byte("The Go standard library and runtime ("+bi.GoVersion+")")) || !bytes.Contains(got, []byte("Copyright 2009 The Go Authors")) {
		t.Error("the notices lack Go's licence")
	}
	if !bytes.Contains(got, []byte("-- PATENTS --")) || !bytes.Contains(got, []byte("Additional IP Rights Grant (Patents)")) {
		t.Error("the notices lack Go's patent grant")
	}
	for _, name := range []string{"LICENSE", "LICENSE.txt", "LICENSE-MIT", "LICENCE.md", "LICENSE.libyaml", "COPYING", "COPYING.LESSER", "NOTICE", "NOTICE.txt", "PATENTS"} {
		if !isNoticeFile(name) {
			t.Errorf("%s is not taken for a licence file", name)
		}
	}
	for _, name := range []string{"README.md", "LICENSES", "go.mod", "license_test.go", "license.go", "LICENSE--"} {
		if isNoticeFile(name) {
			t.Errorf("%s is taken for a licence file", name)
		}
	}
	if len(bi.Deps) == 0 {
		t.Fatal("the binary links no module")
	}
	for _, d := range bi.Deps {
		if !bytes.Contains(got, []byte("\n"+d.Path+" "+d.Version+"\n"+strings.Repeat("-", 79)+"\n-- ")) {
			t.Errorf("the notices lack %s %s", d.Path, d.Version)
		}
	}
	// Apache 2.0 asks for the NOTICE files too: YAML's, for one.
	_, yaml, _ := bytes.Cut(got, []byte("\ngo.yaml.in/yaml/v3 "))
	yaml, _, _ = bytes.Cut(yaml, []byte("\n"+strings.Repeat("=", 79)))
	if !bytes.Contains(yaml, []byte("-- LICENSE --")) || !bytes.Contains(yaml, []byte("-- NOTICE --")) {
		t.Errorf("the notices lack go.yaml.in/yaml/v3's LICENSE or NOTICE:\n%.300s", yaml)
	}

	cache := t.TempDir()
	t.Setenv("GOMODCACHE", cache)
	first := bi.Deps[0]
	if _, err := Notices(bin); err == nil || !strings.Contains(err.Error(), first.Path) || !strings.Contains(err.Error(), "go mod download") {
		t.Errorf("with an empty module cache: %v", err)
	}
	esc, _ := module.EscapePath(first.Path)
	dir := filepath.Join(cache, esc+"@"+first.Version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte("no licence here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Notices(bin); err == nil || !strings.Contains(err.Error(), "no licence file in "+dir) {
		t.Errorf("with a module without a licence: %v", err)
	}
}

package build

import (
	"os/exec"
	"strings"
	"testing"
)

func TestPackageVersion(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "v1.2.3", want: "1.2.3"},
		{in: "1.2.3", want: "1.2.3"},
		{in: "1.2.3-4-gabc1234", want: "1.2.3+4.gabc1234"},
		{in: "v1.2.3-4-gabc1234", want: "1.2.3+4.gabc1234"},
		{in: "0.0.0~dev20261128155038.b27d8c7", want: "0.0.0~dev20261128155038.b27d8c7"},
		{in: "", err: "starts with a digit"},
		{in: "1.2.3-rc1", err: "starts with a digit"},
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

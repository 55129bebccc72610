// Package build turns an imds-agent binary into .deb and .rpm packages with
// nFPM, from the definitions in packaging/deb and packaging/rpm. It owns the
// package version rules and the generated Debian changelog.
package build

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
	"go.yaml.in/yaml/v3"
)

// Formats are the package formats built, each defined in
// packaging/<format>/nfpm.yaml.
var Formats = []string{"deb", "rpm"}

// DefaultMaintainer is the Maintainer (deb) and Packager (rpm) field.
const DefaultMaintainer = "imds-agent maintainers <maintainers@imds-agent.invalid>"

// Options say what to package.
type Options struct {
	Root       string    // the repository root; package sources are relative to it
	Version    string    // the version as `git describe` or VERSION gives it (see PackageVersion)
	Commit     string    // the commit built, for the changelog
	Date       time.Time // the build date: file mtimes and the changelog entry
	Arch       string    // a Go architecture: amd64 or arm64
	Binary     string    // the imds-agent binary built for Arch
	OutDir     string
	Maintainer string // default DefaultMaintainer
}

// Artifact is one package written.
type Artifact struct {
	Format string
	Path   string
	Size   int64
}

// Build writes a .deb and an .rpm for o.Arch to o.OutDir.
func Build(o Options) ([]Artifact, error) {
	version, err := PackageVersion(o.Version)
	if err != nil {
		return nil, err
	}
	if o.Maintainer == "" {
		o.Maintainer = DefaultMaintainer
	}
	if o.Date.IsZero() {
		return nil, errors.New("build: no build date")
	}
	root, err := filepath.Abs(o.Root)
	if err != nil {
		return nil, err
	}
	binary, err := filepath.Abs(o.Binary)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(binary); err != nil {
		return nil, fmt.Errorf("build: the binary: %w", err)
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "imds-agent-packaging-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	changelog := filepath.Join(tmp, "changelog.yml")
	if err := writeChangelog(changelog, version+"-1", o); err != nil {
		return nil, err
	}
	notices, err := Notices(binary)
	if err != nil {
		return nil, err
	}
	noticesFile := filepath.Join(tmp, NoticesName)
	if err := os.WriteFile(noticesFile, notices, 0o644); err != nil {
		return nil, err
	}
	vars := map[string]string{
		"PKG_ARCH":       o.Arch,
		"PKG_VERSION":    version,
		"PKG_BINARY":     binary,
		"PKG_MAINTAINER": o.Maintainer,
		"PKG_NOTICES":    noticesFile,
	}
	var out []Artifact
	for _, format := range Formats {
		a, err := buildOne(root, format, vars, changelog, o)
		if err != nil {
			return out, fmt.Errorf("build %s/%s: %w", format, o.Arch, err)
		}
		out = append(out, a)
	}
	return out, nil
}

func buildOne(root, format string, vars map[string]string, changelog string, o Options) (Artifact, error) {
	var unknown []string
	mapping := func(name string) string {
		if v, ok := vars[name]; ok {
			return v
		}
		if !strings.HasPrefix(name, "NFPM_") { // nFPM asks for its signing passphrases
			unknown = append(unknown, name)
		}
		return ""
	}
	def := filepath.Join(root, "packaging", format, "nfpm.yaml")
	cfg, err := nfpm.ParseFileWithEnvMapping(def, mapping)
	if err != nil {
		return Artifact{}, fmt.Errorf("%s: %w", def, err)
	}
	if len(unknown) > 0 {
		return Artifact{}, fmt.Errorf("%s: unknown variables %v", def, unknown)
	}
	info, err := cfg.Get(format)
	if err != nil {
		return Artifact{}, err
	}
	info.MTime = o.Date.UTC()
	info.Target = ""
	// nFPM resolves source paths against the working directory; anchor them
	// at the repository root instead.
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(root, p)
	}
	for _, c := range info.Contents {
		c.Source = abs(c.Source)
	}
	s := &info.Scripts
	s.PreInstall, s.PostInstall, s.PreRemove, s.PostRemove = abs(s.PreInstall), abs(s.PostInstall), abs(s.PreRemove), abs(s.PostRemove)
	info.Changelog = changelog // nFPM does not expand variables here
	info = nfpm.WithDefaults(info)
	if err := nfpm.Validate(info); err != nil {
		return Artifact{}, err
	}
	packager, err := nfpm.Get(format)
	if err != nil {
		return Artifact{}, err
	}
	path := filepath.Join(o.OutDir, packager.ConventionalFileName(info))
	f, err := os.CreateTemp(o.OutDir, ".partial-*")
	if err != nil {
		return Artifact{}, err
	}
	defer os.Remove(f.Name())
	if err := packager.Package(info, f); err != nil {
		f.Close()
		return Artifact{}, err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return Artifact{}, err
	}
	if err := f.Close(); err != nil {
		return Artifact{}, err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return Artifact{}, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return Artifact{}, err
	}
	return Artifact{Format: format, Path: path, Size: st.Size()}, nil
}

// A pre-release is what follows a release's hyphen in a tag such as
// v1.3.0-rc1: it holds a letter, which tells it from git describe's count.
const preRelease = `[0-9A-Za-z.]*[A-Za-z][0-9A-Za-z.]*`

var (
	tagRe     = regexp.MustCompile(`^([0-9]+\.[0-9]+\.[0-9]+)(?:-(` + preRelease + `))?(?:-([0-9]+)-g([0-9a-f]+))?$`)
	versionRe = regexp.MustCompile(`^[0-9][0-9A-Za-z.+~]*$`)
)

// PackageVersion turns a version as the Makefile computes it into one that
// dpkg and rpm both accept and order the same way:
//
//   - "v1.2.3" or "1.2.3" (a release tag) stays 1.2.3;
//   - "1.2.3-4-gabc1234" (`git describe`, four commits after v1.2.3) becomes
//     1.2.3+4.gabc1234: after 1.2.3 and before 1.2.4 in both;
//   - "1.3.0-rc1" (a pre-release tag) becomes 1.3.0~rc1, before 1.3.0 in
//     both, and "1.3.0-rc1-4-gabc1234" becomes 1.3.0~rc1+4.gabc1234;
//   - "0.0.0~dev20250101120000.abc1234" (no tag) stays: "~" sorts before the
//     empty string in dpkg and in rpm ≥ 4.10, so it precedes 0.0.0, and the
//     timestamp orders dev builds.
//
// Any other hyphen is refused: rpm forbids it in a version and dpkg would
// read it as the Debian revision. The packages add their own release, "-1".
func PackageVersion(v string) (string, error) {
	v = strings.TrimPrefix(v, "v")
	if m := tagRe.FindStringSubmatch(v); m != nil {
		v = m[1]
		if m[2] != "" {
			v += "~" + m[2]
		}
		if m[3] != "" {
			v += "+" + m[3] + ".g" + m[4]
		}
	}
	if !versionRe.MatchString(v) {
		return "", fmt.Errorf("version %q: a package version starts with a digit and holds only letters, digits and .+~ (for example 1.2.3, or a tag such as v1.3.0-rc1)", v)
	}
	return v, nil
}

// changelogEntry is the part of nFPM's changelog format (goreleaser/chglog)
// the Debian changelog needs.
type changelogEntry struct {
	Semver   string    `yaml:"semver"`
	Date     time.Time `yaml:"date"`
	Packager string    `yaml:"packager"`
	Deb      struct {
		Urgency       string   `yaml:"urgency"`
		Distributions []string `yaml:"distributions"`
	} `yaml:"deb"`
	Changes []struct {
		Note string `yaml:"note"`
	} `yaml:"changes"`
}

// writeChangelog writes a one-entry changelog for debVersion: lintian wants
// a changelog whose latest entry is the package's version.
func writeChangelog(path, debVersion string, o Options) error {
	e := changelogEntry{Semver: debVersion, Date: o.Date.UTC(), Packager: o.Maintainer}
	e.Deb.Urgency = "medium"
	e.Deb.Distributions = []string{"stable"}
	note := "Release " + strings.TrimSuffix(debVersion, "-1") + "."
	if strings.Contains(debVersion, "~dev") || strings.Contains(debVersion, "+") {
		note = "Development build"
		if o.Commit != "" {
			note += " of commit " + o.Commit
		}
		note += "."
	}
	e.Changes = append(e.Changes, struct {
		Note string `yaml:"note"`
	}{note})
	data, err := yaml.Marshal([]changelogEntry{e})
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

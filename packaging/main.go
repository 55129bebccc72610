// Command packaging builds imds-agent's .deb and .rpm packages with nFPM (as
// a library, in this module of its own so nFPM's dependencies stay out of the
// daemon's). `make packages` runs it after building the binaries:
//
//	go run . -root .. -version 1.2.3 -commit abc1234 -date 1700000000 \
//	    -bindir ../dist/build -out ../dist -arch "amd64 arm64"
//
// It expects the binary for each architecture at BINDIR/linux_ARCH/imds-agent.
// With -print-version it prints the package version -version gives and
// exits: the Makefile stamps the binaries with it, so that `imds-agent
// version` says what dpkg and rpm say.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imds-agent/imds-agent/packaging/internal/build"
)

func main() {
	root := flag.String("root", "..", "the repository root")
	version := flag.String("version", "", "the version (a tag such as v1.2.3, `git describe` output, or a dev version)")
	commit := flag.String("commit", "", "the commit built")
	date := flag.Int64("date", 0, "the build date in seconds since 1970 (default: now)")
	bindir := flag.String("bindir", "../dist/build", "where the binaries are, as BINDIR/linux_ARCH/imds-agent")
	out := flag.String("out", "../dist", "where to write the packages")
	arches := flag.String("arch", "amd64 arm64", "Go architectures, separated by spaces or commas")
	maintainer := flag.String("maintainer", build.DefaultMaintainer, "the Maintainer/Packager field")
	printVersion := flag.Bool("print-version", false, "print the package version -version gives (what the binaries should say too) and exit")
	flag.Parse()
	if *printVersion {
		v, err := build.PackageVersion(*version)
		if err != nil {
			fmt.Fprintln(os.Stderr, "packaging:", err)
			os.Exit(1)
		}
		fmt.Println(v)
		return
	}
	if err := run(*root, *version, *commit, *date, *bindir, *out, *arches, *maintainer); err != nil {
		fmt.Fprintln(os.Stderr, "packaging:", err)
		os.Exit(1)
	}
}

func run(root, version, commit string, date int64, bindir, out, arches, maintainer string) error {
	when := time.Now()
	if date != 0 {
		when = time.Unix(date, 0)
	}
	for _, arch := range strings.FieldsFunc(arches, func(r rune) bool { return r == ',' || r == ' ' }) {
		artifacts, err := build.Build(build.Options{
			Root:       root,
			Version:    version,
			Commit:     commit,
			Date:       when,
			Arch:       arch,
			Binary:     filepath.Join(bindir, "linux_"+arch, "imds-agent"),
			OutDir:     out,
			Maintainer: maintainer,
		})
		if err != nil {
			return err
		}
		for _, a := range artifacts {
			fmt.Printf("%s\t%d bytes\n", a.Path, a.Size)
		}
	}
	return nil
}

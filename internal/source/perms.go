package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"golang.org/x/sys/unix"
)

// ErrExposedSecret is returned when a file holding a secret key can be
// read by users other than root and the agent.
var ErrExposedSecret = errors.New("a file holding a secret key is readable by other users")

// ErrUntrustedFile is returned when a user other than root and the agent
// could change a shared config or credentials file, or put one in place:
// such a file decides where the agent's credentials come from (a
// credential_process command the agent runs, an endpoint_url it signs
// requests for), so whoever can write it can take the role.
var ErrUntrustedFile = errors.New("a file that decides the agent's source credentials can be changed by other users")

// ServiceUser and ServiceGroup are the user and group the packages create
// for the agent, as whom the unit runs it.
const (
	ServiceUser  = "imds-agent"
	ServiceGroup = "imds-agent"
)

// secretMarkers identify a shared config or credentials file that holds a
// secret, not just settings.
var secretMarkers = [][]byte{[]byte("aws_secret_access_key"), []byte("aws_session_token")}

// Identity is who the agent runs as, for judging its files: root and UID
// are the agent, and so are the groups in Groups.
type Identity struct {
	UID    uint32
	Groups []uint32 // the primary group and the supplementary ones
}

// Self is the identity of this process.
func Self() Identity {
	groups := []uint32{uint32(os.Getgid())}
	if gs, err := os.Getgroups(); err == nil {
		for _, g := range gs {
			groups = append(groups, uint32(g))
		}
	}
	return Identity{UID: uint32(os.Getuid()), Groups: groups}
}

// Service is the identity the unit runs the agent as (the user and its
// groups that the packages create), where that user exists; else Self.
// `check-config` judges the files as the service will, not as root.
func Service() Identity {
	u, err := user.Lookup(ServiceUser)
	if err != nil {
		return Self()
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return Self()
	}
	id := Identity{UID: uint32(uid)}
	gids, _ := u.GroupIds()
	if !slices.Contains(gids, u.Gid) {
		gids = append(gids, u.Gid)
	}
	for _, g := range gids {
		if gid, err := strconv.ParseUint(g, 10, 32); err == nil {
			id.Groups = append(id.Groups, uint32(gid))
		}
	}
	return id
}

// CheckFilesAs refuses, for the agent running as id, a file among paths
// that holds a secret key and that users other than root and the agent
// could read, any file among paths that they could write, or create or
// replace through its directories, and, judging for a user other than this
// process's (root checking for the service), any that id could not read.
// Missing files are fine (the SDK skips them) when no one else could put
// them there; the config file of the agent itself holds no secrets and is
// not checked. Every file is looked at: a refusal is returned before an
// error that kept a file from being checked (one id or this process may
// not read, say).
func CheckFilesAs(paths []string, id Identity) error {
	uids := []uint32{0, id.UID}
	fixGroup := "root"
	if len(id.Groups) > 0 {
		fixGroup = groupName(id.Groups[0])
	}
	// The packages make the files readable by the service's group; that
	// is fine whoever runs the agent.
	readers := slices.Clone(id.Groups)
	if g, err := user.LookupGroup(ServiceGroup); err == nil {
		if gid, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
			readers = append(readers, uint32(gid))
			fixGroup = ServiceGroup
		}
	}
	files := make([]namedFile, len(paths))
	for i, p := range paths {
		files[i] = namedFile{path: p, need: unix.R_OK}
	}
	refusal, unchecked := untrusted(files, id)
	if refusal != nil {
		return refusal
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		var data []byte
		if err == nil {
			data, err = os.ReadFile(p)
		}
		if err != nil {
			if unchecked == nil {
				unchecked = fmt.Errorf("source credentials: %w", err)
			}
			continue
		}
		secret := false
		for _, m := range secretMarkers {
			secret = secret || bytes.Contains(bytes.ToLower(data), m)
		}
		if !secret {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			continue
		}
		mode := fi.Mode().Perm()
		var who string
		switch {
		case mode&0o004 != 0:
			who = "every user on this host"
		case mode&0o040 != 0 && !slices.Contains(readers, st.Gid):
			who = fmt.Sprintf("the members of group %s", groupName(st.Gid))
		case mode&0o400 != 0 && !slices.Contains(uids, st.Uid):
			who = fmt.Sprintf("its owner, user %s", userName(st.Uid))
		}
		if who != "" {
			return fmt.Errorf("%s holds a secret key and is readable by %s (mode %04o): %w; make it readable by root and the agent only: chown root:%s %s && chmod 0640 %s",
				p, who, mode, ErrExposedSecret, fixGroup, p, p)
		}
	}
	if refusal := unusable(files, id); refusal != nil {
		return refusal
	}
	return unchecked
}

// untrusted runs checkWriters, for the agent running as id, on each of
// files. It returns the first refusal, and the first error that kept a
// file from being checked, or that its path could not be told.
func untrusted(files []namedFile, id Identity) (refusal, unchecked error) {
	uids := []uint32{0, id.UID}
	for _, f := range files {
		what := ""
		if f.what != "" {
			what = f.what + ": "
		}
		if f.err != nil {
			if unchecked == nil {
				unchecked = fmt.Errorf("source credentials: %s%w", what, f.err)
			}
			continue
		}
		var w *writers
		switch err := checkWriters(f.path, uids, id.Groups); {
		case errors.As(err, &w):
			return fmt.Errorf("source credentials: %s%w: %w", what, err, ErrUntrustedFile), unchecked
		case err != nil && unchecked == nil:
			unchecked = fmt.Errorf("source credentials: checking who may change %s%s: %w", what, f.path, err)
		}
	}
	return nil, unchecked
}

// CheckSettings is CheckFilesAs for everything s names that decides the
// source credentials: its shared config and credentials files, and what
// the profile it uses names, through its source_profile chain and the
// environment (AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE, AWS_CA_BUNDLE):
// the program each credential_process starts, each
// web_identity_token_file and each ca_bundle. Whoever could change one of
// those could take the role as surely as through the file that names it:
// the program prints the credentials, the token file says whose they are,
// and the CA bundle says whom the agent trusts to be STS. The token files
// and CA bundles are also judged for reading as the shared files are, and
// a program named by its path for running.
func CheckSettings(s Settings, id Identity) error {
	err := CheckFilesAs(append(slices.Clone(s.SharedCredentialsFiles), s.SharedConfigFiles...), id)
	if errors.Is(err, ErrUntrustedFile) || errors.Is(err, ErrExposedSecret) {
		return err
	}
	// Whoever could change a named file comes first: that is a way to
	// the role, a file the agent cannot read only a way to fail.
	var sharedUnread error
	if errors.Is(err, ErrUnreadable) {
		sharedUnread, err = err, nil
	}
	named := namedFiles(s)
	refusal, unchecked := untrusted(named, id)
	unread := unusable(named, id)
	for _, e := range []error{refusal, sharedUnread, unread, err, unchecked} {
		if e != nil {
			return e
		}
	}
	return nil
}

// NamedFiles returns the paths of the files the source settings s name
// besides the shared files, those CheckSettings judges.
func NamedFiles(s Settings) []string {
	var paths []string
	for _, f := range namedFiles(s) {
		if f.err == nil {
			paths = append(paths, f.path)
		}
	}
	return paths
}

// namedFile is a file the source settings name besides the shared files:
// its path and what names it, or why the path cannot be told.
type namedFile struct {
	path, what string
	// need is the access the agent needs besides the check of who may
	// change it: unix.R_OK for a file the SDK reads (a token file, a CA
	// bundle, the script credential_process gives a shell), unix.X_OK for
	// the program credential_process names by its path; 0 for the rest.
	need uint32
	err  error
}

// namedFiles returns the files the source settings s name besides the
// shared files. A profile the files do not hold, or files the SDK cannot
// parse, name nothing here: loading reports them. A relative path is the
// file the SDK would open, in the working directory.
func namedFiles(s Settings) []namedFile {
	var files []namedFile
	add := func(p, what string, need uint32) {
		if p != "" {
			files = append(files, namedFile{path: absolute(p), what: what, need: need})
		}
	}
	env, _ := awsconfig.NewEnvConfig()
	add(env.WebIdentityTokenFilePath, "the web identity token file AWS_WEB_IDENTITY_TOKEN_FILE names", unix.R_OK)
	add(env.CustomCABundle, "the CA bundle AWS_CA_BUNDLE names", unix.R_OK)
	profile := s.Profile
	if profile == "" {
		profile = env.SharedConfigProfile
	}
	if profile == "" {
		profile = "default"
	}
	sc, err := awsconfig.LoadSharedConfigProfile(context.Background(), profile, func(o *awsconfig.LoadSharedConfigOptions) {
		o.ConfigFiles, o.CredentialsFiles = s.SharedConfigFiles, s.SharedCredentialsFiles
	})
	if err != nil {
		return files
	}
	shell := false // a credential_process runs
	for c, n := &sc, 0; c != nil && n < maxProfiles; c, n = c.Source, n+1 {
		if c.CredentialProcess != "" {
			what := "what credential_process runs in profile " + c.Profile
			paths, uses, err := commandFiles(c.CredentialProcess)
			if err != nil {
				files = append(files, namedFile{what: what, err: err})
			}
			need := map[string]uint32{}
			for _, u := range uses {
				need[u.path] |= u.mode
			}
			for _, p := range paths {
				add(p, what, need[p])
			}
			shell = true
		}
		add(c.WebIdentityTokenFile, "the web_identity_token_file of profile "+c.Profile, unix.R_OK)
		add(c.CustomCABundle, "the ca_bundle of profile "+c.Profile, unix.R_OK)
	}
	if shell {
		// The SDK starts the command as exec.Command("sh", "-c", …); sh,
		// and the programs it and they start by name, come from PATH.
		dirs, err := pathDirs()
		if err != nil {
			files = append(files, namedFile{what: "PATH, where credential_process's programs are found", err: err})
		}
		for _, d := range dirs {
			add(d, "a directory of PATH, where credential_process's programs are found", 0)
			add(d+"/sh", "the sh that runs credential_process", 0)
		}
	}
	return files
}

// absolute makes a relative path absolute from the working directory
// without cleaning it: checkWriters walks a ".." after a link as the
// kernel does, from where the link led.
func absolute(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	if wd, err := os.Getwd(); err == nil {
		return wd + "/" + p
	}
	return p
}

// maxProfiles bounds the source_profile chain walked; the SDK refuses a
// chain that loops back on itself before it gets here.
const maxProfiles = 64

// errUnfollowable is the answer to a command the check cannot follow as
// sh would.
var errUnfollowable = errors.New("the command uses shell syntax the agent cannot follow (an expansion, a glob, an operator, a redirection or an unclosed quote); make it a program's path and its arguments, with literal text in single quotes")

// shellKeywords are sh's reserved words and the builtins of dash and bash:
// a command starting with one runs no program of that name from PATH, and
// some of them (command, eval, time, .) run another the check cannot see.
var shellKeywords = strings.Fields(`! case coproc do done elif else esac fi for function if in select then
	time until while [[ ]] . : [ alias bg bind break builtin caller cd chdir command compgen complete
	compopt continue declare dirs disown echo enable eval exec exit export false fc fg getopts hash help
	history jobs kill let local logout mapfile popd printf pushd pwd read readarray readonly return set
	shift shopt source suspend test times trap true type typeset ulimit umask unalias unset wait`)

// maxInterpreters bounds the #! lines followed: the kernel runs a chain
// of five scripts before the program, and refuses a sixth.
const maxInterpreters = 5

// runners run another program, or code, that their arguments name, which
// the check cannot follow. shells and interpreters are taken only with a
// script's path first and no options before it (sh -c, python3 -c and
// perl -e run code given inline).
var (
	runners = strings.Fields(`env nice nohup timeout stdbuf setsid xargs sudo doas su runuser chroot ionice
		taskset chrt flock time watch unshare nsenter setpriv systemd-run busybox strace ltrace`)
	shells       = strings.Fields(`sh bash dash zsh ksh mksh ash fish csh tcsh`)
	interpreters = strings.Fields(`python perl ruby node nodejs php lua awk gawk mawk tclsh`)
)

// commandFiles returns the files that decide what a credential_process
// command runs (the SDK runs it with sh -c): the program (a path, or the
// file of its name in every directory of PATH, any of which sh could run),
// the interpreters their #! lines name (for #!/usr/bin/env NAME, NAME's
// files in PATH), and every argument that is a path, absolute or existing,
// or holds one after an '=' (a script, a certificate, a key). It fails
// closed: anything sh would expand, redirect or chain, a variable set
// before the program, a shell builtin or reserved word first, a wrapper
// that runs another program (env, timeout, nice…), and a shell or
// interpreter given anything but a script's path are errors. What a
// script does beyond that is its own. uses says what the agent must be
// able to do with the files named by absolute paths: run the program, and
// read the script a shell or interpreter is given. A program sh finds in
// PATH, or a relative path, is left out: the service's PATH and working
// directory (/) are not this process's.
func commandFiles(command string) (files []string, uses []access, err error) {
	var words []word
	for rest := strings.TrimLeft(command, " \t"); rest != ""; rest = strings.TrimLeft(rest, " \t") {
		w, n, ok := shellWord(rest)
		if !ok {
			return nil, nil, errUnfollowable
		}
		words, rest = append(words, w), rest[n:]
	}
	if len(words) > 0 && words[0].text == "exec" && !words[0].quoted {
		words = words[1:] // the next word is the program, whatever it looks like
	}
	if len(words) == 0 {
		return nil, nil, nil
	}
	prog := words[0].text
	base := filepath.Base(prog)
	interpreted := slices.Contains(shells, base) || slices.ContainsFunc(interpreters, func(i string) bool { return strings.HasPrefix(base, i) })
	switch {
	case strings.Contains(prog, "="):
		name, _, _ := strings.Cut(prog, "=")
		return nil, nil, fmt.Errorf("the command sets %s before its program; a variable there (PATH, LD_PRELOAD, BASH_ENV…) could decide what runs: set it in the program instead", strings.TrimSuffix(name, "+"))
	case prog == "" || strings.HasPrefix(prog, "-") || !strings.Contains(prog, "/") && slices.Contains(shellKeywords, prog):
		return nil, nil, fmt.Errorf("the command starts with %q, which sh does not run from PATH; start it with the program's path", prog)
	case slices.Contains(runners, base):
		return nil, nil, fmt.Errorf("the command starts with %s, which runs another program its arguments name; put the command in a script and start that by its path", base)
	case interpreted:
		if len(words) < 2 || strings.HasPrefix(words[1].text, "-") || !strings.Contains(words[1].text, "/") {
			return nil, nil, fmt.Errorf("the command starts with %s without a script's path right after it; name the script by its path, with no options before it", base)
		}
	}
	files, runs, err := programFiles(prog)
	if err != nil {
		return nil, nil, err
	}
	more, err := interpreterChain(runs, 1)
	if err != nil {
		return nil, nil, err
	}
	files = append(files, more...)
	for _, w := range words[1:] {
		files = append(files, argumentFiles(w.text)...)
	}
	if filepath.IsAbs(prog) {
		uses = append(uses, access{prog, unix.X_OK})
	}
	if interpreted && filepath.IsAbs(words[1].text) {
		uses = append(uses, access{words[1].text, unix.R_OK})
	}
	return files, uses, nil
}

// argumentFiles returns the paths in an argument: the word itself when it
// holds a slash, and each ':'-separated part after an '=' (--cert=/x,
// LD_PRELOAD=/a:/b) that does. An absolute path is judged whether or not
// the file exists; a relative one only where it exists, from the working
// directory (the service's is /, and its /tmp is its own): a word such as
// arn:aws:iam::123456789012:role/r is no file.
func argumentFiles(arg string) []string {
	parts := []string{arg}
	if _, after, ok := strings.Cut(arg, "="); ok {
		parts = append(parts, strings.Split(after, ":")...)
	}
	var files []string
	for _, p := range parts {
		switch {
		case strings.HasPrefix(p, "/"):
			files = append(files, p)
		case strings.Contains(p, "/"):
			if _, err := os.Lstat(p); err == nil {
				files = append(files, absolute(p))
			}
		}
	}
	return files
}

// programFiles returns the files that decide which program name is, as sh
// finds it: the path itself when it holds a slash (whether or not the file
// exists: who could create it matters as much), else that name in every
// directory of PATH. runs are the files sh could run: the path, or every
// executable file of that name in PATH (sh moves on past one it cannot
// run).
func programFiles(name string) (files, runs []string, err error) {
	if strings.Contains(name, "/") {
		return []string{absolute(name)}, []string{absolute(name)}, nil
	}
	dirs, err := pathDirs()
	if err != nil {
		return nil, nil, err
	}
	for _, d := range dirs {
		p := d + "/" + name
		files = append(files, p)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			runs = append(runs, p)
		}
	}
	if len(runs) == 0 {
		return nil, nil, fmt.Errorf("no program %q in PATH; start the command with the program's path", name)
	}
	return files, runs, nil
}

// interpreterChain returns the files that decide the interpreters the #!
// lines of runs name, and theirs in turn, at depth (the first level is 1).
func interpreterChain(runs []string, depth int) ([]string, error) {
	var files []string
	for _, r := range runs {
		more, next, err := interpreterFiles(r)
		if err != nil {
			return nil, err
		}
		if len(next) > 0 && depth > maxInterpreters {
			return nil, fmt.Errorf("%s: more than %d interpreters in a row, which the kernel does not run", r, maxInterpreters)
		}
		deeper, err := interpreterChain(next, depth+1)
		if err != nil {
			return nil, err
		}
		files = append(append(files, more...), deeper...)
	}
	return files, nil
}

// interpreterFiles reads the #! line of the file at path, if it has one,
// and returns the files that decide the interpreter it names, and the
// files that could be that interpreter, to read in turn. A file that is
// there but cannot be read is an error: the kernel would read its #! line.
func interpreterFiles(path string) (files, next []string, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, nil, nil // judged as a missing file
	}
	if err != nil {
		return nil, nil, fmt.Errorf("cannot read %s to see what it runs: %w", path, err)
	}
	defer f.Close()
	head := make([]byte, 256)
	n, _ := io.ReadFull(f, head)
	line, _, _ := strings.Cut(string(head[:n]), "\n")
	line, ok := strings.CutPrefix(line, "#!")
	if !ok {
		return nil, nil, nil
	}
	fields := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' }) // as the kernel splits it
	if len(fields) == 0 {
		return nil, nil, nil
	}
	interp := fields[0]
	if !strings.Contains(interp, "/") {
		interp = "./" + interp // the kernel takes it from the working directory
	}
	files, next, err = programFiles(interp)
	if err != nil || filepath.Base(fields[0]) != "env" || len(fields) < 2 {
		return files, next, err
	}
	// #!/usr/bin/env NAME: NAME comes from PATH.
	if strings.HasPrefix(fields[1], "-") || strings.Contains(fields[1], "=") {
		return nil, nil, fmt.Errorf("%s starts with #!%s, which the agent cannot follow; name the interpreter by its path", path, line)
	}
	more, next, err := programFiles(fields[1])
	return append(files, more...), next, err
}

// pathDirs returns the directories of PATH, where sh and exec.Command look
// for a program named without a path. An empty or relative one (sh
// searches the working directory for it) and one holding '%' (dash reads
// options there) are refused.
func pathDirs() ([]string, error) {
	var dirs []string
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		if !filepath.IsAbs(d) || strings.Contains(d, "%") {
			return nil, fmt.Errorf("PATH holds %q, which is no absolute directory; a program could be put there", d)
		}
		if d != "/" {
			d = strings.TrimSuffix(d, "/")
		}
		dirs = append(dirs, d)
	}
	return dirs, nil
}

// word is one word of a shell command, with its quotes removed.
type word struct {
	text   string
	quoted bool // some of it was quoted or escaped
}

// shellWord reads the first word of s (which starts with no blank) as
// POSIX sh would, and how many bytes it took. ok is false at anything that
// sh would expand or treat as an operator, and at an unclosed quote.
func shellWord(s string) (w word, n int, ok bool) {
	var b strings.Builder
	for n < len(s) {
		c := s[n]
		switch {
		case c == ' ' || c == '\t':
			w.text = b.String()
			return w, n, true
		case c == '\\':
			if n+1 >= len(s) || s[n+1] == '\n' {
				return w, n, false
			}
			b.WriteByte(s[n+1])
			w.quoted = true
			n += 2
		case c == '\'':
			end := strings.IndexByte(s[n+1:], '\'')
			if end < 0 {
				return w, n, false
			}
			b.WriteString(s[n+1 : n+1+end])
			w.quoted = true
			n += end + 2
		case c == '"':
			n++
			for {
				if n >= len(s) {
					return w, n, false
				}
				d := s[n]
				if d == '"' {
					n++
					break
				}
				if d == '$' || d == '`' {
					return w, n, false
				}
				if d == '\\' && n+1 < len(s) && strings.IndexByte("\\\"$`", s[n+1]) >= 0 {
					d = s[n+1]
					n++
				} else if d == '\\' && n+1 < len(s) && s[n+1] == '\n' {
					return w, n, false
				}
				b.WriteByte(d)
				n++
			}
			w.quoted = true
		case strings.IndexByte("$`*?[;&|<>(){}#~!\n", c) >= 0:
			// '#' and '~' only start a comment or an expansion at the
			// start of a word, and '!' only as a word of its own; they
			// are refused anywhere, which is only stricter.
			return w, n, false
		default:
			b.WriteByte(c)
			n++
		}
	}
	w.text = b.String()
	return w, n, true
}

// maxLinks bounds the symbolic links followed on one path, as the kernel's
// own limit does.
const maxLinks = 40

// writers is what checkWriters finds: someone other than root and the
// agent can change the file or what its path leads to.
type writers struct{ msg string }

func (w *writers) Error() string { return w.msg }

// checkWriters reports who other than root and the agent (uids, in groups)
// could change the file at path or what the path leads to. It walks the
// path from / one name at a time, as the kernel resolves it, following each
// symbolic link where it is met: every directory passed through, every
// link and the file itself must be owned by root or the agent and writable
// by no one else (group write only for the agent's own groups). A directory
// others may write to is fine only with the sticky bit (/tmp, /nix/store),
// and only for an entry in it that exists and that root or the agent owns:
// anyone could put a missing one there. A missing file, or a missing directory on
// the way, is fine when no one else could create it. Such findings are
// *writers errors; any other error is one that kept the walk from looking.
func checkWriters(path string, uids, groups []uint32) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%s is not an absolute path", path)
	}
	// The walk takes the path as written: the kernel resolves a ".." after
	// a link from where the link led, which cleaning the text would not.
	raw := path
	path = filepath.Clean(path)
	trusted := func(st *syscall.Stat_t) bool { return slices.Contains(uids, st.Uid) }
	refuse := func(what string, fi fs.FileInfo, who string) error {
		st := fi.Sys().(*syscall.Stat_t)
		return &writers{fmt.Sprintf("%s can be changed by %s, through %s (owner %s, mode %s); let root alone write it and its directories",
			path, who, what, userName(st.Uid), fi.Mode())}
	}
	// judge checks one entry: a directory passed through (with whether the
	// entry below it exists and is trusted), a link, or the file.
	judge := func(name string, fi fs.FileInfo, childTrusted bool) error {
		st := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode()
		what := "the file " + name
		switch {
		case name == path:
			what = "it"
		case mode.IsDir():
			what = "the directory " + name
		case mode.Type() == fs.ModeSymlink:
			what = "the link " + name
		}
		switch {
		case !trusted(st):
			return refuse(what, fi, "its owner, user "+userName(st.Uid))
		case mode.Type() == fs.ModeSymlink:
			return nil // a link's own mode means nothing
		}
		// In a sticky directory only an entry's owner may replace it.
		if mode.IsDir() && mode&fs.ModeSticky != 0 && childTrusted {
			return nil
		}
		switch {
		case mode&0o002 != 0:
			return refuse(what, fi, "every user on this host")
		case mode&0o020 != 0 && !slices.Contains(groups, st.Gid):
			return refuse(what, fi, "the members of group "+groupName(st.Gid))
		}
		return nil
	}
	todo := strings.Split(strings.TrimPrefix(raw, "/"), "/")
	dir, links := "/", 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		if name == "" || name == "." {
			continue
		}
		next := filepath.Join(dir, name) // dir holds no link, so ".." is its parent
		fi, err := os.Lstat(next)
		dirInfo, derr := os.Lstat(dir)
		if derr != nil {
			return derr
		}
		if errors.Is(err, fs.ErrNotExist) {
			return judge(dir, dirInfo, false) // who could create it?
		}
		if err != nil {
			return err
		}
		if !trusted(fi.Sys().(*syscall.Stat_t)) {
			return judge(next, fi, false) // its owner, the plainer answer
		}
		if err := judge(dir, dirInfo, true); err != nil {
			return err
		}
		if fi.Mode().Type() == fs.ModeSymlink {
			if err := judge(next, fi, false); err != nil {
				return err
			}
			if links++; links > maxLinks {
				return fmt.Errorf("%s: more than %d symbolic links", path, maxLinks)
			}
			target, err := os.Readlink(next)
			if err != nil {
				return err
			}
			if filepath.IsAbs(target) {
				dir = "/"
			}
			todo = append(strings.Split(strings.Trim(target, "/"), "/"), todo...)
			continue
		}
		if len(todo) == 0 {
			return judge(path, fi, false)
		}
		dir = next
	}
	return nil
}

func groupName(gid uint32) string {
	if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
		return g.Name
	}
	return strconv.FormatUint(uint64(gid), 10)
}

func userName(uid uint32) string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		return u.Username
	}
	return strconv.FormatUint(uint64(uid), 10)
}

// Package config owns the agent's configuration file: its schema, strict
// decoding (unknown keys are errors that name the key and its line), the
// defaults, and validation whose messages say what to change.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"
)

// DefaultPath is where packages install the configuration file.
const DefaultPath = "/etc/imds-agent/config.yaml"

// Config is the whole configuration file, version 1.
type Config struct {
	Version         int             `yaml:"version"`
	Instance        Instance        `yaml:"instance"`
	Credentials     Credentials     `yaml:"credentials"`
	MetadataOptions MetadataOptions `yaml:"metadata_options"`
	Listen          Listen          `yaml:"listen"`
	Access          Access          `yaml:"access"`
	Admin           Admin           `yaml:"admin"`
	Log             Log             `yaml:"log"`
	Metrics         Metrics         `yaml:"metrics"`
}

// Instance describes the instance the host presents itself as. Empty fields
// are filled from the host itself (see package hostinfo).
type Instance struct {
	ID               string `yaml:"id"`
	Region           string `yaml:"region"`
	AvailabilityZone string `yaml:"availability_zone"`
	Type             string `yaml:"type"`
	AMIID            string `yaml:"ami_id"`
	AccountID        string `yaml:"account_id"`
	Hostname         string `yaml:"hostname"`
	LocalHostname    string `yaml:"local_hostname"`
	LocalIPv4        string `yaml:"local_ipv4"`
	MAC              string `yaml:"mac"`
	UserDataFile     string `yaml:"user_data_file"`
}

// Credentials says which role to serve and where the host's own (source)
// credentials come from.
type Credentials struct {
	InstanceProfile string   `yaml:"instance_profile"`
	RoleARN         string   `yaml:"role_arn"`
	ExternalID      string   `yaml:"external_id"`
	SessionDuration Duration `yaml:"session_duration"`
	// RefreshBeforeExpiry is zero for "auto": min(30m, half the lifetime).
	RefreshBeforeExpiry    RefreshWindow `yaml:"refresh_before_expiry"`
	ProfileRecheck         Duration      `yaml:"profile_recheck"`
	SourceProfile          string        `yaml:"source_profile"`
	SharedConfigFiles      []string      `yaml:"shared_config_files"`
	SharedCredentialsFiles []string      `yaml:"shared_credentials_files"`
}

// MetadataOptions mirrors EC2's instance metadata options.
type MetadataOptions struct {
	HTTPEndpoint            string `yaml:"http_endpoint"`
	HTTPTokens              string `yaml:"http_tokens"`
	HTTPPutResponseHopLimit int    `yaml:"http_put_response_hop_limit"`
	HTTPProtocolIPv6        string `yaml:"http_protocol_ipv6"`
}

// Listen says where the metadata service is served.
type Listen struct {
	Link      string   `yaml:"link"`
	Addresses []string `yaml:"addresses"`
}

// Access is the local access policy; see package access.
type Access struct {
	Credentials Rules `yaml:"credentials"`
	Metadata    Rules `yaml:"metadata"`
	// BindTokensToUID makes a token valid only for the local user that asked
	// for it.
	BindTokensToUID bool `yaml:"bind_tokens_to_uid"`
	// TokenRateLimit is the number of tokens one caller may obtain per
	// second; 0 means unlimited, as on EC2.
	TokenRateLimit float64 `yaml:"token_rate_limit"`
}

// Rules are allow and deny lists of selectors such as "user:www-data".
type Rules struct {
	Allow []string `yaml:"allow"`
	Deny  []string `yaml:"deny"`
}

// Admin configures the local control socket used by `status` and `refresh`.
type Admin struct {
	Socket string `yaml:"socket"`
}

// Log configures the agent's own log output.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
	// Audit turns the per-response audit record on or off (on by default).
	Audit bool `yaml:"audit"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	Listen string `yaml:"listen"`
}

// Option values, named as EC2 names them.
const (
	Enabled  = "enabled"
	Disabled = "disabled"
	Required = "required"
	Optional = "optional"
)

// Defaults for values the file may leave out.
const (
	DefaultSessionDuration = time.Hour
	MinSessionDuration     = 15 * time.Minute // STS's minimum
	MinRefreshWindow       = 5 * time.Minute  // the least refresh_before_expiry
	MaxSessionDuration     = 12 * time.Hour   // STS's maximum
	DefaultProfileRecheck  = 5 * time.Minute
	DefaultLink            = "imds0"
	DefaultAdminSocket     = "/run/imds-agent/admin.sock"
	IPv4Address            = "169.254.169.254:80"
	IPv6Address            = "[fd00:ec2::254]:80"
)

// The SDK files the agent reads its source credentials from by default:
// the service user has no home directory, so the SDK's own defaults do not
// apply.
const (
	DefaultSharedConfigFile      = "/etc/imds-agent/aws/config"
	DefaultSharedCredentialsFile = "/etc/imds-agent/aws/credentials"
)

// MaxFileSize bounds the configuration file. A real one is a few
// kilobytes, even with long access lists; a path given by mistake (a log,
// a device) must not be read into memory whole.
const MaxFileSize = 1 << 20

// Load reads, decodes, defaults and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// AdminSocket returns the admin socket the file at path names, reading
// nothing else: status and refresh must reach a running agent even while
// its file holds a change that a reload refused. It is the default socket
// when the file does not name one or cannot be read.
func AdminSocket(path string) string {
	data, err := readFile(path)
	if err != nil {
		return DefaultAdminSocket
	}
	var c struct {
		Admin struct {
			Socket string `yaml:"socket"`
		} `yaml:"admin"`
	}
	if yaml.Unmarshal(data, &c) != nil || !filepath.IsAbs(c.Admin.Socket) {
		return DefaultAdminSocket
	}
	return c.Admin.Socket
}

// readFile reads the regular file at path, up to MaxFileSize. It is opened
// without waiting: a FIFO given by mistake would otherwise hold a start, a
// reload (and the stop after it) or check-config until something wrote
// to it.
func readFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("config file %s does not exist", path)
		}
		return nil, fmt.Errorf("reading config: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("config file %s is not a regular file (it is a %s); is it the right file?", path, fileKind(fi.Mode()))
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("config file %s is larger than %d KiB; is it the right file?", path, MaxFileSize>>10)
	}
	return data, nil
}

// fileKind names the type of a file that is not a regular one.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&os.ModeNamedPipe != 0:
		return "FIFO"
	case m&os.ModeSocket != 0:
		return "socket"
	case m&os.ModeCharDevice != 0:
		return "character device"
	case m&os.ModeDevice != 0:
		return "device"
	}
	return m.Type().String()
}

// Parse decodes data (named name in messages), applies defaults and
// validates the result.
func Parse(name string, data []byte) (*Config, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%s: the file is empty; it needs at least \"version: 1\"", name)
	}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) { // comments only
			return nil, fmt.Errorf("%s: the file holds no settings; it needs at least \"version: 1\"", name)
		}
		return nil, located(name, err)
	}
	for {
		var extra yaml.Node
		err := dec.Decode(&extra)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w (after the first YAML document; the file must hold exactly one)", located(name, err))
		}
		if !emptyDocument(&extra) { // a stray trailing "---" is harmless
			return nil, fmt.Errorf("%s:%d: a second YAML document follows the first; the file must hold exactly one", name, extra.Line)
		}
	}

	lines := lineIndex{}
	if err := checkKeys(&root, lines); err != nil {
		return nil, located(name, err)
	}

	var c Config
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(&c); err != nil {
		return nil, located(name, err)
	}
	if _, ok := lines["version"]; !ok {
		return nil, fmt.Errorf("%s: version is missing; write \"version: 1\" at the top", name)
	}
	c.applyDefaults(lines.has)
	if problems := c.validate(lines); len(problems) > 0 {
		return nil, problems.in(name, lines)
	}
	return &c, nil
}

// emptyDocument reports whether n is a document with nothing in it (only
// comments, if anything), as a "---" at the end of a file starts.
func emptyDocument(n *yaml.Node) bool {
	if n.Kind != yaml.DocumentNode || len(n.Content) != 1 {
		return false
	}
	v := n.Content[0]
	return v.Kind == yaml.ScalarNode && v.Tag == "!!null" && v.Value == ""
}

// applyDefaults fills every value the file left out; present reports
// whether the file set a key. A key written with an empty value keeps it,
// for validation to refuse: an empty http_endpoint (a template's variable
// left unset, say) must not come out as enabled.
func (c *Config) applyDefaults(present func(path string) bool) {
	if !present("listen.link") {
		c.Listen.Link = DefaultLink
	}
	if !present("instance.region") {
		if c.Instance.AvailabilityZone != "" && len(c.Instance.AvailabilityZone) > 1 {
			c.Instance.Region = c.Instance.AvailabilityZone[:len(c.Instance.AvailabilityZone)-1]
		} else {
			c.Instance.Region = "us-east-1"
		}
	}
	if !present("instance.availability_zone") {
		c.Instance.AvailabilityZone = c.Instance.Region + "a"
	}
	// A duration written as 0s stays, for validation to refuse.
	if !present("credentials.session_duration") {
		c.Credentials.SessionDuration = Duration(DefaultSessionDuration)
	}
	if !present("credentials.profile_recheck") {
		c.Credentials.ProfileRecheck = Duration(DefaultProfileRecheck)
	}
	if c.Credentials.SharedConfigFiles == nil {
		c.Credentials.SharedConfigFiles = []string{DefaultSharedConfigFile}
	}
	if c.Credentials.SharedCredentialsFiles == nil {
		c.Credentials.SharedCredentialsFiles = []string{DefaultSharedCredentialsFile}
	}
	m := &c.MetadataOptions
	if !present("metadata_options.http_endpoint") {
		m.HTTPEndpoint = Enabled
	}
	if !present("metadata_options.http_tokens") {
		m.HTTPTokens = Required
	}
	if !present("metadata_options.http_put_response_hop_limit") {
		m.HTTPPutResponseHopLimit = 1
	}
	if !present("metadata_options.http_protocol_ipv6") {
		m.HTTPProtocolIPv6 = Enabled
	}
	if c.Listen.Addresses == nil {
		c.Listen.Addresses = []string{IPv4Address}
		if m.HTTPProtocolIPv6 == Enabled {
			c.Listen.Addresses = append(c.Listen.Addresses, IPv6Address)
		}
	}
	if !present("admin.socket") {
		c.Admin.Socket = DefaultAdminSocket
	}
	if !present("log.level") {
		c.Log.Level = "info"
	}
	if !present("log.audit") {
		c.Log.Audit = true
	}
	if !present("log.format") {
		c.Log.Format = "text"
	}
}

// Default returns the configuration a file holding only "version: 1"
// yields.
func Default() *Config {
	c := &Config{Version: 1}
	c.applyDefaults(func(string) bool { return false })
	return c
}

// Marshal renders the effective configuration as YAML. The keys at the
// dotted paths in notes get their note as a comment.
func (c *Config) Marshal(notes map[string]string) ([]byte, error) {
	var doc yaml.Node
	if err := doc.Encode(c); err != nil {
		return nil, err
	}
	annotate(&doc, "", notes)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// annotate sets the comment of each key of the mapping n (at prefix) that
// notes has a note for, and of the keys under it.
func annotate(n *yaml.Node, prefix string, notes map[string]string) {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		path := n.Content[i].Value
		if prefix != "" {
			path = prefix + "." + path
		}
		if note, ok := notes[path]; ok {
			n.Content[i+1].LineComment = note
		}
		annotate(n.Content[i+1], path, notes)
	}
}

// located prefixes each problem in err with the file name, giving
// "file:LINE: message" where the line is known.
func located(name string, err error) error {
	var msgs []string
	var te *yaml.TypeError
	var le lineError
	switch {
	case errors.As(err, &te):
		for _, m := range te.Errors {
			m = strings.TrimPrefix(m, "line ")
			m = strings.Replace(m, "cannot unmarshal !!str", "cannot use the string", 1)
			m = strings.Replace(m, "cannot unmarshal !!int", "cannot use the number", 1)
			m = strings.Replace(m, "cannot unmarshal !!seq", "cannot use a list", 1)
			m = strings.Replace(m, "cannot unmarshal !!map", "cannot use a mapping", 1)
			m = strings.Replace(m, "cannot unmarshal !!bool", "cannot use the boolean", 1)
			msgs = append(msgs, name+":"+m)
		}
	case errors.As(err, &le):
		msgs = append(msgs, name+":"+le.Error())
	default:
		m := strings.TrimPrefix(err.Error(), "yaml: ")
		if rest, ok := strings.CutPrefix(m, "line "); ok {
			msgs = append(msgs, name+":"+rest)
		} else {
			msgs = append(msgs, name+": "+m)
		}
	}
	return errors.New(strings.Join(msgs, "\n"))
}

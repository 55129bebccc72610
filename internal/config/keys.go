package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// lineIndex maps a dotted key path ("credentials.session_duration") to the
// line it was set on.
type lineIndex map[string]int

func (l lineIndex) has(path string) bool { _, ok := l[path]; return ok }

// checkKeys walks the document against the Config schema, records where each
// key is, and rejects keys the schema does not know, naming the key, its
// full path and line, and the nearest known key.
func checkKeys(root *yaml.Node, lines lineIndex) error {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	if doc.Kind != yaml.MappingNode {
		return lineError{doc.Line, "the file must be a mapping of keys (such as \"version: 1\"), not a " + kindName(doc)}
	}
	return walk(doc, reflect.TypeOf(Config{}), "", lines)
}

func walk(n *yaml.Node, t reflect.Type, prefix string, lines lineIndex) error {
	fields := yamlFields(t)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		path := k.Value
		if prefix != "" {
			path = prefix + "." + k.Value
		}
		ft, ok := fields[k.Value]
		if !ok {
			msg := fmt.Sprintf("unknown key %q", path)
			if s := nearest(k.Value, fields); s != "" {
				msg += fmt.Sprintf("; did you mean %q?", s)
			} else {
				msg += fmt.Sprintf("; known keys here: %s", strings.Join(sortedKeys(fields), ", "))
			}
			return lineError{k.Line, msg}
		}
		lines[path] = k.Line
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && !isLeaf(ft) {
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				continue
			}
			if v.Kind != yaml.MappingNode {
				return lineError{v.Line, fmt.Sprintf("%s must be a mapping of keys, not a %s", path, kindName(v))}
			}
			if err := walk(v, ft, path, lines); err != nil {
				return err
			}
		} else if leaf := resolved(v); leaf.Kind == yaml.ScalarNode && leaf.Tag == "!!null" {
			// "audit:" with nothing after it would decode as false, and
			// "link:" as "": a value left out, or an alias to none, must
			// not switch things off.
			return lineError{v.Line, fmt.Sprintf("%s has no value; write one (\"\" for empty text, [] for an empty list) or leave the key out", path)}
		} else if at, msg := checkValue(v, ft); msg != "" {
			return lineError{at.Line, path + ": " + msg}
		}
	}
	return nil
}

// checkValue checks a value against its key's type before decoding, so
// that the message names the key, and so that nothing is converted with a
// loss: YAML would read 1.5 as 1 for a whole number. What decodes exactly
// (2.0 as 2, yes as true, an alias as the value it stands for) is taken.
// It returns the node at fault (v, or an item of a list) and the problem.
func checkValue(v *yaml.Node, t reflect.Type) (*yaml.Node, string) {
	v = resolved(v)
	switch t {
	case reflect.TypeOf(Duration(0)):
		var d Duration
		return v, messageOf(d.UnmarshalYAML(v))
	case reflect.TypeOf(RefreshWindow(0)):
		var w RefreshWindow
		return v, messageOf(w.UnmarshalYAML(v))
	}
	switch t.Kind() {
	case reflect.Int:
		// 2.0 is a whole number; 1.5 would be read as 1.
		var f float64
		if v.Kind != yaml.ScalarNode || (v.Tag != "!!int" && (v.Tag != "!!float" || v.Decode(&f) != nil || f != math.Trunc(f))) {
			return v, "expected a whole number, not a " + kindName(v)
		}
		var n int
		if v.Decode(&n) != nil || v.Tag == "!!float" && float64(n) != f {
			return v, fmt.Sprintf("%s is out of range", v.Value)
		}
	case reflect.Float64:
		if v.Kind != yaml.ScalarNode || (v.Tag != "!!int" && v.Tag != "!!float") {
			return v, "expected a number, not a " + kindName(v)
		}
	case reflect.Bool:
		// YAML 1.1's yes, no, on and off are read as they were meant.
		var b bool
		if v.Kind != yaml.ScalarNode || v.Decode(&b) != nil {
			return v, "expected true or false, not a " + kindName(v)
		}
	case reflect.String:
		if v.Kind != yaml.ScalarNode {
			return v, "expected text, not a " + kindName(v)
		}
	case reflect.Slice:
		if v.Kind != yaml.SequenceNode {
			return v, "expected a list such as [\"a\", \"b\"], not a " + kindName(v)
		}
		for i, e := range v.Content {
			e = resolved(e)
			if e.Kind != yaml.ScalarNode || e.Tag == "!!null" {
				return e, fmt.Sprintf("item %d is a %s; each must be text", i+1, kindName(e))
			}
		}
	}
	return v, ""
}

// resolved is the node an alias (*name) stands for: the value &name marks.
func resolved(v *yaml.Node) *yaml.Node {
	for v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	return v
}

// messageOf is the message of a lineError, without its line.
func messageOf(err error) string {
	if err == nil {
		return ""
	}
	var le lineError
	if errors.As(err, &le) {
		return le.msg
	}
	return err.Error()
}

var leafTypes = map[reflect.Type]bool{
	reflect.TypeOf(Duration(0)):      true,
	reflect.TypeOf(RefreshWindow(0)): true,
}

func isLeaf(t reflect.Type) bool { return leafTypes[t] }

func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		out[name] = f.Type
	}
	return out
}

func sortedKeys(m map[string]reflect.Type) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// nearest returns the known key closest to s by edit distance, if it is
// close enough to be a plausible typo.
func nearest(s string, fields map[string]reflect.Type) string {
	best, bestD := "", len(s)/2+2
	for _, k := range sortedKeys(fields) {
		if d := editDistance(s, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "list"
	case yaml.MappingNode:
		return "mapping"
	case yaml.AliasNode:
		return "YAML alias (*" + n.Value + "); write the value itself"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "null"
		}
		return "scalar value " + fmt.Sprintf("%q", n.Value)
	}
	return "value"
}

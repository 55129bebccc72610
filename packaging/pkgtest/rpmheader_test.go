package pkgtest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
)

// RPM header tags read by the tests (rpm's lib/rpmtag.h).
const (
	rpmTagPrein        = 1023
	rpmTagPostin       = 1024
	rpmTagPreun        = 1025
	rpmTagPostun       = 1026
	rpmTagRequireFlags = 1048
	rpmTagRequireName  = 1049
)

// rpmHeader is the main header of an .rpm: its string and int32 values by
// tag. It is read without rpm, so the checks on it run on any machine; the
// tests that ask rpm itself (TestRPMHeader, TestRPMScripts) need it
// installed.
type rpmHeader struct {
	strings map[int][]string
	ints    map[int][]uint32
}

// readRPMHeader reads the main header of the .rpm at path: after the
// 96-byte lead comes the signature header, padded to 8 bytes, then the main
// header. A header is a magic, a count of index entries (tag, type, offset,
// count) and the size of the data store they point into.
func readRPMHeader(path string) (*rpmHeader, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	const lead = 96
	if len(data) < lead {
		return nil, fmt.Errorf("%s: shorter than an rpm lead", path)
	}
	sigLen, err := rpmHeaderLen(data[lead:])
	if err != nil {
		return nil, fmt.Errorf("%s: signature header: %w", path, err)
	}
	start := lead + (sigLen+7)/8*8
	if start > len(data) {
		return nil, fmt.Errorf("%s: truncated after the signature header", path)
	}
	h, err := parseRPMHeader(data[start:])
	if err != nil {
		return nil, fmt.Errorf("%s: main header: %w", path, err)
	}
	return h, nil
}

var rpmHeaderMagic = []byte{0x8e, 0xad, 0xe8, 0x01}

// rpmHeaderLen returns the length of the header at the start of b.
func rpmHeaderLen(b []byte) (int, error) {
	if len(b) < 16 || !bytes.Equal(b[:4], rpmHeaderMagic) {
		return 0, fmt.Errorf("no header magic")
	}
	n := int(binary.BigEndian.Uint32(b[8:]))
	size := int(binary.BigEndian.Uint32(b[12:]))
	total := 16 + 16*n + size
	if n < 0 || size < 0 || total > len(b) {
		return 0, fmt.Errorf("truncated header (%d entries, %d bytes of data)", n, size)
	}
	return total, nil
}

func parseRPMHeader(b []byte) (*rpmHeader, error) {
	if _, err := rpmHeaderLen(b); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(b[8:]))
	size := int(binary.BigEndian.Uint32(b[12:]))
	store := b[16+16*n : 16+16*n+size]
	h := &rpmHeader{strings: map[int][]string{}, ints: map[int][]uint32{}}
	for i := 0; i < n; i++ {
		e := b[16+16*i:]
		tag := int(binary.BigEndian.Uint32(e))
		typ := binary.BigEndian.Uint32(e[4:])
		off := int(binary.BigEndian.Uint32(e[8:]))
		count := int(binary.BigEndian.Uint32(e[12:]))
		if off < 0 || off > len(store) {
			return nil, fmt.Errorf("tag %d: offset %d outside the data", tag, off)
		}
		switch typ {
		case 4: // INT32
			if count < 0 || off+4*count > len(store) {
				return nil, fmt.Errorf("tag %d: %d int32s past the data", tag, count)
			}
			for j := 0; j < count; j++ {
				h.ints[tag] = append(h.ints[tag], binary.BigEndian.Uint32(store[off+4*j:]))
			}
		case 6, 8, 9: // STRING, STRING_ARRAY, I18NSTRING: NUL-terminated
			rest := store[off:]
			for j := 0; j < count; j++ {
				s, tail, ok := bytes.Cut(rest, []byte{0})
				if !ok {
					return nil, fmt.Errorf("tag %d: unterminated string", tag)
				}
				h.strings[tag] = append(h.strings[tag], string(s))
				rest = tail
			}
		}
	}
	return h, nil
}

// requires lists the package's requirements as rpm -q --requires would,
// with rpm's dependency flags where any are set ("/usr/sbin/useradd
// flags=0x200" would be a Requires(pre)).
func (h *rpmHeader) requires() []string {
	names, flags := h.strings[rpmTagRequireName], h.ints[rpmTagRequireFlags]
	var out []string
	for i, name := range names {
		if i < len(flags) && flags[i] != 0 {
			name += fmt.Sprintf(" flags=%#x", flags[i])
		}
		out = append(out, name)
	}
	return out
}

// script returns the scriptlet under tag (rpmTagPrein and the others), or ""
// for none.
func (h *rpmHeader) script(tag int) string {
	return strings.Join(h.strings[tag], "")
}

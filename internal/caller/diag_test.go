package caller

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func littleEndian() bool { return binary.NativeEndian.Uint16([]byte{1, 0}) == 1 }

func mustQuery(t testing.TB, client, server string) query {
	t.Helper()
	q, ok := newQuery(netip.MustParseAddrPort(client), netip.MustParseAddrPort(server))
	if !ok {
		t.Fatalf("newQuery(%s, %s) refused", client, server)
	}
	return q
}

// The request bytes, field by field, as <linux/inet_diag.h> lays them out.
func TestEncodeRequest(t *testing.T) {
	if !littleEndian() {
		t.Skip("the expected bytes are written for a little-endian host")
	}
	zero12 := strings.Repeat("00", 12)
	for _, tc := range []struct {
		name           string
		client, server string
		want           []string
	}{
		{"ipv4", "127.0.0.1:40000", "127.0.0.2:80", []string{
			"48000000", "1400", "0100", "07000000", "00000000", // nlmsghdr: len 72, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST only, seq, port id
			"02", "06", "00", "00", "ffffffff", // AF_INET, IPPROTO_TCP, no ext, pad, all states
			"9c40", "0050", // client port 40000, agent port 80 (big-endian)
			"7f000001" + zero12, "7f000002" + zero12, // src = client, dst = agent
			"00000000", "ffffffff", "ffffffff", // any interface, INET_DIAG_NOCOOKIE
		}},
		{"ipv4-mapped inputs", "[::ffff:127.0.0.1]:40000", "[::ffff:127.0.0.2]:80", []string{
			"48000000", "1400", "0100", "07000000", "00000000",
			"02", "06", "00", "00", "ffffffff",
			"9c40", "0050",
			"7f000001" + zero12, "7f000002" + zero12,
			"00000000", "ffffffff", "ffffffff",
		}},
		{"ipv6", "[fd00:ec2::1]:40000", "[fd00:ec2::254]:80", []string{
			"48000000", "1400", "0100", "07000000", "00000000",
			"0a", "06", "00", "00", "ffffffff",
			"9c40", "0050",
			"fd000ec2000000000000000000000001", "fd000ec2000000000000000000000254",
			"00000000", "ffffffff", "ffffffff",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := mustQuery(t, tc.client, tc.server)
			b := make([]byte, requestLen)
			for i := range b {
				b[i] = 0xaa // encodeRequest must clear what it does not set
			}
			n := encodeRequest(b, 7, &q)
			got := hex.EncodeToString(b[:n])
			if want := strings.Join(tc.want, ""); got != want {
				t.Errorf("request\n got %s\nwant %s", got, want)
			}
		})
	}
}

func TestNewQueryRefuses(t *testing.T) {
	v4, v6 := netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("[::1]:1")
	for _, tc := range [][2]netip.AddrPort{{v4, v6}, {v6, v4}, {{}, v4}, {v6, {}}, {{}, {}}} {
		if _, ok := newQuery(tc[0], tc[1]); ok {
			t.Errorf("newQuery(%v, %v) accepted", tc[0], tc[1])
		}
	}
}

// replyOpts describe a synthetic kernel reply.
type replyOpts struct {
	seq      uint32
	family   uint8
	state    uint8
	src, dst netip.AddrPort
	uid      uint32
	inode    uint32
	attrs    [][]byte
}

func nlmsg(typ uint16, seq uint32, body []byte) []byte {
	ne := binary.NativeEndian
	b := make([]byte, nlmAlign(unix.SizeofNlMsghdr+len(body)))
	ne.PutUint32(b[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	ne.PutUint16(b[4:], typ)
	ne.PutUint32(b[8:], seq)
	copy(b[unix.SizeofNlMsghdr:], body)
	return b
}

func nlattr(typ uint16, payload []byte) []byte {
	b := make([]byte, nlmAlign(unix.SizeofNlAttr+len(payload)))
	binary.NativeEndian.PutUint16(b[0:], uint16(unix.SizeofNlAttr+len(payload)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[unix.SizeofNlAttr:], payload)
	return b
}

func u64(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }

func diagReply(o replyOpts) []byte {
	body := make([]byte, sizeofDiagMsg)
	body[0], body[1] = o.family, o.state
	id := body[sockidOffset:]
	binary.BigEndian.PutUint16(id[0:], o.src.Port())
	binary.BigEndian.PutUint16(id[2:], o.dst.Port())
	put := func(b []byte, a netip.Addr) {
		if o.family == unix.AF_INET {
			v := a.As4()
			copy(b, v[:])
		} else {
			v := a.As16()
			copy(b, v[:])
		}
	}
	put(id[4:20], o.src.Addr())
	put(id[20:36], o.dst.Addr())
	binary.NativeEndian.PutUint32(body[64:], o.uid)
	binary.NativeEndian.PutUint32(body[68:], o.inode)
	for _, a := range o.attrs {
		body = append(body, a...)
	}
	return nlmsg(unix.SOCK_DIAG_BY_FAMILY, o.seq, body)
}

func errReply(seq uint32, errno unix.Errno) []byte {
	body := make([]byte, unix.SizeofNlMsgerr)
	binary.NativeEndian.PutUint32(body, uint32(-int32(errno)))
	return nlmsg(unix.NLMSG_ERROR, seq, body)
}

var (
	testClient = netip.MustParseAddrPort("127.0.0.1:40000")
	testAgent  = netip.MustParseAddrPort("127.0.0.2:80")
)

func goodReply() replyOpts {
	return replyOpts{
		seq: 7, family: unix.AF_INET, state: 1, src: testClient, dst: testAgent, uid: 1000, inode: 4242,
		attrs: [][]byte{nlattr(8, []byte{0}), nlattr(attrCgroupID, u64(9876)), nlattr(22, []byte{0, 0})},
	}
}

func TestParseReplies(t *testing.T) {
	q := mustQuery(t, testClient.String(), testAgent.String())
	found := Info{UID: 1000, Inode: 4242, CgroupID: 9876}
	with := func(f func(*replyOpts)) []byte {
		o := goodReply()
		f(&o)
		return diagReply(o)
	}
	good := diagReply(goodReply())
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		in       []byte
		want     verdict
		wantInfo Info
		wantErr  error
	}{
		{"found", good, verdictFound, found, nil},
		{"found, IPv6 socket with IPv4-mapped addresses", with(func(o *replyOpts) {
			o.family = unix.AF_INET6
			o.src, o.dst = mapped(o.src), mapped(o.dst)
		}), verdictFound, found, nil},
		{"found, no cgroup id", with(func(o *replyOpts) { o.attrs = nil }), verdictFound, Info{UID: 1000, Inode: 4242}, nil},
		{"found, cgroup id of the wrong size ignored", with(func(o *replyOpts) { o.attrs = [][]byte{nlattr(attrCgroupID, []byte{1, 2, 3, 4})} }),
			verdictFound, Info{UID: 1000, Inode: 4242}, nil},
		{"found after a stale reply", cat(errReply(6, unix.ENOENT), good), verdictFound, found, nil},
		{"only a stale reply", with(func(o *replyOpts) { o.seq = 6 }), verdictOther, Info{}, nil},
		{"empty", nil, verdictOther, Info{}, nil},
		{"not found", errReply(7, unix.ENOENT), verdictNotFound, Info{}, nil},
		{"acknowledgement", errReply(7, 0), verdictNotFound, Info{}, nil},
		{"done", nlmsg(unix.NLMSG_DONE, 7, make([]byte, 4)), verdictNotFound, Info{}, nil},
		{"kernel error", errReply(7, unix.EPERM), verdictOther, Info{}, unix.EPERM},
		{"listener", with(func(o *replyOpts) { o.state = tcpListen }), verdictNotFound, Info{}, nil},
		{"time-wait", with(func(o *replyOpts) { o.state = tcpTimeWait }), verdictNotFound, Info{}, nil},
		{"request socket", with(func(o *replyOpts) { o.state = tcpNewSynRecv }), verdictNotFound, Info{}, nil},
		{"another socket's port", with(func(o *replyOpts) { o.src = netip.AddrPortFrom(o.src.Addr(), 40001) }), verdictNotFound, Info{}, nil},
		{"another socket's address", with(func(o *replyOpts) { o.dst = netip.MustParseAddrPort("127.0.0.3:80") }), verdictNotFound, Info{}, nil},
		{"truncated header", good[:10], verdictOther, Info{}, errMalformed},
		{"length past the end", good[:40], verdictOther, Info{}, errMalformed},
		{"length below the header", cat(good[:0], []byte{4, 0, 0, 0, 20, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0}), verdictOther, Info{}, errMalformed},
		{"truncated message", nlmsg(unix.SOCK_DIAG_BY_FAMILY, 7, make([]byte, sizeofDiagMsg-1)), verdictOther, Info{}, errMalformed},
		{"truncated error", nlmsg(unix.NLMSG_ERROR, 7, []byte{1, 2}), verdictOther, Info{}, errMalformed},
		{"positive errno", nlmsg(unix.NLMSG_ERROR, 7, []byte{1, 0, 0, 0}), verdictOther, Info{}, errMalformed},
		{"unknown family", with(func(o *replyOpts) { o.family = 99 }), verdictOther, Info{}, errMalformed},
		{"unknown message type", nlmsg(99, 7, nil), verdictOther, Info{}, errMalformed},
		{"attribute longer than the message", with(func(o *replyOpts) {
			a := nlattr(attrCgroupID, u64(1))
			binary.NativeEndian.PutUint16(a, 200)
			o.attrs = [][]byte{a}
		}), verdictOther, Info{}, errMalformed},
		{"attribute shorter than its header", with(func(o *replyOpts) { o.attrs = [][]byte{{2, 0, 21, 0}} }), verdictOther, Info{}, errMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var info Info
			got, err := parseReplies(tc.in, 7, &q, &info)
			if got != tc.want || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Errorf("parseReplies = %v, %v; want %v, %v", got, err, tc.want, tc.wantErr)
			}
			if got == verdictFound && info != tc.wantInfo {
				t.Errorf("info = %+v, want %+v", info, tc.wantInfo)
			}
		})
	}
}

// FuzzParseReplies: no datagram panics the parser, and only a reply that
// names the queried socket is taken for it.
func FuzzParseReplies(f *testing.F) {
	good := diagReply(goodReply())
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add(append(errReply(6, unix.ENOENT), good...))
	f.Add(errReply(7, unix.EPERM))
	o := goodReply()
	o.family, o.src, o.dst = unix.AF_INET6, mapped(o.src), mapped(o.dst)
	f.Add(diagReply(o))
	f.Add([]byte{})
	q := mustQuery(f, testClient.String(), testAgent.String())
	f.Fuzz(func(t *testing.T, b []byte) {
		var info Info
		v, err := parseReplies(b, 7, &q, &info)
		if err != nil && v != verdictOther {
			t.Fatalf("verdict %v with error %v", v, err)
		}
		if v == verdictFound && len(b) < unix.SizeofNlMsghdr+sizeofDiagMsg {
			t.Fatalf("found a socket in %d bytes", len(b))
		}
	})
}

// FuzzRequestRoundTrip: for any address pair, the kernel's echo of the
// request's socket id is accepted as the answer.
func FuzzRequestRoundTrip(f *testing.F) {
	f.Add([]byte{127, 0, 0, 1}, []byte{169, 254, 169, 254}, uint16(40000), uint16(80))
	f.Add(netip.MustParseAddr("fd00:ec2::1").AsSlice(), netip.MustParseAddr("fd00:ec2::254").AsSlice(), uint16(1), uint16(80))
	f.Add(netip.MustParseAddr("::ffff:10.0.0.1").AsSlice(), []byte{10, 0, 0, 2}, uint16(0), uint16(65535))
	f.Fuzz(func(t *testing.T, src, dst []byte, sport, dport uint16) {
		sa, ok1 := netip.AddrFromSlice(src)
		da, ok2 := netip.AddrFromSlice(dst)
		if !ok1 || !ok2 {
			return
		}
		q, ok := newQuery(netip.AddrPortFrom(sa, sport), netip.AddrPortFrom(da, dport))
		if !ok {
			if sa.Unmap().Is4() == da.Unmap().Is4() {
				t.Fatalf("newQuery refused %v %v", sa, da)
			}
			return
		}
		req := make([]byte, requestLen)
		encodeRequest(req, 3, &q)
		// The kernel echoes the request's socket id in its reply.
		body := make([]byte, sizeofDiagMsg)
		body[0], body[1] = req[unix.SizeofNlMsghdr], 1
		copy(body[sockidOffset:], req[unix.SizeofNlMsghdr+8:])
		var info Info
		v, err := parseReplies(nlmsg(unix.SOCK_DIAG_BY_FAMILY, 3, body), 3, &q, &info)
		if v != verdictFound || err != nil {
			t.Fatalf("echoed id for %+v: %v, %v", q, v, err)
		}
	})
}

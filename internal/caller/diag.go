package caller

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The sock_diag wire format, from <linux/inet_diag.h>. golang.org/x/sys
// has the netlink header but not these structures.
const (
	// struct inet_diag_req_v2: family, protocol, ext, pad (1 byte each),
	// states (u32), then struct inet_diag_sockid.
	sizeofReqV2 = 56
	// struct inet_diag_msg: family, state, timer, retrans (1 byte each),
	// struct inet_diag_sockid, then expires, rqueue, wqueue, uid, inode
	// (u32 each).
	sizeofDiagMsg = 72
	// struct inet_diag_sockid: sport, dport (big-endian u16), src, dst
	// ([4]__be32 each: an IPv4 address uses the first 4 bytes), if (u32),
	// cookie ([2]u32).
	sockidOffset = 4 // in both the request and the reply

	requestLen = unix.SizeofNlMsghdr + sizeofReqV2

	inetDiagNoCookie = ^uint32(0) // INET_DIAG_NOCOOKIE: match any socket

	// INET_DIAG_CGROUP_ID (u64) is attribute 21. There is no idiag_ext bit
	// for it (idiag_ext has 8 bits, which only reach INET_DIAG_SHUTDOWN):
	// kernels since 5.7 built with cgroup socket data attach it to every
	// reply, and older ones never do.
	attrCgroupID = 21

	// TCP states (include/net/tcp_states.h) that a client socket never
	// has: an exact lookup also falls back to these, so they mean "no
	// client socket here".
	tcpTimeWait   = 6
	tcpListen     = 10
	tcpNewSynRecv = 12

	// recvBufLen holds one reply: the message, its few attributes, and
	// room for kernels that add more.
	recvBufLen = 8 << 10
)

// query is one lookup: the client socket's own address (src) and its peer
// (dst), already normalised so IPv4 is never IPv4-mapped IPv6.
type query struct {
	family   uint8
	src, dst netip.AddrPort
	// dump asks for every socket with src's and dst's ports, whatever
	// device it is bound to, instead of the one socket an exact lookup
	// finds: the kernel's exact lookup matches a socket bound to a device
	// (SO_BINDTODEVICE) only when asked with that device's index.
	dump bool
}

// newQuery builds the query for the client socket of a connection whose
// client side is client and whose agent side is server.
func newQuery(client, server netip.AddrPort) (query, bool) {
	src := netip.AddrPortFrom(client.Addr().Unmap().WithZone(""), client.Port())
	dst := netip.AddrPortFrom(server.Addr().Unmap().WithZone(""), server.Port())
	if !src.Addr().IsValid() || !dst.Addr().IsValid() || src.Addr().Is4() != dst.Addr().Is4() {
		return query{}, false
	}
	family := uint8(unix.AF_INET6)
	if src.Addr().Is4() {
		family = unix.AF_INET
	}
	return query{family: family, src: src, dst: dst}, true
}

// encodeRequest writes the SOCK_DIAG_BY_FAMILY request for q into b, which
// must hold requestLen bytes, and returns its length.
func encodeRequest(b []byte, seq uint32, q *query) int {
	b = b[:requestLen]
	clear(b)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], requestLen)
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	flags := uint16(unix.NLM_F_REQUEST) // no NLM_F_DUMP: one socket, found by hash
	if q.dump {
		flags |= unix.NLM_F_DUMP
	}
	ne.PutUint16(b[6:], flags)
	ne.PutUint32(b[8:], seq)
	// b[12:16], the port id, stays 0: the kernel fills it in.

	r := b[unix.SizeofNlMsghdr:]
	r[0] = q.family
	r[1] = unix.IPPROTO_TCP
	// r[2] idiag_ext = 0: no optional attributes are needed.
	states := ^uint32(0) // all; the exact lookup ignores them
	if q.dump {
		// A dump walks the table of each state asked for: not the
		// listeners', and no state a client socket with an owner lacks.
		states &^= 1<<tcpListen | 1<<tcpTimeWait | 1<<tcpNewSynRecv
	}
	ne.PutUint32(r[4:], states)
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], q.src.Port())
	binary.BigEndian.PutUint16(id[2:], q.dst.Port())
	putAddr(id[4:20], q.src.Addr())
	putAddr(id[20:36], q.dst.Addr())
	// id[36:40], the interface, stays 0: any device.
	ne.PutUint32(id[40:], inetDiagNoCookie)
	ne.PutUint32(id[44:], inetDiagNoCookie)
	return requestLen
}

func putAddr(b []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(b, v[:])
		return
	}
	v := a.As16()
	copy(b, v[:])
}

// verdict is what one reply datagram says about a request.
type verdict uint8

const (
	verdictOther    verdict = iota // nothing for this request (a stale reply): read on
	verdictFound                   // the client socket: Info is filled in
	verdictNotFound                // no such client socket in this namespace
)

var (
	errTimeout   = errors.New("caller: sock_diag reply timed out")
	errMalformed = errors.New("caller: malformed sock_diag reply")
)

// parseReplies reads the netlink messages in one datagram and looks for the
// answer to request seq. It fills info's UID, Inode and CgroupID when the
// answer is the client socket. A dump's answer spans messages, and may
// span datagrams, up to NLMSG_DONE. It never panics, whatever b holds.
func parseReplies(b []byte, seq uint32, q *query, info *Info) (verdict, error) {
	ne := binary.NativeEndian
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return verdictOther, errMalformed
		}
		msgLen := int(ne.Uint32(b[0:]))
		if msgLen < unix.SizeofNlMsghdr || msgLen > len(b) {
			return verdictOther, errMalformed
		}
		msg, typ, msgSeq := b[:msgLen], ne.Uint16(b[4:]), ne.Uint32(b[8:])
		b = b[min(nlmAlign(msgLen), len(b)):]
		if msgSeq != seq {
			continue // a late answer to an earlier request that timed out
		}
		body := msg[unix.SizeofNlMsghdr:]
		switch typ {
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return verdictOther, errMalformed
			}
			errno := -int32(ne.Uint32(body))
			switch {
			case errno == 0:
				return verdictNotFound, nil // an acknowledgement, no socket
			case errno < 0:
				return verdictOther, errMalformed
			case syscall.Errno(errno) == unix.ENOENT:
				return verdictNotFound, nil
			default:
				return verdictOther, fmt.Errorf("caller: sock_diag: %w", syscall.Errno(errno))
			}
		case unix.NLMSG_DONE:
			return verdictNotFound, nil
		case unix.SOCK_DIAG_BY_FAMILY:
			v, err := parseDiagMsg(body, q, info)
			if err != nil || v == verdictFound || !q.dump {
				return v, err
			}
			// Another socket with the same ports: read on.
		default:
			return verdictOther, errMalformed
		}
	}
	return verdictOther, nil
}

// parseDiagMsg checks that the socket in an inet_diag_msg is the client
// socket asked for, then takes its owner, inode and cgroup id.
func parseDiagMsg(body []byte, q *query, info *Info) (verdict, error) {
	if len(body) < sizeofDiagMsg {
		return verdictOther, errMalformed
	}
	family, state := body[0], body[1]
	id := body[sockidOffset:]
	src, ok1 := replyAddr(family, id[4:20], binary.BigEndian.Uint16(id[0:]))
	dst, ok2 := replyAddr(family, id[20:36], binary.BigEndian.Uint16(id[2:]))
	if !ok1 || !ok2 {
		return verdictOther, errMalformed
	}
	// An exact lookup that finds no connected socket falls back to a
	// listener or a time-wait entry for the same address: neither is a
	// client with an owner.
	if src != q.src || dst != q.dst || state == tcpListen || state == tcpTimeWait || state == tcpNewSynRecv {
		return verdictNotFound, nil
	}
	ne := binary.NativeEndian
	info.UID = ne.Uint32(body[64:])
	info.Inode = ne.Uint32(body[68:])
	info.CgroupID = 0

	attrs := body[nlmAlign(sizeofDiagMsg):]
	for len(attrs) >= unix.SizeofNlAttr {
		l := int(ne.Uint16(attrs[0:]))
		if l < unix.SizeofNlAttr || l > len(attrs) {
			return verdictOther, errMalformed
		}
		typ := ne.Uint16(attrs[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if typ == attrCgroupID && l == unix.SizeofNlAttr+8 {
			info.CgroupID = ne.Uint64(attrs[unix.SizeofNlAttr:])
		}
		attrs = attrs[min(nlmAlign(l), len(attrs)):]
	}
	return verdictFound, nil
}

// replyAddr reads a socket address from a reply, folding an IPv6 socket's
// IPv4-mapped address to IPv4 as the query does.
func replyAddr(family uint8, b []byte, port uint16) (netip.AddrPort, bool) {
	switch family {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), port), true
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[:16])).Unmap(), port), true
	}
	return netip.AddrPort{}, false
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// diagConn is one NETLINK_SOCK_DIAG socket with its buffers. It is used by
// one lookup at a time.
type diagConn struct {
	fd   int
	seq  uint32
	req  [requestLen]byte
	recv [recvBufLen]byte
}

// openDiagConn opens a sock_diag socket in the calling thread's network
// namespace, connected to the kernel, whose reads give up after timeout.
func openDiagConn(timeout time.Duration) (*diagConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("caller: netlink socket: %w", err)
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("caller: netlink SO_RCVTIMEO: %w", err)
	}
	// Connected to the kernel, plain write and read suffice: no address
	// per call, so no allocation.
	if err := unix.Connect(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("caller: netlink connect: %w", err)
	}
	return &diagConn{fd: fd}, nil
}

// exchange sends the request for q and waits for its answer.
func (c *diagConn) exchange(q *query, info *Info, timeout time.Duration) (verdict, error) {
	c.seq++
	n := encodeRequest(c.req[:], c.seq, q)
	for {
		_, err := unix.Write(c.fd, c.req[:n])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return verdictOther, fmt.Errorf("caller: sock_diag request: %w", err)
		}
		break
	}
	// The kernel answers within the write, so the first read normally
	// finds the reply waiting. The deadline covers stale replies and
	// reads interrupted by signals, each of which restarts SO_RCVTIMEO.
	deadline := time.Now().Add(timeout)
	for {
		n, err := unix.Read(c.fd, c.recv[:])
		switch err {
		case nil:
			v, err := parseReplies(c.recv[:n], c.seq, q, info)
			if err != nil || v != verdictOther {
				return v, err
			}
		case unix.EAGAIN:
			return verdictOther, errTimeout
		case unix.EINTR:
		case unix.ENOBUFS:
			// Our receive queue overflowed and replies were dropped;
			// ours may still come, or the deadline ends the wait.
		default:
			return verdictOther, fmt.Errorf("caller: sock_diag reply: %w", err)
		}
		if time.Now().After(deadline) {
			return verdictOther, errTimeout
		}
	}
}

func (c *diagConn) close() error {
	if err := unix.Close(c.fd); err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	return nil
}

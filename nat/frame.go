package nat

import (
	"bytes"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"hash"
	"net/netip"
	"sync"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/curve25519"
)

// Frame wire format: see the package documentation.
const (
	frameMagic0    = 'r'
	frameMagic1    = 'n'
	frameVersion   = 2 // 2: control frames carry a timestamp and nonce (see replay.go)
	frameHeaderLen = 4
	idLen          = 8
	txIDLen        = 12
	stampLen       = 16 // timestamp (8, sender's clock, unix ns) + nonce (8)
	macLen         = 16
	addrLen        = 18 // 16-byte IPv6 (IPv4 mapped) + port

	frameProbe   = 1
	framePong    = 2
	frameRelay   = 3
	frameRelayed = 4
	frameAddrs   = 5 // "call me maybe": the sender's own addresses as others see them

	maxFrameAddrs = 8

	ctlHdrLen = frameHeaderLen + idLen + stampLen // header, sender id, stamp
	probeLen  = ctlHdrLen + txIDLen + macLen
	pongLen   = ctlHdrLen + txIDLen + addrLen + macLen
	addrsMin  = ctlHdrLen + 1 + macLen
	// RelayOverhead is how many bytes a relayed WireGuard packet grows by.
	RelayOverhead = frameHeaderLen + 2*idLen + macLen
	relayHdrLen   = frameHeaderLen + 2*idLen
)

var (
	errShortFrame = errors.New("nat: frame too short")
	errBadFrame   = errors.New("nat: not a frame of ours")
	errFrameType  = errors.New("nat: unknown frame type")
	errFrameLen   = errors.New("nat: frame length does not match its type")
)

// frame is a parsed frame. Its fields' meaning depends on Type:
//
//	probe, pong, addrs: A = sender
//	relay:              A = source, B = destination
//	relayed:            A = relay,  B = source
//
// TS and Nonce are the control frames' (probe, pong, addrs) freshness stamp,
// under the MAC: the sender's clock and a random number. Payload aliases the
// parsed buffer.
type frame struct {
	Type     byte
	A, B     uint64
	TS       int64  // control frames only
	Nonce    uint64 // control frames only
	TxID     [txIDLen]byte
	Observed netip.AddrPort   // pong only
	Payload  []byte           // relay and relayed only
	Addrs    []netip.AddrPort // addrs only
}

// parseFrame checks b's structure (not its MAC: which key applies depends
// on A, see verifyFrame). It never panics and does not copy.
func parseFrame(b []byte) (frame, error) {
	var f frame
	if len(b) < frameHeaderLen {
		return f, errShortFrame
	}
	if !isFrame(b) {
		return f, errBadFrame
	}
	f.Type = b[3]
	body := b[frameHeaderLen:]
	switch f.Type {
	case frameProbe, framePong, frameAddrs:
		if len(b) < ctlHdrLen+macLen {
			return f, errFrameLen
		}
		f.A = binary.BigEndian.Uint64(body)
		f.TS = int64(binary.BigEndian.Uint64(body[idLen:]))
		f.Nonce = binary.BigEndian.Uint64(body[idLen+8:])
		body = b[ctlHdrLen:]
	}
	switch f.Type {
	case frameProbe:
		if len(b) != probeLen {
			return f, errFrameLen
		}
		copy(f.TxID[:], body)
	case framePong:
		if len(b) != pongLen {
			return f, errFrameLen
		}
		copy(f.TxID[:], body)
		f.Observed = parseAddr(body[txIDLen:])
	case frameAddrs:
		if len(b) < addrsMin {
			return f, errFrameLen
		}
		n := int(body[0])
		if n > maxFrameAddrs || len(b) != addrsMin+n*addrLen {
			return f, errFrameLen
		}
		a := body[1:]
		for i := 0; i < n; i++ {
			f.Addrs = append(f.Addrs, parseAddr(a[i*addrLen:]))
		}
	case frameRelay, frameRelayed:
		if len(b) < RelayOverhead {
			return f, errFrameLen
		}
		f.A = binary.BigEndian.Uint64(body)
		f.B = binary.BigEndian.Uint64(body[idLen:])
		f.Payload = b[relayHdrLen : len(b)-macLen]
	default:
		return f, errFrameType
	}
	return f, nil
}

// appendFrame encodes f after dst and seals it with k.
func appendFrame(dst []byte, f *frame, k *macKey) []byte {
	start := len(dst)
	dst = append(dst, frameMagic0, frameMagic1, frameVersion, f.Type)
	dst = binary.BigEndian.AppendUint64(dst, f.A)
	switch f.Type {
	case frameProbe, framePong, frameAddrs:
		dst = binary.BigEndian.AppendUint64(dst, uint64(f.TS))
		dst = binary.BigEndian.AppendUint64(dst, f.Nonce)
	}
	switch f.Type {
	case frameProbe:
		dst = append(dst, f.TxID[:]...)
	case framePong:
		dst = append(dst, f.TxID[:]...)
		dst = appendAddr(dst, f.Observed)
	case frameAddrs:
		n := min(len(f.Addrs), maxFrameAddrs)
		dst = append(dst, byte(n))
		for _, a := range f.Addrs[:n] {
			dst = appendAddr(dst, a)
		}
	case frameRelay, frameRelayed:
		dst = binary.BigEndian.AppendUint64(dst, f.B)
		dst = append(dst, f.Payload...)
	}
	return k.seal(dst, start)
}

func parseAddr(a []byte) netip.AddrPort {
	ip := netip.AddrFrom16([16]byte(a[:16])).Unmap()
	return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(a[16:18]))
}

func appendAddr(dst []byte, a netip.AddrPort) []byte {
	a16 := a.Addr().As16()
	dst = append(dst, a16[:]...)
	return binary.BigEndian.AppendUint16(dst, a.Port())
}

// reframeRelayed turns a verified relay frame (src → dst, in b) into the
// relayed frame the destination receives, in place: same length, the
// relay's id where the source was, the source where the destination was, and
// a MAC under the relay↔destination key.
func reframeRelayed(b []byte, relayID uint64, dst *macKey) {
	src := binary.BigEndian.Uint64(b[frameHeaderLen:])
	b[3] = frameRelayed
	binary.BigEndian.PutUint64(b[frameHeaderLen:], relayID)
	binary.BigEndian.PutUint64(b[frameHeaderLen+idLen:], src)
	dst.seal(b[:len(b)-macLen], 0)
}

// verifyFrame reports whether b (a whole frame) carries a valid MAC under k.
func verifyFrame(b []byte, k *macKey) bool {
	if len(b) < frameHeaderLen+macLen {
		return false
	}
	return k.verify(b[:len(b)-macLen], b[len(b)-macLen:])
}

// macKey is a pairwise frame key. Its hash states are pooled so that
// sealing and verifying (once per packet on the relay path) do not allocate.
type macKey struct {
	key  [32]byte
	pool sync.Pool // of *macState
}

type macState struct {
	h   hash.Hash
	sum [blake2s.Size]byte
}

func newMACKey(key [32]byte) *macKey {
	k := &macKey{key: key}
	k.pool.New = func() any {
		h, err := blake2s.New128(k.key[:])
		if err != nil {
			panic(err) // a 32-byte key is always valid
		}
		return &macState{h: h}
	}
	return k
}

func (k *macKey) mac(data []byte) *macState {
	s := k.pool.Get().(*macState)
	s.h.Reset()
	s.h.Write(data)
	s.h.Sum(s.sum[:0])
	return s
}

// seal appends the MAC of dst[start:] to dst.
func (k *macKey) seal(dst []byte, start int) []byte {
	s := k.mac(dst[start:])
	dst = append(dst, s.sum[:macLen]...)
	k.pool.Put(s)
	return dst
}

func (k *macKey) verify(data, mac []byte) bool {
	s := k.mac(data)
	ok := subtle.ConstantTimeCompare(s.sum[:macLen], mac) == 1
	k.pool.Put(s)
	return ok
}

// pairKey derives the frame key two members share: a hash of their X25519
// shared secret and both public keys in a fixed order. Low-order public
// keys (a zero shared secret) are refused.
func pairKey(priv, self, peer [32]byte) ([32]byte, error) {
	shared, err := curve25519.X25519(priv[:], peer[:])
	if err != nil {
		return [32]byte{}, err
	}
	lo, hi := self, peer
	if bytes.Compare(lo[:], hi[:]) > 0 {
		lo, hi = hi, lo
	}
	h, _ := blake2s.New256(nil)
	h.Write([]byte("runos-nat frame key v1"))
	h.Write(shared)
	h.Write(lo[:])
	h.Write(hi[:])
	var k [32]byte
	h.Sum(k[:0])
	return k, nil
}

// publicKey derives the X25519 public key of priv.
func publicKey(priv [32]byte) [32]byte {
	var pub [32]byte
	curve25519.ScalarBaseMult(&pub, &priv)
	return pub
}

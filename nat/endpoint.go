package nat

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
)

// peerEndpointPort is the port of every peer identity endpoint. It means
// nothing; it is there so the endpoint is a valid ip:port everywhere.
const peerEndpointPort = 51820

// PeerAddrPort is the identity endpoint of the peer with public key pub, as
// an address: 100::/64 (RFC 6666, discard-only, never routed) plus the first
// 8 bytes of the key. Give it to wireguard-go as the peer's endpoint (for
// example mesh.Peer.Endpoint) and the Bind picks the path for every packet.
func PeerAddrPort(pub [32]byte) netip.AddrPort {
	var a [16]byte
	a[0] = 0x01
	copy(a[8:], pub[:8])
	return netip.AddrPortFrom(netip.AddrFrom16(a), peerEndpointPort)
}

// PeerEndpointString is PeerAddrPort as the UAPI "endpoint=" value.
func PeerEndpointString(pub [32]byte) string { return PeerAddrPort(pub).String() }

func peerID(pub [32]byte) uint64 { return binary.BigEndian.Uint64(pub[:8]) }

// parsePeerAddrPort reports the peer id an identity endpoint names.
func parsePeerAddrPort(ap netip.AddrPort) (uint64, bool) {
	a := ap.Addr()
	if !a.Is6() || a.Is4In6() || ap.Port() != peerEndpointPort || a.Zone() != "" {
		return 0, false
	}
	b := a.As16()
	if b[0] != 0x01 || b[1] != 0 || binary.BigEndian.Uint64(b[:8]) != 0x0100000000000000 {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[8:]), true
}

// peerEndpoint is the one conn.Endpoint wireguard-go holds for a peer. It
// lives as long as the Bind (a removed and re-added peer gets the same one
// back), and points at the peer's current state, or nil while the peer is
// not in the Bind's peer set.
type peerEndpoint struct {
	id   uint64
	dst  netip.AddrPort
	str  string
	peer atomic.Pointer[peer]
}

var _ conn.Endpoint = (*peerEndpoint)(nil)

func (e *peerEndpoint) ClearSrc()           {}
func (e *peerEndpoint) SrcToString() string { return "" }
func (e *peerEndpoint) DstToString() string { return e.str }
func (e *peerEndpoint) DstToBytes() []byte  { b, _ := e.dst.MarshalBinary(); return b }
func (e *peerEndpoint) DstIP() netip.Addr   { return e.dst.Addr() }
func (e *peerEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }

// endpointAddr is the underlay address of an endpoint from the underlay
// Bind: conn.StdNetEndpoint embeds a netip.AddrPort, and natlab's endpoint
// does too; any endpoint with Addr and Port methods works.
func endpointAddr(ep conn.Endpoint) (netip.AddrPort, bool) {
	switch e := ep.(type) {
	case *conn.StdNetEndpoint:
		return netip.AddrPortFrom(e.AddrPort.Addr().Unmap(), e.AddrPort.Port()), true
	case interface {
		Addr() netip.Addr
		Port() uint16
	}:
		return netip.AddrPortFrom(e.Addr().Unmap(), e.Port()), true
	}
	return netip.AddrPort{}, false
}

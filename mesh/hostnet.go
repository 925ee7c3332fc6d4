package mesh

import (
	"context"
	"fmt"
	"net"
	"net/netip"
)

// HostNet is the overlay in kernel mode: the host's own stack carries mesh
// traffic over the wg0 interface, so dialing from the node's mesh IP is all it
// takes. It also serves tests that want a Net on a loopback address.
type HostNet struct {
	local netip.Addr
}

var _ Net = (*HostNet)(nil)

// NewHostNet returns a Net whose outgoing connections originate from local.
func NewHostNet(local netip.Addr) *HostNet { return &HostNet{local: local} }

func (h *HostNet) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	// No TCP keepalives on the mesh: members' liveness is known from their
	// heartbeats, and Go's default (a probe every 15 s on every idle
	// connection) would be most of an idle cluster's traffic.
	d := net.Dialer{KeepAlive: -1}
	switch network {
	case "tcp", "tcp4", "tcp6":
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(h.local, 0))
	case "udp", "udp4", "udp6":
		d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(h.local, 0))
	default:
		return nil, fmt.Errorf("mesh: unsupported network %q", network)
	}
	return d.DialContext(ctx, network, address)
}

func (h *HostNet) Listen(network, address string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1} // see DialContext
	return lc.Listen(context.Background(), network, address)
}

func (h *HostNet) ListenPacket(network, address string) (net.PacketConn, error) {
	return net.ListenPacket(network, address)
}

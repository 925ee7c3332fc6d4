package mesh

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/runos/runos-agent/mesh/internal/netstack"
)

// stackNet is the overlay in userspace mode: a gVisor netstack that owns
// exactly one address, the node's mesh IP, and hands every packet it sends
// to WireGuard.
type stackNet struct {
	tnet  *netstack.Net
	local netip.Addr
}

var _ Net = (*stackNet)(nil)

func (s *stackNet) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		// netstack also knows "ping"; HostNet does not, and callers must
		// not come to depend on one flavour.
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	return s.tnet.DialContext(ctx, network, address)
}

func (s *stackNet) Listen(network, address string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	ap, err := s.listenAddr(address)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	return s.tnet.ListenTCPAddrPort(ap)
}

func (s *stackNet) ListenPacket(network, address string) (net.PacketConn, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	ap, err := s.listenAddr(address)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	return s.tnet.ListenUDPAddrPort(ap)
}

// listenAddr resolves "ip:port". An empty or unspecified host means the mesh
// IP: it is the stack's only address, and code written for the host stack
// listens on ":7946" or "0.0.0.0:7946" expecting to be reachable.
func (s *stackNet) listenAddr(address string) (netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("invalid port %q", portStr)
	}
	ip := s.local
	if host != "" {
		ip, err = netip.ParseAddr(host)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("host must be an IP address: %w", err)
		}
		ip = ip.Unmap()
		if ip.IsUnspecified() {
			ip = s.local
		}
	}
	return netip.AddrPortFrom(ip, uint16(port)), nil
}

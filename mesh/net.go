// Package mesh runs the node's WireGuard device and exposes the overlay network
// built on it. The overlay comes in two flavours: a kernel TUN interface (the
// host's stack carries traffic, so every process can use the mesh) and a
// userspace gVisor netstack (no privileges; many nodes fit in one process).
//
// mesh knows nothing about Raft, gossip or HTTP: it moves packets between
// peers it is told about.
package mesh

import (
	"context"
	"net"
)

// Net is the overlay as seen by the code that rides on it: memberlist, Raft
// and the node API dial and listen on mesh IPs through it, in either flavour.
type Net interface {
	// DialContext connects to address ("ip:port") on the mesh. network is
	// "tcp", "tcp4", "udp" or "udp4".
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	// Listen listens for TCP connections on address ("ip:port").
	Listen(network, address string) (net.Listener, error)
	// ListenPacket opens a UDP socket on address ("ip:port").
	ListenPacket(network, address string) (net.PacketConn, error)
}

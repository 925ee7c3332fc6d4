package mesh

import (
	"errors"
	"net/netip"

	"github.com/runos/runos-agent/mesh/internal/netstack"
)

// Routing hooks for the user-access router in userspace mode: there the
// node's netstack is the only "host", so wg1 (access.Router) attaches to the
// mesh here instead of through kernel routes and forwarding.

// ErrNotUserspace is returned by the routing hooks in kernel mode, where
// the host's stack routes.
var ErrNotUserspace = errors.New("mesh: routing hooks need userspace mode")

// SetUserRoute hands every IPv4 packet towards prefix to fn instead of the
// netstack (from peers) or the peers (from the netstack); nil fn removes the
// hook. fn must not keep the slice and must not block.
func (d *Device) SetUserRoute(prefix netip.Prefix, fn func(pkt []byte)) error {
	if d.tnet == nil {
		return ErrNotUserspace
	}
	if fn == nil {
		d.tnet.SetDivert(nil)
		return nil
	}
	d.tnet.SetDivert(&netstack.Divert{Prefix: prefix.Masked(), Fn: fn})
	return nil
}

// ForwardToMesh sends an IP packet to the peer whose AllowedIPs hold its
// destination (dropped when there is none, or when the queue is full: it
// reports false then).
func (d *Device) ForwardToMesh(pkt []byte) bool {
	if d.tnet == nil {
		return false
	}
	return d.tnet.Forward(pkt)
}

// DeliverLocal gives an IP packet to this node's netstack as if a peer sent
// it.
func (d *Device) DeliverLocal(pkt []byte) error {
	if d.tnet == nil {
		return ErrNotUserspace
	}
	return d.tnet.InjectInbound(pkt)
}

// AddLocalAddress makes the netstack own ip too (wg1's gateway), so
// listeners bind it and it answers packets sent to it.
func (d *Device) AddLocalAddress(ip netip.Addr) error {
	if d.tnet == nil {
		return ErrNotUserspace
	}
	return d.tnet.AddAddress(ip)
}

// RemoveLocalAddress undoes AddLocalAddress.
func (d *Device) RemoveLocalAddress(ip netip.Addr) error {
	if d.tnet == nil {
		return ErrNotUserspace
	}
	return d.tnet.RemoveAddress(ip)
}

package access

import (
	"encoding/binary"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// The userspace router: in userspace mode there is no host stack to route
// between wg1 and wg0 and no nftables to filter, so wg1's TUN is this
// router. It enforces what Rules enforces in kernel mode: a device reaches
// the cluster's networks and nothing else, never another device unless both
// allow it, and only with its own address as source.

// verdict is where the router sends a packet.
type verdict int

const (
	drop     verdict = iota
	toLocal          // this node's netstack (its mesh IP or the gateway)
	toMesh           // out through wg0, to the peer whose AllowedIPs hold it
	toDevice         // out through wg1, to a device entering here
)

func (v verdict) String() string {
	return [...]string{"drop", "local", "mesh", "device"}[v]
}

// policy is one immutable snapshot of what the router allows; SetPeers
// replaces it whole.
type policy struct {
	local    netip.Addr // this node's mesh IP
	gateway  netip.Addr // wg1's address (owned by the netstack too)
	users    netip.Prefix
	networks []netip.Prefix
	// devices are the devices entering here, by address: true when the
	// device allows peers.
	devices map[netip.Addr]bool
	// remote are the devices that allow peers and enter through other
	// nodes: a device here that allows peers reaches them over wg0.
	remote map[netip.Addr]bool
}

// ipHeader reads an IP packet's version, source and destination. It
// rejects what no stack would accept: short packets, bad header lengths,
// a total length beyond the buffer.
func ipHeader(pkt []byte) (src, dst netip.Addr, ok bool) {
	if len(pkt) < 1 {
		return src, dst, false
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return src, dst, false
		}
		ihl := int(pkt[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(pkt[2:4]))
		if ihl < 20 || total < ihl || total > len(pkt) {
			return src, dst, false
		}
		return netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20])), true
	case 6:
		if len(pkt) < 40 || 40+int(binary.BigEndian.Uint16(pkt[4:6])) > len(pkt) {
			return src, dst, false
		}
		return netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40])), true
	}
	return src, dst, false
}

func (p *policy) inNetworks(a netip.Addr) bool {
	for _, n := range p.networks {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// fromDevice decides a packet a device sent (wg1 decrypted it).
func (p *policy) fromDevice(pkt []byte) verdict {
	src, dst, ok := ipHeader(pkt)
	if !ok || !src.Is4() {
		return drop
	}
	// wireguard-go already drops a packet whose source is not in its
	// peer's AllowedIPs (the device's /32); this also keeps out a source
	// that is no device of this node at all.
	allow, known := p.devices[src]
	if !known {
		return drop
	}
	switch {
	case dst == p.local || dst == p.gateway:
		return toLocal
	case p.users.Contains(dst):
		if other, ok := p.devices[dst]; ok && allow && other {
			return toDevice
		}
		if allow && p.remote[dst] {
			return toMesh
		}
		return drop
	case p.inNetworks(dst):
		return toMesh
	}
	return drop
}

// toDevice decides a packet towards a device (from wg0's peers or this
// node's netstack).
func (p *policy) toDevice(pkt []byte) verdict {
	src, dst, ok := ipHeader(pkt)
	if !ok || !src.Is4() {
		return drop
	}
	if _, ok := p.devices[dst]; !ok {
		return drop
	}
	switch {
	case src == p.gateway || src == p.local:
		return toDevice
	case p.users.Contains(src):
		// Another device: both must allow peers, wherever it enters.
		if (p.devices[src] || p.remote[src]) && p.devices[dst] {
			return toDevice
		}
		return drop
	case p.inNetworks(src):
		return toDevice
	}
	return drop
}

// routerTUN is wg1's tun.Device: what wireguard-go writes (from devices)
// is routed by the policy; what it reads are the packets for devices.
type routerTUN struct {
	mtu    int
	route  func(pkt []byte) // a device's packet (Write)
	out    chan []byte      // to devices; never closed
	events chan tun.Event
	// queued counts packets handed to wg1 for devices (wireguard-go
	// drains out concurrently, so its length says nothing).
	queued atomic.Uint64

	closing   chan struct{}
	closeOnce sync.Once
}

func newRouterTUN(mtu int, route func([]byte)) *routerTUN {
	t := &routerTUN{mtu: mtu, route: route, out: make(chan []byte, 512),
		events: make(chan tun.Event, 1), closing: make(chan struct{})}
	t.events <- tun.EventUp
	return t
}

// send queues a copy for the devices; a full queue drops (no blocking:
// the caller is wg0's or the netstack's goroutine).
func (t *routerTUN) send(pkt []byte) {
	select {
	case t.out <- append([]byte(nil), pkt...):
		t.queued.Add(1)
	default:
	}
}

func (t *routerTUN) File() *os.File           { return nil }
func (t *routerTUN) MTU() (int, error)        { return t.mtu, nil }
func (t *routerTUN) Name() (string, error)    { return DefaultInterfaceName, nil }
func (t *routerTUN) Events() <-chan tun.Event { return t.events }
func (t *routerTUN) BatchSize() int           { return 1 }

func (t *routerTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case pkt := <-t.out:
		sizes[0] = copy(bufs[0][offset:], pkt)
		return 1, nil
	case <-t.closing:
		return 0, os.ErrClosed
	}
}

func (t *routerTUN) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		if len(b) > offset {
			t.route(b[offset:])
		}
	}
	return len(bufs), nil
}

func (t *routerTUN) Close() error {
	t.closeOnce.Do(func() {
		close(t.closing)
		close(t.events)
	})
	return nil
}

package nat

import (
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// relayBatch is scratch space for framing a batch of packets for a relay.
type relayBatch struct {
	store [][]byte
	out   [][]byte
}

// sendRelay frames bufs for p's relay and sends them to it. ErrNoPath if
// this node has no direct path to the relay right now.
func (b *Bind) sendRelay(bufs [][]byte, p *peer, r *route) error {
	rr := r.via.route.Load()
	if rr == nil || rr.kind != PathDirect {
		return ErrNoPath
	}
	rb := b.relayBufs.Get().(*relayBatch)
	rb.out = rb.out[:0]
	for i, buf := range bufs {
		need := len(buf) + RelayOverhead
		if i == len(rb.store) {
			rb.store = append(rb.store, nil)
		}
		s := rb.store[i][:0]
		if cap(s) < need {
			s = make([]byte, 0, max(need, 2048))
			rb.store[i] = s
		}
		s = append(s, r.hdr[:]...)
		s = append(s, buf...)
		rb.out = append(rb.out, r.via.key.seal(s, 0))
	}
	err := b.inner.Send(rb.out, rr.ep)
	clear(rb.out)
	b.relayBufs.Put(rb)
	b.stats.txRelayPackets.Add(uint64(len(bufs)))
	return err
}

// handleFrame handles one received frame in buf[:size]. It returns the size
// of a WireGuard packet it left at the start of buf (one that arrived
// through a relay; *ep is then its sender's identity endpoint), or 0.
func (b *Bind) handleFrame(buf []byte, size int, ep *conn.Endpoint) int {
	pkt := buf[:size]
	f, err := parseFrame(pkt)
	if err != nil {
		b.stats.dropMalformed.Add(1)
		return 0
	}
	byID := *b.byID.Load()
	switch f.Type {
	case frameProbe, framePong, frameAddrs:
		p := byID[f.A]
		if p == nil {
			b.stats.dropNonMember.Add(1)
			return 0
		}
		if !verifyFrame(pkt, p.key) {
			b.stats.dropBadMAC.Add(1)
			return 0
		}
		src, ok := endpointAddr(*ep)
		if !ok {
			b.stats.dropMalformed.Add(1)
			return 0
		}
		b.handleControl(p, &f, src, nil)
	case frameRelay:
		b.forward(pkt, &f, byID)
	case frameRelayed:
		rl, from := byID[f.A], byID[f.B]
		if rl == nil || from == nil {
			b.stats.dropNonMember.Add(1)
			return 0
		}
		if !verifyFrame(pkt, rl.key) {
			b.stats.dropBadMAC.Add(1)
			return 0
		}
		if !rl.relay.Load() {
			b.stats.dropNotRelay.Add(1)
			return 0
		}
		switch Classify(f.Payload) {
		case ClassWireGuard:
			*ep = from.ep
			if f.Payload[0] <= 2 {
				from.lastHSRx.Store(time.Now().UnixNano())
			}
			return copy(buf, f.Payload)
		case ClassFrame:
			in, err := parseFrame(f.Payload)
			if err != nil || (in.Type != frameProbe && in.Type != framePong && in.Type != frameAddrs) || in.A != from.id {
				b.stats.dropMalformed.Add(1)
				return 0
			}
			if !verifyFrame(f.Payload, from.key) {
				b.stats.dropBadMAC.Add(1)
				return 0
			}
			b.handleControl(from, &in, netip.AddrPort{}, rl)
		default:
			b.stats.dropUnknown.Add(1)
		}
	}
	return 0
}

// forward relays a relay frame (pkt, parsed as f) to its destination, in
// place: only between current members, only if this node offers relaying,
// within the source's rate budget, and only over a direct path onward.
func (b *Bind) forward(pkt []byte, f *frame, byID map[uint64]*peer) {
	src, dst := byID[f.A], byID[f.B]
	if src == nil || dst == nil || src == dst {
		b.stats.dropNonMember.Add(1)
		return
	}
	if !verifyFrame(pkt, src.key) {
		b.stats.dropBadMAC.Add(1)
		return
	}
	if !b.cfg.Relay {
		b.stats.dropNotRelay.Add(1)
		return
	}
	if !src.relayLimit.allow(time.Now(), float64(len(pkt))) {
		b.stats.dropRateLimited.Add(1)
		return
	}
	r := dst.route.Load()
	if r == nil || r.kind != PathDirect {
		b.stats.dropNoPath.Add(1)
		return
	}
	reframeRelayed(pkt, b.id, dst.key)
	rb := b.relayBufs.Get().(*relayBatch)
	rb.out = append(rb.out[:0], pkt)
	if err := b.inner.Send(rb.out, r.ep); err != nil {
		b.log.Debug("nat: relay send", "err", err)
	}
	clear(rb.out)
	b.relayBufs.Put(rb)
	b.stats.relayedPackets.Add(1)
	b.stats.relayedBytes.Add(uint64(len(pkt)))
}

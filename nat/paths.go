package nat

import (
	"bytes"
	"crypto/rand"
	"net/netip"
	"slices"
	"time"
)

// outbox collects what a locked section wants sent, to send after unlock.
type outbox struct {
	pkts  []outPkt
	inits []*peer // peers whose stashed handshake initiation to flush
}

type outPkt struct {
	to   netip.AddrPort
	data []byte
}

func (o *outbox) add(to netip.AddrPort, data []byte) { o.pkts = append(o.pkts, outPkt{to, data}) }

// flush sends o's packets. Call without mu.
func (b *Bind) flush(o *outbox) {
	for _, pk := range o.pkts {
		if err := b.sendTo(pk.to, pk.data); err != nil {
			b.log.Debug("nat: send control packet", "to", pk.to, "err", err)
		}
	}
	for _, p := range o.inits {
		s := p.pendingInit.Swap(nil)
		if s == nil || time.Since(s.at) > 5*time.Second || p.lastHSRx.Load() > s.at.UnixNano() {
			continue // stale, or the peer is already handshaking with us
		}
		_ = b.Send([][]byte{s.data}, p.ep)
	}
	o.pkts, o.inits = o.pkts[:0], o.inits[:0]
}

func (b *Bind) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// manage is the Bind's one goroutine while open: probing, timeouts, and
// delivering path events.
func (b *Bind) manage(stop, done chan struct{}) {
	defer close(done)
	tick := b.cfg.ProbeInterval / 5
	if tick < time.Millisecond {
		tick = time.Millisecond
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var out outbox
	for {
		b.step(time.Now(), &out)
		b.flush(&out)
		b.deliverEvents()
		select {
		case <-stop:
			return
		case <-t.C:
		case <-b.kick:
		}
	}
}

func (b *Bind) deliverEvents() {
	b.mu.Lock()
	evs := b.events
	b.events = nil
	b.mu.Unlock()
	for _, ev := range evs {
		b.log.Info("nat path changed", "peer", shortKey(ev.Peer), "from", ev.Old.String(), "to", ev.New.String())
		if b.cfg.OnPathChange != nil {
			b.cfg.OnPathChange(ev)
		}
	}
}

func (b *Bind) alive(t, now time.Time) bool {
	return !t.IsZero() && now.Sub(t) < b.cfg.PathTimeout
}

// stale reports that a path has missed a keepalive: time to look for
// alternatives (relays included) while it is still in use.
func (b *Bind) stale(t, now time.Time) bool {
	return t.IsZero() || now.Sub(t) > b.cfg.ProbeInterval+b.cfg.ProbeInterval/2
}

// step runs one round of the manager: expire, probe, re-evaluate.
func (b *Bind) step(now time.Time, out *outbox) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return
	}
	for tx, pp := range b.pending {
		if now.Sub(pp.sent) > b.cfg.PathTimeout {
			delete(b.pending, tx)
		}
	}
	rebuild := false
	for _, p := range b.peers {
		for a, c := range p.cands {
			if !c.given && !b.alive(c.lastPong, now) && now.Sub(c.learned) > b.cfg.PathTimeout {
				delete(p.cands, a)
				rebuild = true
			}
		}
	}
	if rebuild {
		b.rebuildAddrsLocked()
	}
	b.pruneGuardsLocked()
	// WireGuard traffic arriving on a direct path proves it as well as a
	// pong would: a path in use needs no keepalive probes (the heartbeats
	// every member sends every few seconds keep every path in use), which
	// keeps an idle cluster's underlay quiet.
	for _, p := range b.peers {
		if r := p.route.Load(); r != nil && r.kind == PathDirect {
			if rx := p.rxDirect.Load(); rx != 0 {
				if c := p.cands[r.addr]; c != nil && rx > c.lastPong.UnixNano() {
					c.lastPong = time.Unix(0, rx)
				}
			}
		}
	}
	b.evaluateAllLocked(now, out)

	for _, p := range b.peers {
		if !p.flushAt.IsZero() && !now.Before(p.flushAt) {
			p.flushAt = time.Time{}
			out.inits = append(out.inits, p)
		}
		r := p.route.Load()
		healthy := r != nil && r.kind == PathDirect && !b.stale(p.cands[r.addr].lastPongOrZero(), now)
		full := b.cfg.ProbeInterval
		switch {
		case healthy && p.cands[r.addr].lan:
			// Nothing beats a LAN path: no discovery rounds on it.
			full = 1<<63 - 1
		case healthy:
			full = b.cfg.DiscoveryInterval
		case (r == nil || r.kind == PathNone) && (p.info.Since.IsZero() || now.Sub(p.info.Since) < pathlessFastFor):
			// A peer that just appeared or just lost its path gets a full
			// round every second for a while: a relay whose own path came
			// up after our first round is found in a second, not five.
			full = b.cfg.ProbeInterval / 5
		}
		switch {
		case p.lastFull.IsZero() || now.Sub(p.lastFull) >= full:
			withRelays := !healthy || p.lastFull.IsZero()
			p.lastFull, p.lastKeep = now, now
			for _, c := range p.cands {
				b.probeDirectLocked(p, c, now, out)
			}
			if withRelays {
				for _, rp := range b.peers {
					if rp != p && rp.relay.Load() {
						b.probeViaLocked(p, rp, now, out)
					}
				}
			}
			if r != nil && r.kind == PathRelay {
				b.callMeMaybeLocked(p, r, out)
			}
		case r != nil && now.Sub(p.lastKeep) >= b.cfg.ProbeInterval:
			p.lastKeep = now
			if r.kind == PathDirect {
				if c := p.cands[r.addr]; c != nil && now.Sub(c.lastPong) >= b.cfg.ProbeInterval {
					b.probeDirectLocked(p, c, now, out)
				}
			} else {
				b.probeViaLocked(p, r.via, now, out)
			}
		}
	}
}

// pathlessFastFor is how long a pathless peer is probed at the fast rate.
const pathlessFastFor = 30 * time.Second

func (c *cand) lastPongOrZero() time.Time {
	if c == nil {
		return time.Time{}
	}
	return c.lastPong
}

func newTxID() [txIDLen]byte {
	var tx [txIDLen]byte
	rand.Read(tx[:])
	return tx
}

// maxPending bounds outstanding probes (they expire after PathTimeout).
const maxPending = 1 << 14

func (b *Bind) probeDirectLocked(p *peer, c *cand, now time.Time, out *outbox) {
	if len(b.pending) >= maxPending {
		return
	}
	tx := newTxID()
	b.pending[tx] = &pendingProbe{peer: p, addr: c.addr, sent: now}
	c.lastProbe = now
	out.add(c.addr, appendFrame(make([]byte, 0, probeLen), stamped(frame{Type: frameProbe, A: b.id, TxID: tx}, now), p.key))
	b.stats.txProbes.Add(1)
}

// probeViaLocked probes p end to end through relay rp, if this node has a
// direct path to rp.
func (b *Bind) probeViaLocked(p, rp *peer, now time.Time, out *outbox) {
	rr := rp.route.Load()
	if rr == nil || rr.kind != PathDirect || len(b.pending) >= maxPending {
		return
	}
	tx := newTxID()
	b.pending[tx] = &pendingProbe{peer: p, via: rp, sent: now}
	v := p.vias[rp.id]
	if v == nil {
		v = &via{relay: rp}
		p.vias[rp.id] = v
	}
	v.lastProbe = now
	inner := appendFrame(make([]byte, 0, probeLen), stamped(frame{Type: frameProbe, A: b.id, TxID: tx}, now), p.key)
	out.add(rr.addr, appendFrame(make([]byte, 0, probeLen+RelayOverhead), &frame{Type: frameRelay, A: b.id, B: p.id, Payload: inner}, rp.key))
	b.stats.txProbes.Add(1)
}

// callMeMaybeLocked tells p, through its relay, the addresses other
// members see this node at, so that p probes them: without it, two members
// whose NAT mapping changed would each know only the other's dead address.
func (b *Bind) callMeMaybeLocked(p *peer, r *route, out *outbox) {
	rr := r.via.route.Load()
	if rr == nil || rr.kind != PathDirect {
		return
	}
	var addrs []netip.AddrPort
	for _, o := range b.peers {
		a := o.info.Observed
		if o.info.Kind == PathDirect && a.IsValid() && !slices.Contains(addrs, a) && len(addrs) < maxFrameAddrs {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return
	}
	inner := appendFrame(nil, stamped(frame{Type: frameAddrs, A: b.id, Addrs: addrs}, time.Now()), p.key)
	out.add(rr.addr, appendFrame(nil, &frame{Type: frameRelay, A: b.id, B: p.id, Payload: inner}, r.via.key))
}

// evaluateAllLocked re-picks every member's path; relays first, since the
// others' relay paths depend on the relays' own paths.
func (b *Bind) evaluateAllLocked(now time.Time, out *outbox) {
	for _, relays := range []bool{true, false} {
		for _, p := range b.peers {
			if p.relay.Load() == relays {
				b.evaluateLocked(p, now, out)
			}
		}
	}
}

// evaluateLocked picks p's path: the best live direct candidate (LAN over
// public, then lowest RTT; the current one is kept while alive unless a
// better class answers), else a live relay (the current one while alive,
// else the fastest), else none. It publishes the route and queues an event
// if the path changed.
func (b *Bind) evaluateLocked(p *peer, now time.Time, out *outbox) {
	cur := p.route.Load()
	var best *cand
	for _, c := range p.cands {
		if !b.alive(c.lastPong, now) {
			continue
		}
		if best == nil || c.lan && !best.lan || c.lan == best.lan && (c.rtt < best.rtt || c.rtt == best.rtt && c.addr.Compare(best.addr) < 0) {
			best = c
		}
	}
	if best != nil && cur != nil && cur.kind == PathDirect {
		// Stick with the current path while it answers. One that missed
		// its latest probe while another candidate answered is dropped at
		// once: the peer's NAT has usually remapped it (a new WAN
		// address), and waiting for PathTimeout would stall traffic.
		if c := p.cands[cur.addr]; c != nil && b.alive(c.lastPong, now) && c.lan == best.lan && !missedProbe(c, now) {
			best = c
		}
	}
	var next *route
	var rtt time.Duration
	switch {
	case best != nil:
		rtt = best.rtt
		if cur != nil && cur.kind == PathDirect && cur.addr == best.addr {
			next = cur
			break
		}
		ep, err := b.inner.ParseEndpoint(best.addr.String())
		if err != nil {
			b.log.Warn("nat: underlay cannot parse a candidate", "addr", best.addr, "err", err)
			break
		}
		next = &route{kind: PathDirect, addr: best.addr, ep: ep}
	default:
		var bv *via
		for _, v := range p.vias {
			rr := v.relay.route.Load()
			if !b.alive(v.lastPong, now) || !v.relay.relay.Load() || rr == nil || rr.kind != PathDirect {
				continue
			}
			if cur != nil && cur.kind == PathRelay && cur.via == v.relay {
				bv = v
				break
			}
			if bv == nil || v.rtt < bv.rtt {
				bv = v
			}
		}
		if bv == nil {
			break
		}
		rtt = bv.rtt
		rr := bv.relay.route.Load()
		if cur != nil && cur.kind == PathRelay && cur.via == bv.relay && cur.addr == rr.addr {
			next = cur
			break
		}
		next = &route{kind: PathRelay, addr: rr.addr, via: bv.relay}
		copy(next.hdr[:], []byte{frameMagic0, frameMagic1, frameVersion, frameRelay})
		putID(next.hdr[frameHeaderLen:], b.id)
		putID(next.hdr[frameHeaderLen+idLen:], p.id)
	}
	p.info.RTT = rtt
	if next == cur {
		return
	}
	p.route.Store(next)
	p.rxDirect.Store(0)
	old := p.info
	p.info = PathInfo{Since: now, RTT: rtt, Observed: old.Observed}
	if next != nil {
		p.info.Kind, p.info.Addr = next.kind, next.addr
		if next.via != nil {
			p.info.Via = next.via.pub
		}
		if cur == nil {
			b.scheduleFlushLocked(p, now, rtt, out)
		}
	}
	if old.Kind != p.info.Kind || old.Addr != p.info.Addr || old.Via != p.info.Via {
		b.events = append(b.events, PathEvent{Peer: p.pub, Old: old, New: p.info})
	} else {
		p.info.Since = old.Since
	}
}

// scheduleFlushLocked arranges for p's stashed handshake initiation (if
// any) to go out now that p has a path. Both ends usually get their path
// within one round trip of each other; if both flushed at once their
// handshakes would cross and WireGuard would wait out its 5 s retry. So the
// end with the lower public key sends at once and the other a few round
// trips later, and only if no handshake came from the peer meanwhile.
func (b *Bind) scheduleFlushLocked(p *peer, now time.Time, rtt time.Duration, out *outbox) {
	if bytes.Compare(b.pub[:], p.pub[:]) < 0 {
		out.inits = append(out.inits, p)
		return
	}
	p.flushAt = now.Add(4*rtt + 20*time.Millisecond)
}

func putID(b []byte, id uint64) {
	for i := 0; i < idLen; i++ {
		b[i] = byte(id >> (56 - 8*i))
	}
}

// handleControl acts on a verified probe or pong from member p, received
// directly from src (rl == nil) or through relay rl.
func (b *Bind) handleControl(p *peer, f *frame, src netip.AddrPort, rl *peer) {
	now := time.Now()
	var out outbox
	// Freshness before the rate limit: replays must not spend the peer's
	// budget. Pongs are checked against the probe they answer instead.
	if f.Type != framePong && !b.freshness(p, f, now) {
		return
	}
	switch f.Type {
	case frameProbe:
		if !p.probeLimit.allow(now, 1) {
			b.stats.dropRateLimited.Add(1)
			return
		}
		pong := stamped(frame{Type: framePong, A: b.id, TxID: f.TxID, Observed: src}, now)
		b.mu.Lock()
		if rl == nil {
			pkt := appendFrame(make([]byte, 0, pongLen), pong, p.key)
			out.add(src, pkt)
			b.learnLocked(p, src, now, &out)
		} else if rr := rl.route.Load(); rr != nil && rr.kind == PathDirect {
			inner := appendFrame(make([]byte, 0, pongLen), pong, p.key)
			out.add(rr.addr, appendFrame(make([]byte, 0, pongLen+RelayOverhead), &frame{Type: frameRelay, A: b.id, B: p.id, Payload: inner}, rl.key))
		}
		b.mu.Unlock()
		b.stats.txPongs.Add(1)
	case frameAddrs:
		// The peer's own addresses, sent because it has no direct path to
		// us: probe them all now (both ends probing at once is what opens
		// NATs), e.g. after its NAT mapping changed.
		if !p.probeLimit.allow(now, 1) {
			b.stats.dropRateLimited.Add(1)
			return
		}
		b.mu.Lock()
		for _, a := range f.Addrs {
			if a.IsValid() && a.Port() != 0 && !a.Addr().IsUnspecified() {
				b.learnLocked(p, netip.AddrPortFrom(a.Addr().Unmap(), a.Port()), now, &out)
			}
		}
		b.mu.Unlock()
	case framePong:
		b.mu.Lock()
		pp := b.pending[f.TxID]
		if pp == nil || pp.peer != p || pp.via != rl || (rl == nil && pp.addr != src) {
			b.mu.Unlock()
			return // late, duplicate, or not for the path it claims
		}
		delete(b.pending, f.TxID)
		b.anchorClock(p, f, now)
		rtt := now.Sub(pp.sent)
		if rl == nil {
			c := p.cands[pp.addr]
			if c == nil {
				b.mu.Unlock()
				return
			}
			c.lastPong, c.rtt = now, rtt
			if !c.mapped {
				b.rebuildAddrsLocked()
			}
			p.info.Observed = f.Observed
		} else {
			v := p.vias[rl.id]
			if v == nil {
				v = &via{relay: rl}
				p.vias[rl.id] = v
			}
			v.lastPong, v.rtt = now, rtt
		}
		b.evaluateAllLocked(now, &out)
		b.mu.Unlock()
	}
	b.flush(&out)
	b.wake() // deliver events promptly
}

// maxLearned bounds the candidates learned from probes per peer.
const maxLearned = 8

// learnLocked notes that p sent an authenticated probe from src: a
// peer-reflexive candidate (the address its NAT gave it towards us). It is
// probed back at once, which is what opens a hole through p's NAT.
func (b *Bind) learnLocked(p *peer, src netip.AddrPort, now time.Time, out *outbox) {
	c := p.cands[src]
	if c == nil {
		var learned []*cand
		for _, x := range p.cands {
			if !x.given {
				learned = append(learned, x)
			}
		}
		if len(learned) >= maxLearned {
			oldest := learned[0]
			for _, x := range learned {
				if x.learned.Before(oldest.learned) {
					oldest = x
				}
			}
			delete(p.cands, oldest.addr)
		}
		c = &cand{addr: src, lan: isLAN(src.Addr())}
		p.cands[src] = c
		b.rebuildAddrsLocked()
	}
	if !c.given {
		c.learned = now
	}
	// Without a direct path, answer at once: the peer just proved it can
	// reach us, and waiting for the next round (our last probe may have gone
	// out before it was even listening) leaves the pair pathless for a
	// whole ProbeInterval. probeLimit already bounds how often this runs.
	minGap := b.cfg.ProbeInterval / 10
	if r := p.route.Load(); r == nil || r.kind != PathDirect {
		minGap = 0
	}
	if !b.alive(c.lastPong, now) && now.Sub(c.lastProbe) > minGap {
		b.probeDirectLocked(p, c, now, out)
	}
}

// missedProbe reports whether c's latest probe went unanswered for well
// over its round trip.
func missedProbe(c *cand, now time.Time) bool {
	return c.lastProbe.After(c.lastPong) && now.Sub(c.lastProbe) > max(4*c.rtt, 250*time.Millisecond)
}

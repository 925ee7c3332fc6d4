package nat

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// PeerInfo is one cluster member as the Bind needs it.
type PeerInfo struct {
	PublicKey [32]byte
	// Candidates are the member's underlay addresses: its interface
	// addresses with its WireGuard port, and its STUN-reflexive address.
	Candidates []netip.AddrPort
	// Relay: the member offers to relay between members.
	Relay bool
}

// PathKind is how packets reach a peer.
type PathKind uint8

const (
	PathNone   PathKind = iota // no working path (yet)
	PathDirect                 // straight to one of the peer's addresses
	PathRelay                  // through a relaying member
)

func (k PathKind) String() string {
	switch k {
	case PathDirect:
		return "direct"
	case PathRelay:
		return "relay"
	}
	return "none"
}

// PathInfo is a peer's current path.
type PathInfo struct {
	Kind PathKind
	// Addr is the underlay address packets go to: the peer's (direct) or
	// the relay's (relay).
	Addr netip.AddrPort
	// Via is the relay's public key (relay only).
	Via [32]byte
	// RTT is the last probe round trip on this path.
	RTT time.Duration
	// Since is when the path became this one.
	Since time.Time
	// Observed is this node's address as the peer last saw it on a direct
	// path (from its pong): a reflexive address learned without STUN.
	Observed netip.AddrPort
}

func (p PathInfo) String() string {
	switch p.Kind {
	case PathDirect:
		return fmt.Sprintf("direct %s rtt=%v", p.Addr, p.RTT)
	case PathRelay:
		return fmt.Sprintf("relay via %s (%s) rtt=%v", shortKey(p.Via), p.Addr, p.RTT)
	}
	return "none"
}

// PathEvent is a change of a peer's path (kind, address or relay).
type PathEvent struct {
	Peer     [32]byte
	Old, New PathInfo
}

// LostDirect reports whether the peer left a direct path. That often means
// this node's NAT remapped or its address changed: its candidates are
// worth re-learning now.
func (ev PathEvent) LostDirect() bool {
	return ev.Old.Kind == PathDirect && ev.New.Kind != PathDirect
}

// Notable reports whether the kind of path or the relay changed, not just
// an address within the same kind: what the cluster's event log records.
func (ev PathEvent) Notable() bool {
	return ev.Old.Kind != ev.New.Kind || ev.Old.Via != ev.New.Via
}

// Describe is the path for people, naming the relay through nameOf:
// "direct ADDR", "via NAME" or "unreachable".
func (p PathInfo) Describe(nameOf func(key [32]byte) string) string {
	switch p.Kind {
	case PathDirect:
		return "direct " + p.Addr.String()
	case PathRelay:
		return "via " + nameOf(p.Via)
	}
	return "unreachable"
}

func shortKey(k [32]byte) string { return base64.StdEncoding.EncodeToString(k[:])[:8] }

// peer is one member. Immutable fields first; then atomics read by the
// data path; then control state guarded by Bind.mu.
type peer struct {
	pub        [32]byte
	id         uint64
	key        *macKey // pairwise frame key
	ep         *peerEndpoint
	relayLimit *tokenBucket // bytes this node relays for this peer as source
	probeLimit *tokenBucket // probes from this peer this node answers

	relay       atomic.Bool             // offers relaying
	route       atomic.Pointer[route]   // nil = none
	pendingInit atomic.Pointer[stashed] // handshake initiation sent while pathless
	lastHSRx    atomic.Int64            // unix nanos of the last handshake message received from the peer
	// rxDirect is when (unix nanos) a WireGuard packet last came in from
	// the current direct route's address; reset when the route changes.
	rxDirect atomic.Int64

	// Guarded by Bind.mu.
	cands    map[netip.AddrPort]*cand
	vias     map[uint64]*via
	info     PathInfo
	lastFull time.Time // last probe of every candidate
	lastKeep time.Time // last keepalive probe on the current path
	flushAt  time.Time // when to send the stashed initiation; zero = not scheduled
}

// route is a peer's data path; immutable once published.
type route struct {
	kind PathKind
	addr netip.AddrPort // direct: the peer's; relay: the relay's at build time
	ep   conn.Endpoint  // direct: the underlay endpoint for addr
	via  *peer          // relay
	hdr  [relayHdrLen]byte
}

type cand struct {
	addr      netip.AddrPort
	lan       bool
	given     bool // listed in PeerInfo; else learned from an authenticated probe
	mapped    bool // present in Bind.byAddr
	learned   time.Time
	lastProbe time.Time
	lastPong  time.Time
	rtt       time.Duration
}

type via struct {
	relay     *peer
	lastProbe time.Time
	lastPong  time.Time
	rtt       time.Duration
}

type pendingProbe struct {
	peer *peer
	addr netip.AddrPort // direct probe: where it went
	via  *peer          // probe through a relay
	sent time.Time
}

type stashed struct {
	data []byte
	at   time.Time
}

const handshakeInitiationSize = 148

// stashInitiation keeps a copy of a handshake initiation that could not be
// sent for lack of a path, to send it the moment a path appears instead of
// waiting out wireguard-go's 5 s retry.
func (p *peer) stashInitiation(bufs [][]byte) {
	if len(bufs) == 1 && len(bufs[0]) == handshakeInitiationSize && bufs[0][0] == 1 {
		p.pendingInit.Store(&stashed{data: append([]byte(nil), bufs[0]...), at: time.Now()})
	}
}

// isLAN reports whether a is a local-network address (preferred over public).
func isLAN(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast()
}

// SetPeers makes the Bind's members exactly peers (this node's own key is
// skipped). Members are who may probe, answer and relay; the Bind probes
// new or changed members right away. Unchanged members keep their paths.
//
// One bad entry never holds up the others: a member without a key, listed
// twice or clashing in id is left out, and a candidate no packet could go
// to (CandidatePolicy.Check without the caller's loopback and family
// rules) is dropped from its member; each is logged and counted
// (Stats.SkippedPeers, SkippedCandidates). The error is for the Bind's own
// failures, of which there are none today.
func (b *Bind) SetPeers(peers []PeerInfo) error {
	type want struct {
		info PeerInfo
		key  [32]byte
	}
	wants := make(map[[32]byte]want, len(peers))
	ids := map[uint64][32]byte{b.id: b.pub}
	skipPeer := func(msg string, args ...any) {
		b.stats.skippedPeers.Add(1)
		b.log.Warn("nat: skipping peer: "+msg, args...)
	}
	for i, pi := range peers {
		if pi.PublicKey == b.pub {
			continue
		}
		if pi.PublicKey == ([32]byte{}) {
			skipPeer("public key is missing", "index", i)
			continue
		}
		if _, dup := wants[pi.PublicKey]; dup {
			// Both go: which of the two is right is unknown.
			delete(wants, pi.PublicKey)
			skipPeer("listed twice", "peer", shortKey(pi.PublicKey))
			continue
		}
		id := peerID(pi.PublicKey)
		if other, clash := ids[id]; clash {
			skipPeer("shares an id with another", "peer", shortKey(pi.PublicKey), "other", shortKey(other))
			continue
		}
		ids[id] = pi.PublicKey
		cands := make([]netip.AddrPort, 0, len(pi.Candidates))
		for _, c := range pi.Candidates {
			if err := anyCandidate.Check(c); err != nil {
				b.stats.skippedCandidates.Add(1)
				b.log.Warn("nat: skipping candidate", "peer", shortKey(pi.PublicKey), "err", err)
				continue
			}
			cands = append(cands, c)
		}
		pi.Candidates = cands
		k, err := pairKey(b.priv, b.pub, pi.PublicKey)
		if err != nil {
			skipPeer("no pairwise key", "peer", shortKey(pi.PublicKey), "err", err)
			continue
		}
		wants[pi.PublicKey] = want{pi, k}
	}

	now := time.Now()
	var out outbox
	b.mu.Lock()
	for pub, p := range b.peers {
		if _, ok := wants[pub]; !ok {
			delete(b.peers, pub)
			p.ep.peer.Store(nil)
			p.route.Store(nil)
			for tx, pp := range b.pending {
				if pp.peer == p || pp.via == p {
					delete(b.pending, tx)
				}
			}
			if p.info.Kind != PathNone {
				b.events = append(b.events, PathEvent{Peer: pub, Old: p.info, New: PathInfo{Since: now}})
			}
		}
	}
	for pub, w := range wants {
		p := b.peers[pub]
		if p == nil {
			p = &peer{
				pub:        pub,
				id:         peerID(pub),
				key:        newMACKey(w.key),
				relayLimit: newTokenBucket(b.cfg.RelayBytesPerSec, b.cfg.RelayBytesPerSec),
				probeLimit: newTokenBucket(b.cfg.ProbesPerSec, 2*b.cfg.ProbesPerSec),
				cands:      map[netip.AddrPort]*cand{},
				vias:       map[uint64]*via{},
			}
			p.ep = b.endpointLocked(p.id)
			p.ep.peer.Store(p)
			b.peers[pub] = p
		}
		changed := p.relay.Load() != w.info.Relay
		p.relay.Store(w.info.Relay)
		listed := map[netip.AddrPort]bool{}
		for _, c := range w.info.Candidates {
			c = netip.AddrPortFrom(c.Addr().Unmap(), c.Port())
			listed[c] = true
			if ex := p.cands[c]; ex != nil {
				ex.given = true
				continue
			}
			p.cands[c] = &cand{addr: c, lan: isLAN(c.Addr()), given: true}
			changed = true
		}
		for a, c := range p.cands {
			if c.given && !listed[a] {
				delete(p.cands, a)
				changed = true
			}
		}
		if changed {
			p.lastFull = time.Time{}
		}
	}
	byID := make(map[uint64]*peer, len(b.peers))
	for _, p := range b.peers {
		byID[p.id] = p
	}
	for _, p := range b.peers {
		for id := range p.vias {
			if byID[id] == nil {
				delete(p.vias, id)
			}
		}
	}
	b.byID.Store(&byID)
	b.rebuildAddrsLocked()
	b.evaluateAllLocked(now, &out)
	b.mu.Unlock()
	b.flush(&out)
	b.wake()
	return nil
}

// rebuildAddrsLocked republishes byAddr: every candidate address that
// answered a probe or sent an authenticated one.
func (b *Bind) rebuildAddrsLocked() {
	m := map[netip.AddrPort]*peer{}
	for _, p := range b.peers {
		for a, c := range p.cands {
			c.mapped = !c.lastPong.IsZero() || !c.given
			if c.mapped {
				m[a] = p
			}
		}
	}
	b.byAddr.Store(&m)
}

// PathOf reports the current path to the peer with public key pub (Kind
// PathNone for a peer the Bind does not know).
func (b *Bind) PathOf(pub [32]byte) PathInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p := b.peers[pub]; p != nil {
		return p.info
	}
	return PathInfo{}
}

// Paths reports every member's current path.
func (b *Bind) Paths() map[[32]byte]PathInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := make(map[[32]byte]PathInfo, len(b.peers))
	for k, p := range b.peers {
		m[k] = p.info
	}
	return m
}

// NetworkChanged tells the Bind that local addresses or the NAT may have
// changed: every member is probed right away, on every candidate and relay.
// Paths that stopped working fall back after PathTimeout at the latest.
func (b *Bind) NetworkChanged() {
	b.mu.Lock()
	for _, p := range b.peers {
		p.lastFull = time.Time{}
	}
	b.mu.Unlock()
	b.wake()
}

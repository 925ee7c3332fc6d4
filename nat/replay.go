package nat

import (
	"crypto/rand"
	"encoding/binary"
	"time"
)

// ReplayWindow is how much older than the newest frame seen from a peer
// (on the peer's clock) a control frame may be. It only has to cover
// reordering and queueing, and a peer whose clock is behind ours before
// its first pong re-anchors it.
const ReplayWindow = 2 * time.Minute

// replayCacheSize bounds the nonces remembered per peer. When full, the
// oldest is forgotten and the floor rises to its timestamp, so what the
// cache forgets can never be replayed: memory stays bounded whatever a
// member sends, at worst by refusing its frames that arrive very late.
const replayCacheSize = 512

// verdict is what the replay guard says of a frame.
type verdict uint8

const (
	fresh  verdict = iota
	stale          // older than the window on the sender's clock
	replay         // nonce already seen, or not above the floor
)

// stampNow returns a timestamp and a random nonce for a control frame.
func stampNow(now time.Time) (int64, uint64) {
	var n [8]byte
	rand.Read(n[:])
	return now.UnixNano(), binary.BigEndian.Uint64(n[:])
}

// stamped returns f stamped for sending at now.
func stamped(f frame, now time.Time) *frame {
	f.TS, f.Nonce = stampNow(now)
	return &f
}

// freshness judges an unsolicited control frame from p, counting drops.
func (b *Bind) freshness(p *peer, f *frame, now time.Time) bool {
	b.guardMu.Lock()
	v := b.guardLocked(p).check(f.TS, f.Nonce, now.UnixNano())
	b.guardMu.Unlock()
	switch v {
	case stale:
		b.stats.dropStale.Add(1)
	case replay:
		b.stats.dropReplay.Add(1)
	}
	return v == fresh
}

// anchorClock takes p's pong to one of our probes as the truth about its clock.
func (b *Bind) anchorClock(p *peer, f *frame, now time.Time) {
	b.guardMu.Lock()
	b.guardLocked(p).anchor(f.TS, f.Nonce, now.UnixNano())
	b.guardMu.Unlock()
}

func (b *Bind) guardLocked(p *peer) *replayGuard {
	if b.guards == nil {
		b.guards = map[*peer]*replayGuard{}
	}
	g := b.guards[p]
	if g == nil {
		g = newReplayGuard()
		b.guards[p] = g
	}
	return g
}

// pruneGuardsLocked forgets the guards of peers no longer in the set.
// Call with mu held.
func (b *Bind) pruneGuardsLocked() {
	b.guardMu.Lock()
	defer b.guardMu.Unlock()
	for p := range b.guards {
		if b.peers[p.pub] != p {
			delete(b.guards, p)
		}
	}
}

type seenNonce struct {
	ts    int64
	nonce uint64
}

// replayGuard is one peer's freshness state: the peer's clock relative to
// ours, and the nonces it used within the window. Guarded by Bind.guardMu.
type replayGuard struct {
	off   int64 // peer clock minus ours (ns), as last anchored
	floor int64 // timestamps at or below this are refused (raised by eviction)
	seen  map[uint64]int64
	ring  []seenNonce // circular, in arrival order, allocated on first use
	head  int         // ring[head] is the oldest of the n remembered
	n     int
}

func newReplayGuard() *replayGuard {
	// Until the first pong, assume the peer's clock is ours: with synced
	// clocks (the usual case) that already bounds replays after a restart.
	return &replayGuard{seen: map[uint64]int64{}}
}

// check judges an unsolicited control frame (probe, addrs) stamped ts,
// nonce, received at now, and remembers it if fresh.
func (g *replayGuard) check(ts int64, nonce uint64, now int64) verdict {
	est := now + g.off // the peer's clock now, as we know it
	oldest := est - int64(ReplayWindow)
	g.expire(oldest)
	if ts < oldest {
		return stale
	}
	if _, ok := g.seen[nonce]; ok || ts <= g.floor {
		return replay
	}
	g.remember(ts, nonce)
	if ts > est {
		// The peer's clock runs ahead of our estimate. Only the peer
		// makes stamps (the MAC verified), so follow it.
		g.off = ts - now
	}
	return fresh
}

// anchor takes a pong that answered one of our probes: fresh whatever its
// timestamp (its tx id was ours and single use), so it sets the peer's
// clock, backwards too: a peer whose clock jumped back recovers here.
func (g *replayGuard) anchor(ts int64, nonce uint64, now int64) {
	g.off = ts - now
	g.expire(ts - int64(ReplayWindow))
	if _, ok := g.seen[nonce]; !ok && ts > g.floor {
		g.remember(ts, nonce)
	}
}

func (g *replayGuard) remember(ts int64, nonce uint64) {
	if g.ring == nil {
		g.ring = make([]seenNonce, replayCacheSize)
	}
	if g.n == len(g.ring) {
		g.floor = max(g.floor, g.ring[g.head].ts)
		g.pop()
	}
	g.ring[(g.head+g.n)%len(g.ring)] = seenNonce{ts, nonce}
	g.n++
	g.seen[nonce] = ts
}

func (g *replayGuard) pop() {
	delete(g.seen, g.ring[g.head].nonce)
	g.head = (g.head + 1) % len(g.ring)
	g.n--
}

// expire forgets nonces older than oldest: the window refuses them anyway.
func (g *replayGuard) expire(oldest int64) {
	for g.n > 0 && g.ring[g.head].ts < oldest {
		g.pop()
	}
}

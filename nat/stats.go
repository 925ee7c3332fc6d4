package nat

import (
	"sync"
	"sync/atomic"
	"time"
)

// Stats are the Bind's counters since New. Every field only grows.
type Stats struct {
	// Received datagrams by class.
	RxWireGuard uint64 // direct WireGuard packets handed to wireguard-go
	RxSTUN      uint64
	RxFrames    uint64 // probe, pong, relay and relayed frames
	RxRelayedWG uint64 // WireGuard packets that arrived through a relay

	// Drops by reason.
	DropUnknown     uint64 // not WireGuard, STUN or ours
	DropMalformed   uint64 // ours or STUN, but does not parse
	DropBadMAC      uint64 // a member's id with a MAC that does not verify (spoofed)
	DropNonMember   uint64 // names a peer that is not in the peer set
	DropRateLimited uint64 // over a per-peer probe or relay budget, or the STUN responder's
	DropNoPath      uint64 // no path to the destination (sending, or relaying onward)
	DropNotRelay    uint64 // a relay frame to a node not offering relaying, or "relayed" by a non-relay
	DropReplay      uint64 // a member's control frame whose nonce was already seen: a replay
	DropStale       uint64 // a member's control frame older than ReplayWindow on its clock: a replay, or a peer clock jump

	// Relaying done by this node for others.
	RelayedPackets uint64
	RelayedBytes   uint64

	// Sent by this node.
	TxRelayPackets uint64 // WireGuard packets this node sent through a relay
	TxProbes       uint64
	TxPongs        uint64
	STUNResponses  uint64

	// Left out of SetPeers as invalid (one bad entry never blocks the rest).
	SkippedPeers      uint64
	SkippedCandidates uint64
}

type counters struct {
	rxWireGuard, rxSTUN, rxFrames, rxRelayedWG                      atomic.Uint64
	dropUnknown, dropMalformed, dropBadMAC, dropNonMember           atomic.Uint64
	dropRateLimited, dropNoPath, dropNotRelay                       atomic.Uint64
	dropReplay, dropStale                                           atomic.Uint64
	relayedPackets, relayedBytes, txRelayPackets, txProbes, txPongs atomic.Uint64
	stunResponses                                                   atomic.Uint64
	skippedPeers, skippedCandidates                                 atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		RxWireGuard: c.rxWireGuard.Load(), RxSTUN: c.rxSTUN.Load(), RxFrames: c.rxFrames.Load(), RxRelayedWG: c.rxRelayedWG.Load(),
		DropUnknown: c.dropUnknown.Load(), DropMalformed: c.dropMalformed.Load(), DropBadMAC: c.dropBadMAC.Load(),
		DropNonMember: c.dropNonMember.Load(), DropRateLimited: c.dropRateLimited.Load(), DropNoPath: c.dropNoPath.Load(),
		DropNotRelay: c.dropNotRelay.Load(), DropReplay: c.dropReplay.Load(), DropStale: c.dropStale.Load(),
		RelayedPackets: c.relayedPackets.Load(), RelayedBytes: c.relayedBytes.Load(),
		TxRelayPackets: c.txRelayPackets.Load(), TxProbes: c.txProbes.Load(), TxPongs: c.txPongs.Load(),
		STUNResponses: c.stunResponses.Load(),
		SkippedPeers:  c.skippedPeers.Load(), SkippedCandidates: c.skippedCandidates.Load(),
	}
}

// tokenBucket is a rate limiter: rate tokens per second, at most burst.
type tokenBucket struct {
	mu     sync.Mutex // guards the fields below; a leaf lock
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate, burst float64) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst}
}

// allow takes n tokens if there are that many.
func (t *tokenBucket) allow(now time.Time, n float64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.last.IsZero() {
		t.tokens += now.Sub(t.last).Seconds() * t.rate
		if t.tokens > t.burst {
			t.tokens = t.burst
		}
	}
	t.last = now
	if t.tokens < n {
		return false
	}
	t.tokens -= n
	return true
}

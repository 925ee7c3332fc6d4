package nat

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// tapBind records the probe frames its node sends to one address: what an
// attacker on the path (or on the same LAN) captures.
type tapBind struct {
	conn.Bind
	mu     sync.Mutex
	to     netip.AddrPort
	probes [][]byte
}

func (t *tapBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if a, ok := endpointAddr(ep); ok {
		t.mu.Lock()
		if a == t.to {
			for _, b := range bufs {
				if isFrame(b) && b[3] == frameProbe {
					t.probes = append(t.probes, append([]byte(nil), b...))
				}
			}
		}
		t.mu.Unlock()
	}
	return t.Bind.Send(bufs, ep)
}

func (t *tapBind) first() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.probes) == 0 {
		return nil
	}
	return t.probes[0]
}

// TestProbeReplay is the attack: capture a real probe a sent to b, and
// replay it to b from another address. Without replay protection b takes
// the replay for a probe from a: it answers the attacker's address with a
// pong and a probe (a reflector aimed wherever the attacker spoofs), learns
// that address as one of a's candidates (evicting real ones), and spends a's
// probe budget. The replay must be dropped, counted, and answered with
// nothing.
func TestProbeReplay(t *testing.T) {
	tap := &tapBind{Bind: newFilterBind()}
	a := newNode(t, "a", 1, tap, false)
	b := newNode(t, "b", 2, newFilterBind(), false)
	tap.mu.Lock()
	tap.to = loop(b)
	tap.mu.Unlock()
	connect(t, []*tnode{a, b}, map[*tnode][]netip.AddrPort{a: {loop(a)}, b: {loop(b)}})
	waitPath(t, a, b, "direct", isDirect)
	// Capture a probe b has taken: one sent before b knew a was dropped as
	// from a non-member and never reached b's replay guard, and one still
	// on its way could be overtaken by its own replay.
	tap.mu.Lock()
	tap.probes = nil
	tap.mu.Unlock()
	var probe []byte
	waitFor(t, 10*time.Second, "a captured probe to b", func() bool { probe = tap.first(); return probe != nil })
	rx := b.bind.Stats().RxFrames
	waitFor(t, 10*time.Second, "b received a's frames after the captured probe", func() bool { return b.bind.Stats().RxFrames >= rx+2 })

	evil, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer evil.Close()
	evilAddr := evil.LocalAddr().(*net.UDPAddr).AddrPort()
	before := b.bind.Stats()
	if _, err := evil.WriteToUDPAddrPort(probe, loop(b)); err != nil {
		t.Fatal(err)
	}

	// Either b answers the attacker (the replay worked) or it counts the
	// replay; the frame is handled synchronously on receipt, so once the
	// drop is counted nothing will follow.
	buf := make([]byte, 2048)
	deadline := time.Now().Add(10 * time.Second)
	for {
		evil.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if n, _, err := evil.ReadFromUDPAddrPort(buf); err == nil {
			t.Fatalf("replayed probe acted upon: b sent a %d-byte %s to the attacker's address", n, frameName(buf[:n]))
		}
		if s := b.bind.Stats(); s.DropReplay > before.DropReplay {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("replayed probe neither answered nor counted as a replay")
		}
	}
	b.bind.mu.Lock()
	_, learned := b.bind.peers[a.pub].cands[evilAddr]
	b.bind.mu.Unlock()
	if learned {
		t.Fatalf("b learned the attacker's address %v as a candidate of a", evilAddr)
	}
	// A second copy is a replay too.
	evil.WriteToUDPAddrPort(probe, loop(b))
	waitFor(t, 10*time.Second, "second replay counted", func() bool {
		return b.bind.Stats().DropReplay >= before.DropReplay+2
	})
	// A probe captured long ago (made here with a's key, stamped an hour
	// back) is stale, whatever its nonce.
	k, err := pairKey(a.priv, a.pub, b.pub)
	if err != nil {
		t.Fatal(err)
	}
	old := appendFrame(nil, stamped(frame{Type: frameProbe, A: peerID(a.pub), TxID: newTxID()}, time.Now().Add(-time.Hour)), newMACKey(k))
	evil.WriteToUDPAddrPort(old, loop(b))
	waitFor(t, 10*time.Second, "old probe counted stale", func() bool {
		return b.bind.Stats().DropStale > before.DropStale
	})
	evil.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if n, _, err := evil.ReadFromUDPAddrPort(buf); err == nil {
		t.Fatalf("b sent a %d-byte %s to the attacker", n, frameName(buf[:n]))
	}
	// a and b still talk.
	mustEcho(t, a, b)
}

func frameName(b []byte) string {
	f, err := parseFrame(b)
	if err != nil {
		return "datagram"
	}
	switch f.Type {
	case frameProbe:
		return "probe"
	case framePong:
		return "pong"
	}
	return "frame"
}

func TestReplayGuard(t *testing.T) {
	const sec = int64(time.Second)
	now := int64(1_764_790_000) * sec
	g := newReplayGuard()
	if v := g.check(now, 1, now); v != fresh {
		t.Fatalf("first frame: %v", v)
	}
	if v := g.check(now, 1, now+sec); v != replay {
		t.Fatalf("same nonce again: %v", v)
	}
	if v := g.check(now-sec, 2, now+sec); v != fresh {
		t.Fatalf("reordered by a second: %v", v)
	}
	if v := g.check(now-int64(ReplayWindow)-sec, 3, now); v != stale {
		t.Fatalf("older than the window: %v", v)
	}

	// A peer whose clock is an hour behind ours: its probes are stale
	// until a pong to our probe anchors its clock, then fresh.
	g = newReplayGuard()
	behind := now - int64(time.Hour)
	if v := g.check(behind, 10, now); v != stale {
		t.Fatalf("behind peer before anchoring: %v", v)
	}
	g.anchor(behind, 11, now)
	if v := g.check(behind+sec, 12, now+sec); v != fresh {
		t.Fatalf("behind peer after its pong: %v", v)
	}
	// ... and a replay of its pong's stamp is still a replay.
	if v := g.check(behind, 11, now+sec); v != replay {
		t.Fatalf("pong stamp replayed as a probe: %v", v)
	}

	// A peer an hour ahead is followed at once (only it can stamp), and
	// its clock jumping back is healed by the next pong.
	g = newReplayGuard()
	ahead := now + int64(time.Hour)
	if v := g.check(ahead, 20, now); v != fresh {
		t.Fatalf("ahead peer: %v", v)
	}
	if v := g.check(now, 21, now); v != stale {
		t.Fatalf("ahead peer's clock jumped back: %v", v)
	}
	g.anchor(now, 22, now)
	if v := g.check(now+sec, 23, now+sec); v != fresh {
		t.Fatalf("after re-anchoring: %v", v)
	}
	if v := g.check(ahead, 20, now+sec); v != replay && v != stale {
		t.Fatalf("old nonce after re-anchoring: %v", v)
	}
}

// TestReplayGuardBounded: a member flooding distinct fresh stamps costs at
// most replayCacheSize nonces, and what the cache forgets stays refused.
func TestReplayGuardBounded(t *testing.T) {
	now := int64(1_764_790_000) * int64(time.Second)
	g := newReplayGuard()
	for i := range uint64(10 * replayCacheSize) {
		if v := g.check(now+int64(i), i, now); v != fresh {
			t.Fatalf("frame %d: %v", i, v)
		}
	}
	if len(g.seen) > replayCacheSize || g.n > replayCacheSize {
		t.Fatalf("cache holds %d nonces (ring %d), bound %d", len(g.seen), g.n, replayCacheSize)
	}
	for i := range uint64(10 * replayCacheSize) {
		if v := g.check(now+int64(i), i, now); v == fresh {
			t.Fatalf("frame %d taken twice after the flood", i)
		}
	}
	// Past the window everything is forgotten.
	later := now + int64(time.Hour) + int64(2*ReplayWindow)
	if v := g.check(later, 1, later); v != fresh {
		t.Fatalf("new frame an hour later: %v", v)
	}
	if g.n != 1 || len(g.seen) != 1 {
		t.Fatalf("expired nonces kept: ring %d, map %d", g.n, len(g.seen))
	}
}

func (v verdict) String() string {
	return [...]string{"fresh", "stale", "replay"}[v]
}

// BenchmarkReplayGuard is the cost a control frame pays for freshness.
func BenchmarkReplayGuard(b *testing.B) {
	g := newReplayGuard()
	now := time.Now().UnixNano()
	b.ReportAllocs()
	for i := range b.N {
		g.check(now+int64(i), uint64(i)*0x9e3779b97f4a7c15, now+int64(i))
	}
}

package nat

import (
	"net/netip"
	"testing"
)

func loop(n *tnode) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.port())
}

// TestLoopbackScenarios runs real wireguard-go devices over real UDP on
// 127.0.0.1: a and b with two relays r1, r2; partitions are drop filters in
// the underlay.
func TestLoopbackScenarios(t *testing.T) {
	fa, fb, f1, f2 := newFilterBind(), newFilterBind(), newFilterBind(), newFilterBind()
	a := newNode(t, "a", 1, fa, false)
	b := newNode(t, "b", 2, fb, false)
	r1 := newNode(t, "r1", 3, f1, true)
	r2 := newNode(t, "r2", 4, f2, true)
	nodes := []*tnode{a, b, r1, r2}
	cands := map[*tnode][]netip.AddrPort{}
	for _, n := range nodes {
		cands[n] = []netip.AddrPort{loop(n)}
	}

	// (b) a and b cannot reach each other: relayed, and traffic flows.
	fa.set(loop(b))
	fb.set(loop(a))
	// r2 is cut off from everyone at first, so r1 is the relay.
	f2.set(loop(a), loop(b), loop(r1))
	fa.set(loop(b), loop(r2))
	fb.set(loop(a), loop(r2))
	connect(t, nodes, cands)
	waitPath(t, a, b, "relay via r1", viaRelay(r1))
	waitPath(t, b, a, "relay via r1", viaRelay(r1))
	mustEcho(t, a, b)
	if r1.bind.Stats().RelayedPackets == 0 {
		t.Fatal("r1 relayed nothing")
	}

	// (d) r1 dies (cut off), r2 is reachable again: r2 takes over.
	f2.set()
	fa.set(loop(b), loop(r1))
	fb.set(loop(a), loop(r1))
	waitPath(t, a, b, "relay via r2", viaRelay(r2))
	waitPath(t, b, a, "relay via r2", viaRelay(r2))
	mustEcho(t, a, b)

	// No relay left: none.
	fa.set(loop(b), loop(r1), loop(r2))
	fb.set(loop(a), loop(r1), loop(r2))
	waitPath(t, a, b, "none", isNone)
	// A relay returns: recovered.
	fa.set(loop(b), loop(r1))
	fb.set(loop(a), loop(r1))
	waitPath(t, a, b, "relay via r2 again", viaRelay(r2))
	mustEcho(t, a, b)

	// (c) the partition lifts: upgraded to direct.
	fa.set()
	fb.set()
	p := waitPath(t, a, b, "direct", isDirect)
	if p.Addr != loop(b) {
		t.Fatalf("direct path to %v, want %v", p.Addr, loop(b))
	}
	waitPath(t, b, a, "direct", isDirect)
	mustEcho(t, b, a)

	// The path change events told the story.
	var kinds []PathKind
	for len(a.events) > 0 {
		ev := <-a.events
		if ev.Peer == b.pub {
			kinds = append(kinds, ev.New.Kind)
		}
	}
	if len(kinds) < 4 || kinds[len(kinds)-1] != PathDirect {
		t.Fatalf("a's events for b: %v", kinds)
	}
	noGenuineDropped(t, nodes...)
}

// noGenuineDropped checks that the replay guard took no member's own
// frames for replays: every frame in these scenarios is genuine.
func noGenuineDropped(t *testing.T, nodes ...*tnode) {
	t.Helper()
	for _, n := range nodes {
		if s := n.bind.Stats(); s.DropReplay != 0 || s.DropStale != 0 {
			t.Errorf("%s dropped genuine frames: %d as replays, %d as stale", n.name, s.DropReplay, s.DropStale)
		}
	}
}

// TestLoopbackDirect is scenario (a) on its own: two nodes that reach each
// other end up direct, with a measured RTT, and traffic flows.
func TestLoopbackDirect(t *testing.T) {
	a := newNode(t, "a", 1, newFilterBind(), false)
	b := newNode(t, "b", 2, newFilterBind(), false)
	connect(t, []*tnode{a, b}, map[*tnode][]netip.AddrPort{a: {loop(a)}, b: {loop(b)}})
	p := waitPath(t, a, b, "direct", isDirect)
	if p.Addr != loop(b) || p.RTT <= 0 || p.Since.IsZero() {
		t.Fatalf("path %+v", p)
	}
	mustEcho(t, a, b)
	mustEcho(t, b, a)
	if st := a.bind.Stats(); st.RxWireGuard == 0 || st.TxProbes == 0 || st.RxFrames == 0 {
		t.Fatalf("stats %+v", st)
	}
	noGenuineDropped(t, a, b)
}

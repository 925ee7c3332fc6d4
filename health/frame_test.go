package health

import (
	"bytes"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

func TestFrameSealOpen(t *testing.T) {
	beat := encodeBeat(nil, &heartbeat{Name: "b", Term: 2})
	src := nodeB.MeshIP
	f, err := SealFrame(testKey, src, 1<<40, beat)
	if err != nil {
		t.Fatal(err)
	}
	if f[0] != FramePrefix || len(f) != len(beat)+1+6+16 || bytes.Contains(f, []byte("\x01b")) {
		t.Fatalf("frame %x", f)
	}
	hk := seal.Derive(testKey, keyPurpose)
	other := seal.Derive(seal.Key{9}, keyPurpose)
	if stamp, got, err := openFrame([]seal.Key{other, hk}, src, f); err != nil || !bytes.Equal(got, beat) || stamp != 1<<40 {
		t.Fatalf("open with the second key: %d %x, %v", stamp, got, err)
	}
	if _, _, err := openFrame([]seal.Key{hk}, nodeC.MeshIP, f); err == nil {
		t.Error("opened as coming from another address")
	}
	if _, _, err := openFrame([]seal.Key{other}, src, f); err == nil {
		t.Error("opened under another key")
	}
	if _, _, err := openFrame([]seal.Key{testKey}, src, f); err == nil {
		t.Error("opened under the data key itself (not the derived one)")
	}
	for i := range f {
		g := bytes.Clone(f)
		g[i] ^= 1
		if _, _, err := openFrame([]seal.Key{hk}, src, g); err == nil {
			t.Errorf("opened with byte %d flipped", i)
		}
	}
	if _, _, err := openFrame([]seal.Key{hk}, src, f[:len(f)-1]); err == nil {
		t.Error("opened cut")
	}
}

// Every way a beat can fail to be bound to its sender, and the ways it
// is accepted.
func TestHandleFrameBindsBeatsToTheirSender(t *testing.T) {
	h := newHarness(t)
	m := h.m
	st := func(n *raftstore.Node, seq uint64) *heartbeat {
		return &heartbeat{Name: n.Name, ID: n.ID, Seq: uint64(epoch.UnixMilli()) + seq, Term: 7, Leader: true, has: beatID}
	}
	drops := func() map[string]uint64 { return m.BeatDrops() }

	h.deliver(st(nodeB, 1), nodeC.MeshIP) // b's name from c's address
	h.deliver(st(nodeB, 2), netip.MustParseAddr("172.24.9.9"))
	hb := st(nodeB, 3)
	hb.ID = nodeC.ID // b's name with c's ID
	h.deliver(hb, nodeB.MeshIP)
	h.deliver(st(self, 4), nodeB.MeshIP) // this node's own name
	stranger := &raftstore.Node{Name: "z", ID: nodeC.ID}
	h.deliver(st(stranger, 5), netip.MustParseAddr("172.24.9.9")) // a known ID under an unknown name
	h.deliver(st(&raftstore.Node{Name: "z"}, 6), nodeC.MeshIP)    // an unknown name from a known node's address
	if d := drops(); d[DropSource] != 3 || d[DropIdentity] != 3 || len(h.store.takeObserved()) != 0 {
		t.Fatalf("drops %v", d)
	}
	if _, ok := m.beats.get("b"); ok {
		t.Fatal("a forged beat was recorded")
	}

	// Not sealed, or not under our key: dropped.
	m.NotifyMsg(encodeBeat(nil, st(nodeB, 7)))
	f, _ := SealFrame(seal.Key{9}, nodeB.MeshIP, uint64(epoch.UnixMilli())+8, encodeBeat(nil, st(nodeB, 8)))
	m.HandleFrame(f, netip.AddrPortFrom(nodeB.MeshIP, 7946))
	m.HandleFrame([]byte{FramePrefix, 1, 2}, netip.AddrPortFrom(nodeB.MeshIP, 7946))
	if d := drops(); d[DropUnsealed] != 1 || d[DropOpen] != 2 {
		t.Fatalf("drops %v", d)
	}

	// The real b, from its address, any port: accepted, and handed on
	// with the state's ID. Then replays, also after a newer one, are not.
	h.deliver(st(nodeB, 10), nodeB.MeshIP)
	h.deliver(st(nodeB, 10), nodeB.MeshIP)
	h.deliver(st(nodeB, 12), nodeB.MeshIP)
	h.deliver(st(nodeB, 11), nodeB.MeshIP)
	if got := h.store.takeObserved(); len(got) != 2 || got[0] != "id-b/7/true" {
		t.Fatalf("observed %v", got)
	}
	if d := drops(); d[DropReplay] != 2 {
		t.Fatalf("drops %v", d)
	}

	// A node the state does not know yet counts for liveness only.
	joiner := &raftstore.Node{Name: "new", ID: "id-new"}
	h.deliver(st(joiner, 20), netip.MustParseAddr("172.24.0.9"))
	if _, ok := m.beats.get("new"); !ok {
		t.Error("a joiner's beat was not recorded")
	}
	if got := h.store.takeObserved(); len(got) != 0 {
		t.Errorf("a joiner's beat reached Raft: %v", got)
	}

	// A first beat sent long ago (a capture replayed to a node that
	// restarted) is stale.
	h.deliver(&heartbeat{Name: nodeC.Name, Seq: uint64(epoch.Add(-time.Hour).UnixMilli())}, nodeC.MeshIP)
	if d := drops(); d[DropStale] != 1 {
		t.Fatalf("drops %v", d)
	}
}

// A sender that restarts stamps its beats above the ones before, with
// nothing kept on disk; a Bye is bound like any beat.
func TestRestartedSenderIsHeardAndByeIsBound(t *testing.T) {
	h := newHarness(t)
	clock := h.clock
	var frames [][]byte
	newSender := func() *Monitor {
		s, err := New(Config{Name: nodeB.Name, NodeID: nodeB.ID, MeshIP: nodeB.MeshIP, Now: clock.Now}, Deps{
			Store: newFakeStore(self, nodeB), Host: &fakeHost{}, DataKeys: testKeys,
			Send: func(_ *memberlist.Node, msg []byte) error { frames = append(frames, msg); return nil },
			Log:  slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		s.NotifyJoin(member(self))
		return s
	}
	from := netip.AddrPortFrom(nodeB.MeshIP, 7946)
	s := newSender()
	var ss sendState
	for range 3 {
		s.beat(&ss)
	}
	clock.Advance(2 * time.Second) // a restart
	s2 := newSender()
	s2.beat(&sendState{})
	for _, f := range frames {
		h.m.HandleFrame(f, from)
	}
	if got := h.store.takeObserved(); len(got) != 4 {
		t.Fatalf("observed %d of 4 beats across a restart: %v (drops %v)", len(got), got, h.m.BeatDrops())
	}

	frames = nil
	s2.Goodbye()
	h.m.HandleFrame(frames[0], netip.AddrPortFrom(nodeC.MeshIP, 7946)) // from elsewhere
	if st, _ := h.m.members.state("b"); st == memberlist.StateLeft {
		t.Fatal("a goodbye from another address was believed")
	}
	if got := h.store.takeObserved(); len(got) != 0 {
		t.Fatalf("a goodbye from another address reached the store: %v", got)
	}
	h.m.HandleFrame(frames[0], from)
	if st, _ := h.m.members.state("b"); st != memberlist.StateLeft {
		t.Fatalf("goodbye not believed: %v", st)
	}
	// The store hears it (a leader that leaves is replaced at once).
	if got := h.store.takeObserved(); !slices.Equal(got, []string{"bye/" + nodeB.ID}) {
		t.Fatalf("store observed %v, want the goodbye of %s", got, nodeB.ID)
	}
}

func FuzzOpenFrame(f *testing.F) {
	hk := seal.Derive(testKey, keyPurpose)
	beat := encodeBeat(nil, &heartbeat{Name: "n", Term: 2, Cands: []string{"1.2.3.4:5"}, has: beatParts})
	good, _ := SealFrame(testKey, nodeB.MeshIP, 3, beat)
	f.Add(good)
	f.Add([]byte{FramePrefix})
	f.Add(append([]byte{FramePrefix, 0xff, 0xff}, make([]byte, 20)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		stamp, body, err := openFrame([]seal.Key{hk}, nodeB.MeshIP, b)
		if err != nil {
			return
		}
		// Only frames sealed under the key open, and they are what was
		// sealed.
		if !bytes.Equal(b, good) || stamp != 3 || !bytes.Equal(body, beat) {
			t.Fatalf("opened a frame never sealed: %x", b)
		}
	})
}

// FuzzHandleFrame: whatever arrives on the gossip port with the prefix,
// sealed or not, the receiver never panics and never hands Raft a beat
// that is not bound to its sender.
func FuzzHandleFrame(f *testing.F) {
	beat := encodeBeat(nil, &heartbeat{Name: "b", ID: "id-b", Term: 7, has: beatID})
	good, _ := SealFrame(testKey, nodeB.MeshIP, uint64(epoch.UnixMilli())+1, beat)
	forged, _ := SealFrame(testKey, nodeC.MeshIP, uint64(epoch.UnixMilli())+1, beat)
	f.Add(good, []byte{172, 24, 0, 2})
	f.Add(good, []byte{172, 24, 0, 3})
	f.Add(forged, []byte{172, 24, 0, 3})
	f.Add([]byte{FramePrefix, 0}, []byte{1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, frame, ip []byte) {
		h := newHarness(t)
		src, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		h.m.HandleFrame(frame, netip.AddrPortFrom(src, 7946))
		if got := h.store.takeObserved(); len(got) > 0 && src.Unmap() != nodeB.MeshIP && src.Unmap() != nodeC.MeshIP {
			t.Fatalf("beat from %s reached Raft: %v", src, got)
		}
	})
}

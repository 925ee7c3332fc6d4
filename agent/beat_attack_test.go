package agent

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/health"
	"github.com/runos/runos-agent/seal"
)

// Attacks on the heartbeat plane. Every attacker here sends UDP datagrams
// to the members' gossip port through a mesh.Net: a node's own Net is a
// local process or a pod on that node (its mesh IP, any port), another
// member's Net is a member node that lies. The quiet transport is on
// (Raft's timers above the heartbeat interval, as in production), since
// that is where heartbeats reach Raft.

func quietTuning() Tuning {
	tuning := fastTuning
	tuning.RaftHeartbeat = time.Second
	tuning.RaftElection = time.Second
	return tuning
}

// plainBeat is a heartbeat in the unsealed wire form (health/beatwire.go)
// that an attacker writes by hand: name, seq, term, the leader flag, the
// node ID.
func plainBeat(name, id string, seq, term uint64, leader bool) []byte {
	const flagLeader, flagID = 1, 1 << 6
	flags := uint64(flagID)
	if leader {
		flags |= flagLeader
	}
	b := []byte{'H', 1}
	b = binary.AppendUvarint(b, flags)
	b = binary.AppendUvarint(b, uint64(len(name)))
	b = append(b, name...)
	b = binary.AppendUvarint(b, seq)
	b = binary.AppendUvarint(b, term)
	b = binary.AppendUvarint(b, uint64(len(id)))
	return append(b, id...)
}

// memberlistUserMsg wraps a beat as a memberlist user message (type 8),
// the way heartbeats used to travel.
func memberlistUserMsg(beat []byte) []byte { return append([]byte{8}, beat...) }

// attacker is a UDP socket on a node's mesh IP, opened through that
// node's Net, that is not the agent's.
type attacker struct {
	t  testing.TB
	pc net.PacketConn
}

func newAttacker(t testing.TB, on *Agent) *attacker {
	t.Helper()
	pc, err := on.dev.Net().ListenPacket("udp", netip.AddrPortFrom(on.cfg.MeshIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return &attacker{t: t, pc: pc}
}

// sendAll sends every datagram to the gossip port of every agent but skip.
func (at *attacker) sendAll(agents []*Agent, skip *Agent, datagrams ...[]byte) {
	for _, a := range agents {
		if a == skip {
			continue
		}
		to := net.UDPAddrFromAddrPort(a.transport.Addr())
		for _, d := range datagrams {
			if _, err := at.pc.WriteTo(d, to); err != nil {
				at.t.Logf("attacker write to %s: %v", to, err)
			}
		}
	}
}

// forgeries are every form of one forged beat an attacker can send: as a
// memberlist message (how beats travelled before), sealed under a key of
// its own (a pod, a local user), and sealed under the cluster's key, as a
// member that lies can.
func forgeries(t testing.TB, member *Agent, name, id string, seq, term uint64, leader bool) [][]byte {
	t.Helper()
	beat := plainBeat(name, id, seq, term, leader)
	own, err := seal.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	out := [][]byte{memberlistUserMsg(beat)}
	for _, k := range []seal.Key{own, member.dataKeys()[0]} {
		f, err := health.SealFrame(k, member.cfg.MeshIP, seq, beat)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f)
	}
	return out
}

// stamp is a send stamp a forger would pick: the time now, so that no
// replay or staleness check is what stops it.
func stamp() uint64 {
	now := uint64(time.Now().UnixMilli())
	for {
		prev := lastStamp.Load()
		next := max(prev+1, now)
		if lastStamp.CompareAndSwap(prev, next) {
			return next
		}
	}
}

var lastStamp atomic.Uint64

// terms are every running node's Raft term.
func terms(c *cluster) map[string]uint64 {
	out := map[string]uint64{}
	for _, a := range c.running() {
		tm, _ := a.store.Beat()
		out[a.Name()] = tm
	}
	return out
}

func writeToken(a *Agent) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := a.CreateToken(ctx, api.TokenRequest{})
	return err
}

// (a) A forged "leader" beat naming a follower, in the current term, sent
// from a pod on the leader's node and from another member, neither
// demotes the leader nor makes writes fail.
func TestAttackForgedLeaderBeatChangesNothing(t *testing.T) {
	c := newClusterTuned(t, 3, quietTuning())
	l := c.waitLeader()
	var victim, liar *Agent // the follower named, and a member that lies
	for _, a := range c.running() {
		switch {
		case a == l:
		case victim == nil:
			victim = a
		default:
			liar = a
		}
	}
	term0, _ := l.store.Beat()
	pod := newAttacker(t, l)
	member := newAttacker(t, liar)

	var failed []error
	for i := range 12 { // 12 forged rounds, one every 250 ms, with writes
		beats := forgeries(t, liar, victim.Name(), victim.cfg.NodeID, stamp(), term0, true)
		pod.sendAll(c.running(), nil, beats...)
		member.sendAll(c.running(), liar, beats...)
		// The lying member claims the lead in its own name, from its own
		// address: bound to it, but Raft does not follow it.
		member.sendAll(c.running(), liar, forgeries(t, liar, liar.Name(), liar.cfg.NodeID, stamp(), term0, true)...)
		if i%3 == 0 {
			if err := writeToken(l); err != nil {
				failed = append(failed, err)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	if len(failed) > 0 {
		t.Errorf("%d of 4 writes failed under forged beats: %v", len(failed), failed)
	}
	if !l.store.IsLeader() {
		t.Errorf("the leader %s was demoted by forged beats", l.Name())
	}
	for name, tm := range terms(c) {
		if tm != term0 {
			t.Errorf("%s: term %d, was %d: forged beats caused an election", name, tm, term0)
		}
	}
	if err := writeToken(c.waitLeader()); err != nil {
		t.Errorf("write after the attack: %v", err)
	}
}

// (b) A forged beat with the largest term changes no node's term, and
// writes keep committing.
func TestAttackHugeTermBeatChangesNoTerm(t *testing.T) {
	c := newClusterTuned(t, 3, quietTuning())
	l := c.waitLeader()
	f := c.follower()
	term0, _ := l.store.Beat()
	pod := newAttacker(t, f)
	member := newAttacker(t, f) // f lying in its own name, from its own address
	for _, leader := range []bool{true, false} {
		for _, who := range c.running() {
			pod.sendAll(c.running(), nil, forgeries(t, f, who.Name(), who.cfg.NodeID, stamp(), math.MaxUint64, leader)...)
		}
		member.sendAll(c.running(), f, forgeries(t, f, f.Name(), f.cfg.NodeID, stamp(), math.MaxUint64, leader)...)
		member.sendAll(c.running(), f, forgeries(t, f, f.Name(), f.cfg.NodeID, stamp(), term0+3, leader)...)
	}
	time.Sleep(time.Second) // a Raft heartbeat timeout
	for name, tm := range terms(c) {
		if tm > term0+1 {
			t.Errorf("%s: term %d after a forged beat (was %d)", name, tm, term0)
		}
	}
	// Writes commit: through whichever node leads now.
	var err error
	for range 3 {
		l := c.waitLeader()
		if err = writeToken(l); err == nil {
			break
		}
	}
	if err != nil {
		t.Errorf("writes fail after a forged huge term: %v", err)
	}
}

// (c) A member's key does not let it speak for another member: a beat
// naming X, sealed with the cluster's key, sent from Y's mesh IP, is
// dropped by every receiver.
func TestAttackBeatFromAnotherMembersAddressDropped(t *testing.T) {
	c := newClusterTuned(t, 3, quietTuning())
	l := c.waitLeader()
	x, y := c.running()[0], c.running()[1]
	if x == l {
		x, y = y, x
	}
	before := map[string]uint64{}
	for _, a := range c.running() {
		before[a.Name()] = a.health.BeatDrops()[health.DropSource]
	}
	term0, _ := l.store.Beat()
	at := newAttacker(t, y)
	for range 5 {
		at.sendAll(c.running(), y, forgeries(t, y, x.Name(), x.cfg.NodeID, stamp(), term0, true)...)
		time.Sleep(100 * time.Millisecond)
	}
	eventually(t, "forged beats counted as dropped for their source", func() error {
		for _, a := range c.running() {
			if a == y || a == x {
				continue // y sent them; x drops them as naming itself
			}
			if got := a.health.BeatDrops()[health.DropSource]; got < before[a.Name()]+5 {
				return fmt.Errorf("%s: %d beats dropped for their source, want %d more", a.Name(), got, 5)
			}
		}
		if got := x.health.BeatDrops()[health.DropIdentity]; got < 5 {
			return fmt.Errorf("%s: %d beats in its own name dropped, want 5", x.Name(), got)
		}
		return nil
	})
	if !l.store.IsLeader() {
		t.Errorf("leader %s demoted", l.Name())
	}
	if err := writeToken(c.waitLeader()); err != nil {
		t.Errorf("write: %v", err)
	}
}

// (d) A captured beat replayed from its sender's own mesh IP (a pod on
// that node) is dropped.
func TestAttackReplayedBeatDropped(t *testing.T) {
	c := newClusterTuned(t, 3, quietTuning())
	victim, sender := c.running()[0], c.running()[1]
	captured := make(chan []byte, 1)
	victim.transport.HandlePrefix(health.FramePrefix, func(b []byte, from netip.AddrPort) {
		if from.Addr().Unmap() == sender.cfg.MeshIP {
			select {
			case captured <- append([]byte(nil), b...):
			default:
			}
		}
		victim.health.HandleFrame(b, from)
	})
	frame := <-captured
	before := victim.health.BeatDrops()[health.DropReplay]
	pod := newAttacker(t, sender)
	for range 3 {
		pod.sendAll([]*Agent{victim}, nil, frame)
	}
	eventually(t, "replays dropped", func() error {
		if got := victim.health.BeatDrops()[health.DropReplay]; got < before+3 {
			return fmt.Errorf("%d replays dropped, want %d", got-before, 3)
		}
		return nil
	})
	if d := victim.health.BeatDrops(); d[health.DropOpen]+d[health.DropSource]+d[health.DropStale] != 0 {
		t.Errorf("unexpected drops: %v", d)
	}
}

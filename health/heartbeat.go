package health

import (
	"context"
	"math"
	"slices"
	"time"

	"github.com/runos/runos-agent/hostinfo"
)

// heartbeat is what every agent sends every member every interval, as a
// sealed datagram on the gossip port inside WireGuard (frame.go).
// beatwire.go has its wire form: the optional parts travel only when they changed (or in
// every fullBeatEvery-th beat); a receiver keeps the last value of each.
type heartbeat struct {
	Name   string
	ID     string // node ID, the Raft server ID
	Seq    uint64
	Term   uint64 // the sender's Raft term
	Leader bool   // the sender leads that term
	// NoLeader: the sender does not lead and follows no leader (see
	// beatNoLeader).
	NoLeader bool
	Version  string
	Host     hostinfo.Snapshot
	MeshRx   uint64
	MeshTx   uint64
	// Cands are the sender's current underlay candidates (advertised plus
	// STUN-reflexive): gossip spreads a changed address within one
	// heartbeat, even while Raft has no quorum to record it.
	Cands []string
	// Bye marks the last heartbeat of an agent that is shutting down, so
	// the others can tell a graceful leave from a crash.
	Bye bool
	// has says which optional parts (beatHost, beatMesh, ...) are set.
	has uint64
}

// fullBeatEvery is how often (in beats) a heartbeat carries every part.
const fullBeatEvery = 6

const beatParts = beatHost | beatMesh | beatVersionF | beatCands | beatID

// merge fills the parts hb lacks from prev, an earlier beat of the same node.
func (hb *heartbeat) merge(prev heartbeat) {
	if hb.has&beatID == 0 {
		hb.ID = prev.ID
	}
	if hb.has&beatHost == 0 {
		hb.Host = prev.Host
	}
	if hb.has&beatMesh == 0 {
		hb.MeshRx, hb.MeshTx = prev.MeshRx, prev.MeshTx
	}
	if hb.has&beatVersionF == 0 {
		hb.Version = prev.Version
	}
	if hb.has&beatCands == 0 {
		hb.Cands = prev.Cands
	}
	hb.has |= prev.has
}

// hostMoved reports whether host metrics changed enough since last were
// sent to be worth a few bytes on every member's link: a deadband, as
// telemetry agents do, so an idle machine's jitter stays home.
func hostMoved(last, now hostinfo.Snapshot) bool {
	frac := func(a, b, total uint64) float64 {
		if total == 0 {
			return 0
		}
		return math.Abs(float64(a)-float64(b)) / float64(total)
	}
	return math.Abs(now.CPUPercent-last.CPUPercent) >= 5 ||
		math.Abs(now.Load1-last.Load1) >= 0.25+0.1*last.Load1 ||
		frac(now.MemUsedBytes, last.MemUsedBytes, now.MemTotalBytes) >= 0.02 ||
		frac(now.DiskUsedBytes, last.DiskUsedBytes, now.DiskTotalBytes) >= 0.01 ||
		now.MemTotalBytes != last.MemTotalBytes || now.DiskTotalBytes != last.DiskTotalBytes
}

// heartbeatLoop samples the host and sends a heartbeat to every member.
func (m *Monitor) heartbeatLoop(ctx context.Context) {
	m.deps.Host.Sample() // CPU baseline
	var s sendState
	t := time.NewTicker(m.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.beat(&s)
	}
}

// sendState is what the heartbeat loop remembers between beats.
type sendState struct {
	seq  uint64    // beats sent: every fullBeatEvery-th is full
	sent heartbeat // Host and Cands as last sent
}

// beat records this node's own heartbeat (so it lists its own metrics) and
// sends it, with only the parts that changed unless a full one is due.
func (m *Monitor) beat(s *sendState) {
	s.seq++
	term, leader := m.deps.Store.Beat()
	hb := heartbeat{
		Name: m.cfg.Name, ID: m.cfg.NodeID, Seq: m.sendStamp(), Term: term, Leader: leader,
		NoLeader: !leader && !m.deps.Store.KnowsLeader(),
		Version:  m.cfg.Version, Host: m.deps.Host.Sample(), has: beatParts,
	}
	if m.deps.Candidates != nil {
		hb.Cands = m.deps.Candidates()
	}
	if m.deps.MeshBytes != nil {
		if rx, tx, err := m.deps.MeshBytes(); err == nil {
			hb.MeshRx, hb.MeshTx = rx, tx
		}
	}
	m.beats.put(m.now(), hb)
	wire := hb
	if s.seq%fullBeatEvery != 1 && !m.fullBeat.Swap(false) {
		wire.has = 0
		if hostMoved(s.sent.Host, hb.Host) {
			wire.has |= beatHost
		}
		if !slices.Equal(s.sent.Cands, hb.Cands) {
			wire.has |= beatCands
		}
	}
	if wire.has&beatHost != 0 {
		s.sent.Host = hb.Host
	}
	if wire.has&beatCands != 0 {
		s.sent.Cands = hb.Cands
	}
	m.sendToMembers(wire)
}

// sendToMembers seals hb once and sends it to every member but this node.
// It sends to the Monitor's own copies of memberlist's nodes: the *Node
// that Members() returns is memberlist's live record, whose address and
// protocol versions its alive handling rewrites without a lock we could
// take.
func (m *Monitor) sendToMembers(hb heartbeat) {
	keys := m.deps.DataKeys()
	if len(keys) == 0 {
		m.log.Warn("heartbeat not sent: no data key")
		return
	}
	stamp := hb.Seq
	hb.Seq = 0 // the frame carries it
	msg, err := sealWith(m.keys.derive(keys[:1])[0], m.cfg.MeshIP, stamp, encodeBeat(nil, &hb))
	if err != nil {
		m.log.Warn("heartbeat not sealed", "err", err)
		return
	}
	for _, n := range m.members.others(m.cfg.Name) {
		if err := m.deps.Send(&n, msg); err != nil {
			m.log.Debug("heartbeat not sent", "to", n.Name, "err", err)
		}
	}
}

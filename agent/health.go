package agent

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/hostinfo"
	"github.com/runos/runos-agent/raftstore"
)

// Health thresholds from the RunOS design: a heartbeat every 5 s; healthy
// while the last one is under 10 s old, offline past 30 s.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultHealthyWithin     = 10 * time.Second
	DefaultOfflineAfter      = 30 * time.Second
	// healthDwell is how long a new health state must hold before the
	// leader records a transition: a node flapping between alive and
	// suspect does not flood the event log.
	defaultHealthDwell = 2 * time.Second
)

// heartbeat is what every agent sends every member every interval, over
// memberlist's best-effort (UDP) messages inside WireGuard. beatwire.go has
// its wire form: the optional parts travel only when they changed (or in
// every fullBeatEvery-th beat); a receiver keeps the last value of each.
type heartbeat struct {
	Name    string
	ID      string // node ID, the Raft server ID
	Seq     uint64
	Term    uint64 // the sender's Raft term
	Leader  bool   // the sender leads that term
	Version string
	Host    hostinfo.Snapshot
	MeshRx  uint64
	MeshTx  uint64
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

// beats records the last heartbeat from every node, timed by this node's
// own clock (so clock skew between machines does not matter).
type beats struct {
	mu   sync.Mutex
	last map[string]beatRecord // guarded by mu; by node name
}

type beatRecord struct {
	at time.Time
	hb heartbeat
}

// put records hb (filling the parts it lacks from the node's previous
// beat) and returns the record as it now stands.
func (b *beats) put(now time.Time, hb heartbeat) beatRecord {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last == nil {
		b.last = map[string]beatRecord{}
	}
	prev, ok := b.last[hb.Name]
	if ok && hb.Seq != 0 && hb.Seq < prev.hb.Seq && now.Sub(prev.at) < time.Minute {
		return prev // reordered datagram
	}
	if ok {
		hb.merge(prev.hb)
	}
	rec := beatRecord{at: now, hb: hb}
	b.last[hb.Name] = rec
	return rec
}

func (b *beats) get(name string) (beatRecord, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.last[name]
	return r, ok
}

// gossipDelegate carries heartbeats; memberlist's own state exchange needs
// nothing from us.
type gossipDelegate struct{ a *Agent }

func (d *gossipDelegate) NodeMeta(int) []byte { return nil }
func (d *gossipDelegate) NotifyMsg(b []byte) {
	hb, err := decodeBeat(b)
	if err != nil {
		d.a.log.Debug("dropping gossip message", "err", err, "len", len(b))
		return
	}
	if hb.Bye {
		d.a.deadMembers.set(hb.Name, memberlist.StateLeft)
		return
	}
	prev, _ := d.a.beats.get(hb.Name)
	rec := d.a.beats.put(time.Now(), hb)
	d.a.store.ObserveBeat(rec.hb.ID, rec.hb.Term, rec.hb.Leader)
	if !slices.Equal(prev.hb.Cands, rec.hb.Cands) {
		d.a.wake() // the peer reconciler hands them to the Bind
	}
}
func (d *gossipDelegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *gossipDelegate) LocalState(bool) []byte          { return nil }
func (d *gossipDelegate) MergeRemoteState([]byte, bool)   {}

// heartbeatLoop samples the host and sends a heartbeat to every member.
func (a *Agent) heartbeatLoop(ctx context.Context) {
	sampler := hostinfo.NewSampler(a.dir)
	sampler.Sample() // CPU baseline
	var (
		seq  uint64
		sent heartbeat // Host and Cands as last sent
	)
	t := time.NewTicker(a.heartbeatInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		seq++
		term, leader := a.store.Beat()
		hb := heartbeat{
			Name: a.cfg.Name, ID: a.cfg.NodeID, Seq: seq, Term: term, Leader: leader,
			Version: Version, Host: sampler.Sample(), Cands: a.ownCandidates(), has: beatParts,
		}
		if stats, err := a.dev.Stats(); err == nil {
			for _, p := range stats {
				hb.MeshRx += p.RxBytes
				hb.MeshTx += p.TxBytes
			}
		}
		a.beats.put(time.Now(), hb)
		wire := hb
		if seq%fullBeatEvery != 1 && !a.fullBeat.Swap(false) {
			wire.has = 0
			if hostMoved(sent.Host, hb.Host) {
				wire.has |= beatHost
			}
			if !slices.Equal(sent.Cands, hb.Cands) {
				wire.has |= beatCands
			}
		}
		if wire.has&beatHost != 0 {
			sent.Host = hb.Host
		}
		if wire.has&beatCands != 0 {
			sent.Cands = hb.Cands
		}
		a.sendToMembers(wire)
	}
}

func (a *Agent) sendToMembers(hb heartbeat) {
	msg := encodeBeat(nil, &hb)
	for _, m := range a.ml.Members() {
		if m.Name == a.cfg.Name {
			continue
		}
		if err := a.ml.SendBestEffort(m, msg); err != nil {
			a.log.Debug("heartbeat not sent", "to", m.Name, "err", err)
		}
	}
}

func (a *Agent) heartbeatInterval() time.Duration {
	if a.tuning.HeartbeatInterval > 0 {
		return a.tuning.HeartbeatInterval
	}
	return DefaultHeartbeatInterval
}

type healthThresholds struct {
	healthyWithin, offlineAfter time.Duration
}

func (a *Agent) thresholds() healthThresholds {
	t := healthThresholds{DefaultHealthyWithin, DefaultOfflineAfter}
	if a.tuning.HealthyWithin > 0 {
		t.healthyWithin = a.tuning.HealthyWithin
	}
	if a.tuning.OfflineAfter > 0 {
		t.offlineAfter = a.tuning.OfflineAfter
	}
	return t
}

// classify is the one health rule every node applies to every other node.
// beatAge is the age of the last heartbeat (or of this agent's start when
// none has arrived yet). Pure, so the table test pins the rule down.
func classify(beatAge time.Duration, inGossip bool, state memberlist.NodeStateType, th healthThresholds) (health, reason string) {
	switch {
	case inGossip && state == memberlist.StateLeft:
		return api.Offline, "left the cluster gracefully"
	case inGossip && state == memberlist.StateDead:
		return api.Offline, "confirmed dead by gossip"
	case beatAge > th.offlineAfter:
		return api.Offline, fmt.Sprintf("no heartbeat for %s", beatAge.Round(time.Second))
	case beatAge >= th.healthyWithin:
		return api.Degraded, fmt.Sprintf("last heartbeat %s ago", beatAge.Round(time.Second))
	case !inGossip:
		return api.Degraded, "not seen by gossip yet"
	case state == memberlist.StateSuspect:
		return api.Degraded, "suspected by the failure detector"
	}
	return api.Healthy, fmt.Sprintf("heartbeat %s ago", beatAge.Round(100*time.Millisecond))
}

// healthOf classifies a node now, from this node's point of view. Before
// its first heartbeat arrives a node is as old as this agent's run or its
// membership, whichever is younger: a node that just joined is not late.
func (a *Agent) healthOf(n *raftstore.Node) (health, reason string, rec beatRecord, ok bool) {
	name := n.Name
	if name == a.cfg.Name {
		rec, ok = a.beats.get(name)
		return api.Healthy, "this node", rec, ok
	}
	state, inGossip := a.memberState(name)
	rec, ok = a.beats.get(name)
	now := time.Now()
	since := a.startedAt
	if n.JoinedAt.After(since) && n.JoinedAt.Before(now) { // JoinedAt is the admitting leader's clock
		since = n.JoinedAt
	}
	age := now.Sub(since)
	if ok {
		age = now.Sub(rec.at)
	}
	health, reason = classify(age, inGossip, state, a.thresholds())
	return health, reason, rec, ok
}

// memberState is gossip's view of a node by name, including dead and left
// ones (Members() hides those); false when gossip has never seen it.
func (a *Agent) memberState(name string) (memberlist.NodeStateType, bool) {
	if name == a.cfg.Name {
		return memberlist.StateAlive, true
	}
	for _, m := range a.ml.Members() {
		if m.Name == name {
			return m.State, true
		}
	}
	if s, ok := a.deadMembers.get(name); ok {
		return s, true
	}
	return memberlist.StateDead, false
}

// memberStates remembers the last state memberlist reported for nodes it
// no longer lists (dead or left).
type memberStates struct {
	mu sync.Mutex
	m  map[string]memberlist.NodeStateType // guarded by mu
}

func (s *memberStates) set(name string, st memberlist.NodeStateType) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]memberlist.NodeStateType{}
	}
	s.m[name] = st
}

func (s *memberStates) del(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, name)
}

func (s *memberStates) get(name string) (memberlist.NodeStateType, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.m[name]
	return st, ok
}

// healthEventLoop runs on every node but records only while leading: one
// event per transition for the whole cluster, taken from the leader's view.
// A new leader starts from the last recorded state of each node, so a
// leadership change neither repeats nor loses a transition.
func (a *Agent) healthEventLoop(ctx context.Context) error {
	type pending struct {
		health, reason string
		since          time.Time
	}
	candidates := map[string]pending{}
	dwell := defaultHealthDwell
	if a.tuning.HealthDwell > 0 {
		dwell = a.tuning.HealthDwell
	}
	t := time.NewTicker(max(a.heartbeatInterval()/5, 100*time.Millisecond))
	defer t.Stop()
	var (
		st       *raftstore.State
		recorded map[string]string
		changed  <-chan struct{}
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		// The state (and the event log it holds) is copied only when it
		// changed: the idle leader's loop is cheap.
		select {
		case <-changed:
			st = nil
		default:
		}
		if st == nil {
			changed = a.store.Changed()
			st, _ = a.store.State()
			recorded = lastRecordedHealth(st)
		}
		now := time.Now()
		for _, n := range st.SortedNodes() {
			if n.ID == a.cfg.NodeID {
				continue
			}
			health, reason, _, _ := a.healthOf(n)
			was, ok := recorded[n.Name]
			if !ok {
				was = api.Healthy // a node starts healthy when it joins
			}
			if health == was {
				delete(candidates, n.Name)
				continue
			}
			c, ok := candidates[n.Name]
			if !ok || c.health != health {
				candidates[n.Name] = pending{health, reason, now}
				continue
			}
			if now.Sub(c.since) < dwell {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := a.store.RecordEvent(cctx, raftstore.Event{Kind: raftstore.EventHealthChanged, Node: n.Name, From: was, To: health, Detail: reason})
			cancel()
			if err != nil {
				a.log.Debug("health event not recorded", "node", n.Name, "err", err)
				continue
			}
			a.log.Info("node health changed", "node", n.Name, "from", was, "to", health, "reason", reason)
			delete(candidates, n.Name)
		}
	}
}

// lastRecordedHealth is each node's health as of its last health event.
func lastRecordedHealth(st *raftstore.State) map[string]string {
	out := map[string]string{}
	for _, e := range st.Events {
		switch e.Kind {
		case raftstore.EventHealthChanged:
			out[e.Node] = e.To
		case raftstore.EventNodeJoined, raftstore.EventNodeRemoved:
			delete(out, e.Node)
		}
	}
	return out
}

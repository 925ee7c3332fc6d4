package agent

import (
	"context"
	"encoding/json"
	"fmt"
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
// memberlist's best-effort (UDP) messages inside WireGuard.
type heartbeat struct {
	Name    string            `json:"n"`
	Seq     uint64            `json:"q"`
	Version string            `json:"v"`
	Host    hostinfo.Snapshot `json:"h"`
	MeshRx  uint64            `json:"rx"`
	MeshTx  uint64            `json:"tx"`
	// Cands are the sender's current underlay candidates (advertised plus
	// STUN-reflexive): gossip spreads a changed address within one
	// heartbeat, even while Raft has no quorum to record it.
	Cands []string `json:"c,omitempty"`
	// Bye marks the last heartbeat of an agent that is shutting down, so
	// the others can tell a graceful leave from a crash.
	Bye bool `json:"bye,omitempty"`
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

func (b *beats) put(now time.Time, hb heartbeat) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last == nil {
		b.last = map[string]beatRecord{}
	}
	if prev, ok := b.last[hb.Name]; ok && hb.Seq != 0 && hb.Seq < prev.hb.Seq && now.Sub(prev.at) < time.Minute {
		return // reordered datagram
	}
	b.last[hb.Name] = beatRecord{at: now, hb: hb}
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
	var hb heartbeat
	if len(b) > 4096 || json.Unmarshal(b, &hb) != nil || hb.Name == "" {
		return
	}
	if hb.Bye {
		d.a.deadMembers.set(hb.Name, memberlist.StateLeft)
		return
	}
	prev, _ := d.a.beats.get(hb.Name)
	d.a.beats.put(time.Now(), hb)
	if !slices.Equal(prev.hb.Cands, hb.Cands) {
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
	var seq uint64
	t := time.NewTicker(a.heartbeatInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		seq++
		hb := heartbeat{Name: a.cfg.Name, Seq: seq, Version: Version, Host: sampler.Sample(), Cands: a.ownCandidates()}
		if stats, err := a.dev.Stats(); err == nil {
			for _, p := range stats {
				hb.MeshRx += p.RxBytes
				hb.MeshTx += p.TxBytes
			}
		}
		a.beats.put(time.Now(), hb)
		a.sendToMembers(hb)
	}
}

func (a *Agent) sendToMembers(hb heartbeat) {
	msg, _ := json.Marshal(hb)
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

// healthOf classifies a node now, from this node's point of view.
func (a *Agent) healthOf(name string) (health, reason string, rec beatRecord, ok bool) {
	if name == a.cfg.Name {
		rec, ok = a.beats.get(name)
		return api.Healthy, "this node", rec, ok
	}
	state, inGossip := a.memberState(name)
	rec, ok = a.beats.get(name)
	age := time.Since(a.startedAt)
	if ok {
		age = time.Since(rec.at)
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
func (a *Agent) healthEventLoop(ctx context.Context) {
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !a.store.IsLeader() {
			clear(candidates)
			continue
		}
		st, _ := a.store.State()
		recorded := lastRecordedHealth(st)
		now := time.Now()
		for _, n := range st.SortedNodes() {
			if n.ID == a.cfg.NodeID {
				continue
			}
			health, reason, _, _ := a.healthOf(n.Name)
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

package health

import (
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/hostinfo"
	"github.com/runos/runos-agent/raftstore"
)

type thresholds struct {
	healthyWithin, offlineAfter time.Duration
}

// classify is the one health rule every node applies to every other node.
// beatAge is the age of the last heartbeat (or of this agent's start when
// none has arrived yet). Pure, so the table test pins the rule down.
func classify(beatAge time.Duration, inGossip bool, state memberlist.NodeStateType, th thresholds) (health, reason string) {
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

// Status is a node's health as this node sees it now, with what its last
// heartbeat said.
type Status struct {
	Health string // api.Healthy, api.Degraded or api.Offline
	Reason string
	// Seen says a heartbeat from the node has arrived; the fields below
	// are zero until then. Each part is the latest the node sent.
	Seen    bool
	Age     time.Duration // since the last heartbeat arrived, by Config.Now
	Host    hostinfo.Snapshot
	MeshRx  uint64
	MeshTx  uint64
	Version string
	Cands   []string
}

// Of classifies a node now, from this node's point of view, and adds what
// its last heartbeat said.
func (m *Monitor) Of(n *raftstore.Node) Status {
	var s Status
	var rec beatRecord
	var now time.Time
	s.Health, s.Reason, rec, s.Seen, now = m.healthOf(n)
	if s.Seen {
		s.Age = now.Sub(rec.at)
		s.Host, s.MeshRx, s.MeshTx = rec.hb.Host, rec.hb.MeshRx, rec.hb.MeshTx
		s.Version, s.Cands = rec.hb.Version, slices.Clone(rec.hb.Cands)
	}
	return s
}

// healthOf classifies a node at now. Before its first heartbeat arrives a
// node is as old as this agent's run or its membership, whichever is
// younger: a node that just joined is not late. This node is always
// healthy.
func (m *Monitor) healthOf(n *raftstore.Node) (health, reason string, rec beatRecord, seen bool, now time.Time) {
	state, inGossip := m.MemberState(n.Name)
	rec, seen = m.beats.get(n.Name)
	now = m.now() // after the read: a beat arriving meanwhile is not from the future
	if n.Name == m.cfg.Name {
		return api.Healthy, "this node", rec, seen, now
	}
	since := m.since
	if n.JoinedAt.After(since) && n.JoinedAt.Before(now) { // JoinedAt is the admitting leader's clock
		since = n.JoinedAt
	}
	age := now.Sub(since)
	if seen {
		age = now.Sub(rec.at)
	}
	health, reason = classify(age, inGossip, state, m.th)
	return health, reason, rec, seen, now
}

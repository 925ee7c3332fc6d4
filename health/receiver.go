package health

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

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

// members is gossip's view of the cluster as memberlist's event callbacks
// report it. memberlist calls them with its node lock held, so the copies
// taken there are consistent; reading the *Node values Members() returns
// would race with memberlist rewriting them.
type members struct {
	mu sync.Mutex
	// live are copies of the nodes memberlist lists (alive or suspect),
	// by name. guarded by mu.
	live map[string]memberlist.Node
	// gone is the last state of nodes memberlist no longer lists (dead or
	// left), by name. guarded by mu.
	gone map[string]memberlist.NodeStateType
}

func (s *members) joined(n *memberlist.Node) {
	c := *n
	c.Addr = slices.Clone(n.Addr)
	c.Meta = nil // unused here; no need to share memberlist's slice
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live == nil {
		s.live = map[string]memberlist.Node{}
	}
	s.live[n.Name] = c
	delete(s.gone, n.Name)
}

func (s *members) updated(n *memberlist.Node) {
	c := *n
	c.Addr = slices.Clone(n.Addr)
	c.Meta = nil
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.live[n.Name]; ok {
		s.live[n.Name] = c
	}
}

// left records a node memberlist no longer lists: dead, unless its
// goodbye heartbeat already said it left.
func (s *members) left(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.live, name)
	if s.gone[name] != memberlist.StateLeft {
		s.setGoneLocked(name, memberlist.StateDead)
	}
}

// sayBye records a goodbye heartbeat: memberlist may still list the node
// until its leave message arrives.
func (s *members) sayBye(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setGoneLocked(name, memberlist.StateLeft)
}

func (s *members) setGoneLocked(name string, st memberlist.NodeStateType) {
	if s.gone == nil {
		s.gone = map[string]memberlist.NodeStateType{}
	}
	s.gone[name] = st
}

// state is gossip's view of a node by name, including dead and left ones;
// false when gossip has never seen it.
func (s *members) state(name string) (memberlist.NodeStateType, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.live[name]; ok {
		return n.State, true
	}
	if st, ok := s.gone[name]; ok {
		return st, true
	}
	return memberlist.StateDead, false
}

// others returns copies of the listed members except self.
func (s *members) others(self string) []memberlist.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]memberlist.Node, 0, len(s.live))
	for _, name := range slices.Sorted(maps.Keys(s.live)) {
		if name != self {
			out = append(out, s.live[name])
		}
	}
	return out
}

// NotifyMsg (memberlist.Delegate) receives memberlist user messages,
// which is how heartbeats travelled before they were sealed and bound to
// their sender: whatever comes this way is dropped (and counted), so a
// forged one reaches nothing.
func (m *Monitor) NotifyMsg(b []byte) { m.drop(DropUnsealed, "", netip.AddrPort{}) }

// Memberlist's own state exchange carries nothing of ours.

func (m *Monitor) NodeMeta(int) []byte             { return nil }
func (m *Monitor) GetBroadcasts(int, int) [][]byte { return nil }
func (m *Monitor) LocalState(bool) []byte          { return nil }
func (m *Monitor) MergeRemoteState([]byte, bool)   {}

// NotifyJoin (memberlist.EventDelegate) starts sending to n, with every
// part in the next beat: n knows nothing of this node yet.
func (m *Monitor) NotifyJoin(n *memberlist.Node) {
	m.members.joined(n)
	m.fullBeat.Store(true)
}

// NotifyLeave (memberlist.EventDelegate) stops sending to n. memberlist's
// callbacks pass a Node whose State field is not kept up to date, so a
// leave is told from a death by the goodbye heartbeat.
func (m *Monitor) NotifyLeave(n *memberlist.Node) { m.members.left(n.Name) }

// NotifyUpdate (memberlist.EventDelegate) refreshes the copy of n.
func (m *Monitor) NotifyUpdate(n *memberlist.Node) { m.members.updated(n) }

// MemberState is gossip's view of a node by name, including dead and left
// ones (memberlist's Members hides those); false when gossip has never
// seen it. This node is always alive.
func (m *Monitor) MemberState(name string) (memberlist.NodeStateType, bool) {
	if name == m.cfg.Name {
		return memberlist.StateAlive, true
	}
	return m.members.state(name)
}

// Candidates are the underlay candidates the node's latest heartbeat
// announced (nil if none).
func (m *Monitor) Candidates(name string) []string {
	rec, ok := m.beats.get(name)
	if !ok {
		return nil
	}
	return slices.Clone(rec.hb.Cands)
}

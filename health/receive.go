package health

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// A beat is believed only when it is bound to its sender: it opens under
// a member's key, it came from the mesh IP the cluster state records for
// the node it names (a mesh source address alone is no identity: pods and
// local users share it, but they hold no key; a member holds the key but
// cannot send from another member's IP), and it is newer than the last
// one accepted from that node. Only then does Raft's part reach the store,
// which checks it against Raft once more (raftstore.Store.ObserveBeat).

// Why beats are dropped, as counted by BeatDrops.
const (
	DropUnsealed  = "unsealed"  // a beat as a memberlist message: the old, unauthenticated way
	DropOpen      = "open"      // does not open under any data key held
	DropMalformed = "malformed" // opens, but is not a beat
	DropIdentity  = "identity"  // names this node, or a name and ID that do not belong together
	DropSource    = "source"    // not from the mesh IP of the node it names
	DropReplay    = "replay"    // not newer than the last beat accepted from that node
	DropStale     = "stale"     // first beat heard from a node, sent too long ago
)

// replayWindow is how long a node's last accepted stamp is kept after it
// falls silent, and how old a first beat from a node may be. Past it a
// sender whose clock stepped back across a restart is heard again; a
// capture older than it is never accepted again. Stamps are wall-clock
// milliseconds, so this is also the clock skew between members a first
// beat tolerates (members' clocks must already agree for their
// certificates' validity).
const replayWindow = 10 * time.Minute

// sendStamp is a beat's seq: the send time in Unix milliseconds, and
// always above the previous one. It is the replay counter, and since it
// comes from the wall clock, a restarted sender continues above its last
// stamp without persisting anything.
func (m *Monitor) sendStamp() uint64 {
	now := max(m.now().UnixMilli(), 0)
	for {
		prev := m.stamp.Load()
		next := max(prev+1, uint64(now))
		if m.stamp.CompareAndSwap(prev, next) {
			return next
		}
	}
}

// HandleFrame receives a sealed heartbeat datagram that came from from
// (the gossip transport hands it every datagram starting with
// FramePrefix). It is safe for concurrent use.
func (m *Monitor) HandleFrame(frame []byte, from netip.AddrPort) {
	src := from.Addr().Unmap()
	stamp, body, err := openFrame(m.keys.derive(m.deps.DataKeys()), src, frame)
	if err != nil {
		m.drop(DropOpen, "", from)
		return
	}
	hb, err := decodeBeat(body)
	if err != nil {
		m.drop(DropMalformed, "", from)
		return
	}
	hb.Seq = stamp
	id, known, reason := m.bind(&hb, src)
	if reason != "" {
		m.drop(reason, hb.Name, from)
		return
	}
	now := m.now()
	if reason := m.replay.admit(hb.Name, hb.Seq, now); reason != "" {
		m.drop(reason, hb.Name, from)
		return
	}
	if hb.Bye {
		m.members.sayBye(hb.Name)
		if known {
			m.deps.Store.ObserveBye(id)
		}
		return
	}
	prev, _ := m.beats.get(hb.Name)
	rec := m.beats.put(now, hb)
	if known {
		// The ID from the state, not the beat's: a node the state does
		// not know yet (a joiner this replica has not caught up with)
		// counts for gossip liveness, never for Raft.
		m.deps.Store.ObserveBeat(id, rec.hb.Term, rec.hb.Leader, rec.hb.NoLeader)
	}
	if !slices.Equal(prev.hb.Cands, rec.hb.Cands) && m.deps.OnCandidates != nil {
		m.deps.OnCandidates() // the peer reconciler hands them to the Bind
	}
}

// bind checks that hb may have come from src: the node it names is the
// node the state records at src. known is false for a name the state
// does not hold (from an address no known node has); id is then "".
func (m *Monitor) bind(hb *heartbeat, src netip.Addr) (id string, known bool, reason string) {
	if hb.Name == m.cfg.Name || hb.ID == m.cfg.NodeID {
		return "", false, DropIdentity // nobody speaks for this node
	}
	ix := m.idents.current(m.deps.Store)
	if n, ok := ix.byName[hb.Name]; ok {
		switch {
		case hb.ID != "" && hb.ID != n.id:
			return "", false, DropIdentity
		case src != n.ip:
			return "", false, DropSource
		}
		return n.id, true, ""
	}
	if _, ok := ix.nameOfID[hb.ID]; ok && hb.ID != "" {
		return "", false, DropIdentity
	}
	if _, ok := ix.nameOfIP[src]; ok {
		return "", false, DropSource // a known node's address, another name
	}
	return "", false, ""
}

func (m *Monitor) drop(reason, name string, from netip.AddrPort) {
	m.dropMu.Lock()
	if m.drops == nil {
		m.drops = map[string]uint64{}
	}
	m.drops[reason]++
	m.dropMu.Unlock()
	m.log.Debug("dropping heartbeat", "reason", reason, "name", name, "from", from)
}

// BeatDrops counts the heartbeats dropped since start, by reason (the
// Drop constants).
func (m *Monitor) BeatDrops() map[string]uint64 {
	m.dropMu.Lock()
	defer m.dropMu.Unlock()
	return maps.Clone(m.drops)
}

// identIndex is who is where according to the cluster state, rebuilt when
// the state changes.
type identIndex struct {
	mu  sync.Mutex
	cur *idents // guarded by mu
}

type idents struct {
	changed  <-chan struct{} // closed when the state this was built from changes
	byName   map[string]ident
	nameOfID map[string]string
	nameOfIP map[netip.Addr]string
}

type ident struct {
	id string
	ip netip.Addr
}

func (x *identIndex) current(s Store) *idents {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.cur != nil {
		select {
		case <-x.cur.changed:
		default:
			return x.cur
		}
	}
	changed := s.Changed() // before State: a change in between rebuilds again
	st, _ := s.State()
	ix := &idents{changed: changed, byName: map[string]ident{}, nameOfID: map[string]string{}, nameOfIP: map[netip.Addr]string{}}
	for _, n := range st.Nodes {
		ip := n.MeshIP.Unmap()
		ix.byName[n.Name] = ident{id: n.ID, ip: ip}
		ix.nameOfID[n.ID] = n.Name
		if ip.IsValid() {
			ix.nameOfIP[ip] = n.Name
		}
	}
	x.cur = ix
	return ix
}

// replayGuard keeps the last stamp accepted from each node.
type replayGuard struct {
	mu   sync.Mutex
	last map[string]stampRecord // by node name; guarded by mu
}

type stampRecord struct {
	stamp uint64
	at    time.Time // when it was accepted, on this node's clock
}

// admit accepts stamp from name if it is newer than the last one accepted
// within replayWindow or, with none, was sent within replayWindow.
func (g *replayGuard) admit(name string, stamp uint64, now time.Time) (reason string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.last == nil {
		g.last = map[string]stampRecord{}
	}
	r, ok := g.last[name]
	switch {
	case ok && now.Sub(r.at) < replayWindow:
		if stamp <= r.stamp {
			return DropReplay
		}
	case int64(stamp) < now.Add(-replayWindow).UnixMilli() || stamp > 1<<62:
		return DropStale
	}
	if len(g.last) >= 4096 { // only members hold the key; still, bound it
		for n, r := range g.last {
			if now.Sub(r.at) >= replayWindow {
				delete(g.last, n)
			}
		}
	}
	g.last[name] = stampRecord{stamp: stamp, at: now}
	return ""
}

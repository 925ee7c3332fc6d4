package health

import (
	"context"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
)

// RunEvents records health transitions as Raft events: one event per
// transition for the whole cluster, taken from the leader's view. It is a
// leader task: it runs while this node leads and returns when ctx ends. A
// new leader starts from the last recorded state of each node, so a
// leadership change neither repeats nor loses a transition.
func (m *Monitor) RunEvents(ctx context.Context) error {
	type pending struct {
		health, reason string
		since          time.Time
	}
	candidates := map[string]pending{}
	t := time.NewTicker(max(m.cfg.HeartbeatInterval/5, 100*time.Millisecond))
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
			changed = m.deps.Store.Changed()
			st, _ = m.deps.Store.State()
			recorded = LastRecorded(st)
		}
		now := m.now()
		for _, n := range st.SortedNodes() {
			if n.ID == m.cfg.NodeID {
				continue
			}
			health, reason, _, _, _ := m.healthOf(n)
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
			if now.Sub(c.since) < m.cfg.Dwell {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := m.deps.Store.RecordEvent(cctx, raftstore.Event{Kind: raftstore.EventHealthChanged, Node: n.Name, From: was, To: health, Detail: reason})
			cancel()
			if err != nil {
				m.log.Debug("health event not recorded", "node", n.Name, "err", err)
				continue
			}
			m.log.Info("node health changed", "node", n.Name, "from", was, "to", health, "reason", reason)
			delete(candidates, n.Name)
		}
	}
}

// LastRecorded is each node's health as of its last health event in st's
// event log (nodes with none since they joined are absent).
func LastRecorded(st *raftstore.State) map[string]string {
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

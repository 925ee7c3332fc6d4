package raftstore

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sync"

	"github.com/hashicorp/raft"
)

// FSM applies committed commands to the State. It does no I/O besides its
// own state: effects on the world (WireGuard peers, certificates refused) are
// the job of reconcilers that watch Changed.
type FSM struct {
	mu    sync.RWMutex
	state *State // guarded by mu
	index uint64 // guarded by mu; last applied log index
	// changed is closed (and replaced) whenever state changes; guarded by mu.
	changed chan struct{}
}

var _ raft.FSM = (*FSM)(nil)

// NewFSM returns an FSM over an empty state.
func NewFSM() *FSM {
	return &FSM{state: NewState(), changed: make(chan struct{})}
}

// Apply implements raft.FSM. It returns a *Result.
func (f *FSM) Apply(l *raft.Log) any {
	var cmd Command
	if err := json.Unmarshal(l.Data, &cmd); err != nil {
		// Never reached through Store.Apply, which encodes; a corrupt entry
		// must not stop the log, so it is answered and skipped.
		f.advance(l.Index)
		return &Result{Index: l.Index, Err: ErrMalformedCmd.Error()}
	}
	f.mu.Lock()
	res := f.state.apply(l.Index, &cmd)
	f.index = l.Index
	f.notifyLocked()
	f.mu.Unlock()
	return res
}

func (f *FSM) advance(index uint64) {
	f.mu.Lock()
	f.index = index
	f.mu.Unlock()
}

func (f *FSM) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// State returns a copy of the state (View) and the log index it reflects.
func (f *FSM) State() (*State, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.View(), f.index
}

// Node returns a copy of one node, without copying the whole state (for
// callers that run often, such as liveness checks).
func (f *FSM) Node(id string) (*Node, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, ok := f.state.Nodes[id]
	if !ok {
		return nil, false
	}
	return n.clone(), true
}

// meshIPs returns the cluster ID and each node's mesh IP: what membership
// reconciliation needs every few seconds, without copying the state.
func (f *FSM) meshIPs() (string, map[string]netip.Addr) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]netip.Addr, len(f.state.Nodes))
	for id, n := range f.state.Nodes {
		out[id] = n.MeshIP
	}
	return f.state.ClusterID, out
}

// Changed returns a channel that is closed at the next state change.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

type snapshotData struct {
	Index uint64 `json:"index"`
	State *State `json:"state"`
}

// Snapshot implements raft.FSM.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &fsmSnapshot{data: snapshotData{Index: f.index, State: f.state.Clone()}}, nil
}

// Restore implements raft.FSM.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var d snapshotData
	if err := json.NewDecoder(rc).Decode(&d); err != nil {
		return fmt.Errorf("raftstore: decode snapshot: %w", err)
	}
	if d.State == nil {
		d.State = NewState()
	}
	if d.State.Nodes == nil {
		d.State.Nodes = map[string]*Node{}
	}
	if d.State.Tokens == nil {
		d.State.Tokens = map[string]*Token{}
	}
	if d.State.Events == nil {
		d.State.Events = []Event{}
	}
	if d.State.Results == nil {
		d.State.Results = map[string]*Result{}
	}
	f.mu.Lock()
	f.state = d.State
	f.index = d.Index
	f.notifyLocked()
	f.mu.Unlock()
	return nil
}

type fsmSnapshot struct{ data snapshotData }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.data); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

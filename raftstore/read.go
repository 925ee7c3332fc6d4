package raftstore

import (
	"context"
	"fmt"
	"time"
)

// OpReadIndex asks the leader for a read index (ConsistentState). It is
// never written to the log: ApplyLocal answers it on the leader and the
// node API forwards it like any command.
const OpReadIndex = "read_index"

// ConsistentState returns the state as of a moment after the call began:
// it reflects every write acknowledged before ConsistentState was called,
// on any node (a linearizable read, Raft's ReadIndex). The leader proves it
// still leads by committing a barrier through a quorum, which the quiet
// transport never answers for followers, and reports the state index the
// barrier covers; this node then waits until it has applied that far.
// Stale reads (State) cost nothing; this costs a quorum round trip.
func (s *Store) ConsistentState(ctx context.Context) (*State, uint64, error) {
	res, err := s.Apply(ctx, &Command{Op: OpReadIndex})
	if err == nil {
		err = res.Error()
	}
	if err != nil {
		return nil, 0, fmt.Errorf("raftstore: consistent read: %w", err)
	}
	for {
		changed := s.fsm.Changed()
		st, idx := s.fsm.State()
		if idx >= res.Index {
			return st, idx, nil
		}
		select {
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("raftstore: consistent read: waiting to apply index %d (at %d): %w", res.Index, idx, ctx.Err())
		case <-changed:
		}
	}
}

// readIndex answers OpReadIndex on the leader.
func (s *Store) readIndex(timeout time.Duration) (*Result, error) {
	if err := s.raft.Barrier(timeout).Error(); err != nil {
		return nil, err
	}
	_, idx := s.fsm.State()
	return &Result{Index: idx}, nil
}

// CatchUp returns once this replica has applied every write committed
// before the call. A node that has just become leader runs it before its
// leader tasks: Raft reports leadership before the FSM has applied the
// whole log.
func (s *Store) CatchUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, _, err := s.ConsistentState(ctx)
	return err
}

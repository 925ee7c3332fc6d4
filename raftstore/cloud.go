package raftstore

// The cloud link's part of the state (issue 5).

// CloudState is the cluster's cloud registration and sync cursor.
type CloudState struct{}

func (c CloudState) clone() CloudState { return c }

// CloudCmd is the payload of cloud_* ops.
type CloudCmd struct{}

func (s *State) applyCloud(cmd *Command, res *Result) error { return ErrUnknownOp }

// recordChange is called after every command that changed the state, with
// its Raft index; the cloud outbox is built from it.
func (s *State) recordChange(index uint64, cmd *Command, res *Result) {}

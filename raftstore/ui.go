package raftstore

// The web UI's part of the state (issue 7).

// UIState holds the UI's admin credential.
type UIState struct{}

func (u UIState) clone() UIState { return u }

// UICmd is the payload of ui_* ops.
type UICmd struct{}

func (s *State) applyUI(cmd *Command, res *Result) error { return ErrUnknownOp }

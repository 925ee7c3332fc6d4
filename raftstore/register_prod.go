//go:build !jepsen

package raftstore

// applyTest refuses the test register outside `jepsen` builds.
func (s *State) applyTest(*Command, *Result) error { return ErrUnknownOp }

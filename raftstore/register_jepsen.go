//go:build jepsen

package raftstore

import (
	"encoding/json"
	"fmt"
)

// applyTest applies the test register (register.go).
func (s *State) applyTest(cmd *Command, res *Result) error {
	c := cmd.Register
	if cmd.Op != OpTestRegister || c == nil || c.Key == "" {
		return ErrMalformedCmd
	}
	if s.Registers == nil {
		s.Registers = map[string]*Register{}
	}
	r := s.Registers[c.Key]
	if r == nil {
		r = &Register{}
		s.Registers[c.Key] = r
	}
	out := RegisterResult{OK: c.Expect == nil || *c.Expect == r.Value}
	if out.OK {
		r.Value = c.Value
		r.Writes = append(r.Writes, RegisterWrite{ID: cmd.ID, Value: c.Value, Index: res.Index})
	}
	out.Value = r.Value
	b, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("register result: %w", err)
	}
	res.Data = b
	return nil
}

// FullState is this replica's whole state as JSON, deduplication
// bookkeeping included, and the index it reflects: what the campaign
// compares across nodes once they converged.
func (s *Store) FullState() ([]byte, uint64, error) {
	s.fsm.mu.RLock()
	defer s.fsm.mu.RUnlock()
	b, err := json.Marshal(s.fsm.state)
	return b, s.fsm.index, err
}

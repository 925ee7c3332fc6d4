package raftstore

import "slices"

// The test register is a tiny key/value surface over the real apply path,
// for the fault-injection campaign (agent/jepsen): its histories are what a
// linearizability checker can judge, which the real commands' are not.
// Only builds with the `jepsen` tag apply it (register_jepsen.go); every
// other build answers ErrUnknownOp (register_prod.go), so a production
// binary cannot be driven into keeping test data in the cluster state.

// OpTestRegister writes or compares-and-sets one register.
const OpTestRegister = "test_register"

// RegisterCmd writes Value to register Key; with Expect set, only when
// the register holds *Expect (compare-and-set).
type RegisterCmd struct {
	Key    string `json:"key"`
	Value  int64  `json:"value"`
	Expect *int64 `json:"expect,omitempty"`
}

// Register is one test register and every write applied to it.
type Register struct {
	Value int64 `json:"value"`
	// Writes are the applied writes in log order: the campaign checks
	// that no command ID is in it twice (applied at most once) and that
	// every acknowledged write is in it (none lost).
	Writes []RegisterWrite `json:"writes"`
}

// RegisterWrite is one applied write.
type RegisterWrite struct {
	ID    string `json:"id"` // the command ID
	Value int64  `json:"value"`
	Index uint64 `json:"index"`
}

// RegisterResult is the Data of an OpTestRegister result.
type RegisterResult struct {
	OK    bool  `json:"ok"`    // false: a compare-and-set found another value
	Value int64 `json:"value"` // the register's value after the command
}

func cloneRegisters(in map[string]*Register) map[string]*Register {
	if in == nil {
		return nil
	}
	out := make(map[string]*Register, len(in))
	for k, r := range in {
		out[k] = &Register{Value: r.Value, Writes: slices.Clone(r.Writes)}
	}
	return out
}

//go:build jepsen

package jepsen

import (
	"testing"

	"github.com/anishathalye/porcupine"

	"github.com/runos/runos-agent/raftstore"
)

// The checkers fail the histories they must: a stale value in a
// consistent read, a lost acknowledged write, a write applied twice, a
// stale read off the log; and accept an indeterminate write that took
// effect late.
func TestCheckers(t *testing.T) {
	w := func(c int, v int64, call, ret int64, st Status) Op {
		return Op{Client: c, Kind: KindWrite, Key: "k", Value: v, Call: call, Return: ret, Status: st}
	}
	r := func(c int, kind Kind, v int64, idx uint64, call, ret int64) Op {
		return Op{Client: c, Kind: kind, Key: "k", Value: v, Index: idx, Call: call, Return: ret, Status: OK}
	}
	// write 1 acked, then a consistent read sees 0: not linearizable.
	bad := []Op{w(0, 1, 0, 10, OK), r(1, KindRead, 0, 1, 20, 30)}
	if res, _ := Linearizable(bad, "k", KindRead); res != porcupine.Illegal {
		t.Errorf("stale consistent read: %s, want Illegal", res)
	}
	// The same as a stale read is allowed (it says which index it reflects).
	stale := []Op{w(0, 1, 0, 10, OK), r(1, KindStale, 0, 1, 20, 30)}
	if res, _ := Linearizable(stale, "k", KindRead); res != porcupine.Ok {
		t.Errorf("stale read left out: %s, want Ok", res)
	}
	if res, _ := Linearizable(stale, "k", KindRead, KindStale); res != porcupine.Illegal {
		t.Errorf("stale read put in: %s, want Illegal", res)
	}
	// An indeterminate write may take effect after its client gave up.
	late := []Op{w(0, 1, 0, 10, Info), r(1, KindRead, 0, 3, 20, 30), r(1, KindRead, 1, 4, 40, 50)}
	if res, _ := Linearizable(late, "k", KindRead); res != porcupine.Ok {
		t.Errorf("late indeterminate write: %s, want Ok", res)
	}

	final := &Final{Registers: map[string]*raftstore.Register{"k": {Value: 2, Writes: []raftstore.RegisterWrite{
		{ID: "a", Value: 2, Index: 5}, {ID: "a", Value: 2, Index: 6},
	}}}}
	ops := []Op{w(0, 1, 0, 10, OK), w(0, 2, 20, 30, OK), r(1, KindStale, 1, 5, 40, 50)}
	lost, doubled, phantom := CheckWrites(ops, final)
	if len(lost) != 1 || len(doubled) != 2 || len(phantom) != 0 {
		t.Errorf("lost %v doubled %v phantom %v: want 1 lost, 2 doubled (value and ID)", lost, doubled, phantom)
	}
	if st := CheckStale(ops, final); len(st.Wrong) != 1 {
		t.Errorf("a stale read of 1 at index 5, where the log holds 2: %+v", st)
	}
}

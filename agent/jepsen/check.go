//go:build jepsen

package jepsen

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/anishathalye/porcupine"

	"github.com/runos/runos-agent/raftstore"
)

// never is the return time of an indeterminate operation: it may take
// effect at any point after its call, as in Jepsen, so porcupine may
// place it anywhere after the call. (A write that never took effect fits
// too: placed after every other operation, it changes nothing observed.)
const never = math.MaxInt64 / 2

type regInput struct {
	Kind   Kind
	Value  int64
	Expect int64
}

type regOutput struct {
	Value   int64
	CASOK   bool
	Unknown bool // indeterminate: the output says nothing
}

// registerModel is a single register (porcupine partitions by key first):
// writes set it, a compare-and-set sets it when it holds the expected
// value and reports whether it did, reads return it.
func registerModel() porcupine.Model {
	return porcupine.Model{
		Init: func() any { return int64(0) },
		Step: func(state, input, output any) (bool, any) {
			s, in, out := state.(int64), input.(regInput), output.(regOutput)
			switch in.Kind {
			case KindWrite:
				return true, in.Value
			case KindCAS:
				match := s == in.Expect
				switch {
				case out.Unknown && match:
					return true, in.Value
				case out.Unknown:
					return true, s
				case out.CASOK != match:
					return false, s
				case match:
					return true, in.Value
				}
				return true, s
			default:
				return out.Value == s, s
			}
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(regInput), output.(regOutput)
			switch in.Kind {
			case KindWrite:
				if out.Unknown {
					return fmt.Sprintf("write(%d) ?", in.Value)
				}
				return fmt.Sprintf("write(%d)", in.Value)
			case KindCAS:
				if out.Unknown {
					return fmt.Sprintf("cas(%d→%d) ?", in.Expect, in.Value)
				}
				return fmt.Sprintf("cas(%d→%d) %v", in.Expect, in.Value, out.CASOK)
			}
			return fmt.Sprintf("%s() → %d", in.Kind, out.Value)
		},
		DescribeState: func(state any) string { return fmt.Sprint(state.(int64)) },
	}
}

// regOps turns the history of one key into porcupine operations: writes and
// compare-and-sets (indeterminate ones open-ended), and the reads of the
// kinds asked for that succeeded. Failed operations had no effect.
func regOps(ops []Op, key string, reads ...Kind) []porcupine.Operation {
	var out []porcupine.Operation
	for _, o := range ops {
		if o.Key != key || o.Status == Fail {
			continue
		}
		in := regInput{Kind: o.Kind, Value: o.Value, Expect: o.Expect}
		res := regOutput{Value: o.Value, CASOK: o.CASOK}
		ret := o.Return
		switch {
		case o.Kind == KindWrite || o.Kind == KindCAS:
			if o.Status == Info {
				res.Unknown, ret = true, never
			}
		case slices.Contains(reads, o.Kind) && o.Status == OK:
		default:
			continue
		}
		out = append(out, porcupine.Operation{ClientId: o.Client, Input: in, Call: o.Call, Output: res, Return: ret, Metadata: o.String()})
	}
	return out
}

// Linearizable checks one key's history with the reads of the given kinds.
// Unknown (the checker's time limit ran out) counts as not proven.
func Linearizable(ops []Op, key string, reads ...Kind) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	return porcupine.CheckOperationsVerbose(registerModel(), regOps(ops, key, reads...), checkTimeout)
}

// Final is the converged cluster state the checkers compare the history
// with.
type Final struct {
	Registers map[string]*raftstore.Register `json:"registers"`
	Tokens    map[string]*raftstore.Token    `json:"tokens"`
	Cloud     raftstore.CloudState           `json:"cloud"`
	Workloads raftstore.Workloads            `json:"workloads"`
}

// CheckWrites finds lost, phantom and doubled writes: every acknowledged
// write is in the register's applied writes, every applied write was
// invoked (and not definitely failed), none is applied twice (by value,
// each unique, and by command ID), and the register holds its last write.
func CheckWrites(ops []Op, f *Final) (lost, doubled, phantom []string) {
	invoked := map[string]map[int64]Op{}
	for _, o := range ops {
		if o.Kind != KindWrite && o.Kind != KindCAS {
			continue
		}
		if invoked[o.Key] == nil {
			invoked[o.Key] = map[int64]Op{}
		}
		invoked[o.Key][o.Value] = o
	}
	for key, byValue := range invoked {
		r := f.Registers[key]
		if r == nil {
			r = &raftstore.Register{}
		}
		applied := map[int64]int{}
		ids := map[string]int{}
		for _, w := range r.Writes {
			applied[w.Value]++
			ids[w.ID]++
			o, ok := byValue[w.Value]
			switch {
			case !ok:
				phantom = append(phantom, fmt.Sprintf("%s=%d at index %d: never written by a client", key, w.Value, w.Index))
			case o.Status == Fail:
				phantom = append(phantom, fmt.Sprintf("%s: applied at index %d, though the client was told it failed", o, w.Index))
			case o.Kind == KindCAS && o.Status == OK && !o.CASOK:
				phantom = append(phantom, fmt.Sprintf("%s: applied at index %d, though the compare failed", o, w.Index))
			}
		}
		for v, n := range applied {
			if n > 1 {
				doubled = append(doubled, fmt.Sprintf("%s=%d applied %d times", key, v, n))
			}
		}
		for id, n := range ids {
			if n > 1 {
				doubled = append(doubled, fmt.Sprintf("%s: command %s applied %d times", key, id, n))
			}
		}
		for _, o := range byValue {
			acked := o.Status == OK && (o.Kind == KindWrite || o.CASOK)
			if acked && applied[o.Value] == 0 {
				lost = append(lost, fmt.Sprintf("%s: acknowledged, not in the state", o))
			}
		}
		if n := len(r.Writes); n > 0 && r.Value != r.Writes[n-1].Value {
			phantom = append(phantom, fmt.Sprintf("%s holds %d, its last write is %d", key, r.Value, r.Writes[n-1].Value))
		}
	}
	for _, o := range ops {
		if o.Kind == KindToken && o.Status == OK && f.Tokens[o.Token] == nil {
			lost = append(lost, fmt.Sprintf("%s: acknowledged token not in the state", o))
		}
	}
	slices.Sort(lost)
	slices.Sort(doubled)
	slices.Sort(phantom)
	return lost, doubled, phantom
}

// StaleStats judge local (stale-allowed) reads by what they promise: the
// value is the register's value as of the log index the read reports (a
// committed prefix of the log, never an uncommitted or invented value).
// They are allowed to lag, even to go back in time on a node that
// restarted; those are counted, not failed.
type StaleStats struct {
	Reads     int      `json:"reads"`
	Behind    int      `json:"behind"`    // older than a write acknowledged before the read began
	Backwards int      `json:"backwards"` // a lower index than the client's previous read on that node
	Wrong     []string `json:"wrong,omitempty"`
}

// CheckStale checks stale reads against the final applied writes.
func CheckStale(ops []Op, f *Final) StaleStats {
	var st StaleStats
	lastIdx := map[[2]int]uint64{}
	byCall := slices.Clone(ops)
	slices.SortFunc(byCall, func(a, b Op) int { return cmp.Compare(a.Call, b.Call) })
	for _, o := range byCall {
		if o.Kind != KindStale || o.Status != OK {
			continue
		}
		st.Reads++
		var want int64
		var writes []raftstore.RegisterWrite
		if r := f.Registers[o.Key]; r != nil {
			writes = r.Writes
		}
		for _, w := range writes {
			if w.Index <= o.Index {
				want = w.Value
			}
		}
		if o.Value != want {
			st.Wrong = append(st.Wrong, fmt.Sprintf("%s: the log holds %d at index %d", o, want, o.Index))
		}
		k := [2]int{o.Client, o.Node}
		if o.Index < lastIdx[k] {
			st.Backwards++
		}
		lastIdx[k] = max(lastIdx[k], o.Index)
		// Behind: some write acknowledged before this read was called
		// has an index above the one the read reflects.
		for _, w := range ops {
			if w.Key == o.Key && w.Status == OK && (w.Kind == KindWrite || w.CASOK) && w.Return < o.Call && w.Index > o.Index {
				st.Behind++
				break
			}
		}
	}
	return st
}

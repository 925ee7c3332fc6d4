//go:build jepsen

// Package jepsen is a Jepsen-style fault campaign against whole in-process
// runos-agent clusters (agenttest): clients drive the local API (the unix
// socket the CLI uses) while a nemesis partitions, cuts, crashes and
// restarts nodes; afterwards checkers judge the recorded history
// (porcupine linearizability, lost or doubled writes, convergence).
//
// It builds only with the jepsen tag, which is also what makes the agents
// serve the test register (raftstore/register.go).
package jepsen

import (
	"fmt"
	"sync"
	"time"
)

// Kind is what an operation does.
type Kind string

// Operation kinds.
const (
	KindWrite Kind = "write" // POST /v1/test/register
	KindCAS   Kind = "cas"   // POST /v1/test/register with expect
	KindRead  Kind = "read"  // GET /v1/test/register/{key}?consistent=1
	KindStale Kind = "stale" // GET /v1/test/register/{key} (local copy)
	KindToken Kind = "token" // POST /v1/tokens
)

// Status is how an operation ended, as in Jepsen.
type Status string

// Operation outcomes. A timeout is Info: the write may or may not have
// been applied, now or later.
const (
	OK   Status = "ok"
	Fail Status = "fail" // definitely had no effect
	Info Status = "info" // indeterminate
)

// Op is one operation of the history.
type Op struct {
	ID     int    `json:"id"`
	Client int    `json:"client"`
	Node   int    `json:"node"` // the node whose local API it went to
	Kind   Kind   `json:"kind"`
	Key    string `json:"key,omitempty"`
	Value  int64  `json:"value,omitempty"`  // written (write, cas) or read
	Expect int64  `json:"expect,omitempty"` // cas
	CASOK  bool   `json:"cas_ok,omitempty"` // cas: the compare matched
	Token  string `json:"token,omitempty"`  // token: the ID created
	Index  uint64 `json:"index,omitempty"`  // log index the answer reflects
	Status Status `json:"status"`
	Error  string `json:"error,omitempty"`
	// Call and Return are nanoseconds since the schedule started.
	Call   int64 `json:"call"`
	Return int64 `json:"return"`
}

func (o Op) String() string {
	s := fmt.Sprintf("#%d c%d n%d %s", o.ID, o.Client, o.Node, o.Kind)
	switch o.Kind {
	case KindWrite:
		s += fmt.Sprintf(" %s=%d", o.Key, o.Value)
	case KindCAS:
		s += fmt.Sprintf(" %s %d->%d ok=%v", o.Key, o.Expect, o.Value, o.CASOK)
	case KindRead, KindStale:
		s += fmt.Sprintf(" %s -> %d @%d", o.Key, o.Value, o.Index)
	case KindToken:
		s += " " + o.Token
	}
	s += " " + string(o.Status)
	if o.Error != "" {
		s += " (" + o.Error + ")"
	}
	return s
}

// History records operations from many clients.
type History struct {
	start time.Time
	mu    sync.Mutex
	ops   []Op // guarded by mu
}

// NewHistory starts a history; times are relative to now.
func NewHistory() *History { return &History{start: time.Now()} }

// Now is the history's clock.
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// Add records a completed operation.
func (h *History) Add(o Op) {
	h.mu.Lock()
	o.ID = len(h.ops)
	h.ops = append(h.ops, o)
	h.mu.Unlock()
}

// Ops returns a copy of the operations.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops...)
}

// Counts are the outcomes of a history.
type Counts struct {
	Ops  int `json:"ops"`
	OK   int `json:"ok"`
	Fail int `json:"fail"`
	Info int `json:"info"`
}

// Count tallies ops.
func Count(ops []Op) Counts {
	var c Counts
	for _, o := range ops {
		c.Ops++
		switch o.Status {
		case OK:
			c.OK++
		case Fail:
			c.Fail++
		case Info:
			c.Info++
		}
	}
	return c
}

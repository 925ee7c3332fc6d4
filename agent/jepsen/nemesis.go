//go:build jepsen

package jepsen

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/runos/runos-agent/agent/agenttest"
)

// nemesis injects a schedule's faults into an in-process cluster. It runs
// on the test goroutine (agenttest drives a cluster from there) while the
// clients run on their own.
type nemesis struct {
	t   *testing.T
	c   *agenttest.Cluster
	s   Schedule
	h   *History
	r   *rand.Rand
	log []string
	// active network faults: re-applied after a heal of another.
	active map[int]func()
	// crashed nodes, by the step that crashed them.
	crashed map[int][]int
	// isolatedLeader: step -> the leader it cut off, and since when.
	isolated map[int]isolation
	deposed  []string
	flap     map[int]int // step -> the node it currently isolates (-1 none)
	lastFlap time.Time
	cloud    *cloudRig // nil without a cloud
}

type isolation struct {
	node  int
	since time.Time
}

func newNemesis(t *testing.T, c *agenttest.Cluster, s Schedule, h *History) *nemesis {
	return &nemesis{t: t, c: c, s: s, h: h, r: rand.New(rand.NewPCG(s.Seed, 7)),
		active: map[int]func(){}, crashed: map[int][]int{}, isolated: map[int]isolation{}, flap: map[int]int{}}
}

func (n *nemesis) logf(format string, args ...any) {
	line := fmt.Sprintf("%6.2fs ", time.Duration(n.h.Now()).Seconds()) + fmt.Sprintf(format, args...)
	n.log = append(n.log, line)
	n.t.Log(line)
}

// leader is the running node that leads in the highest term, or -1.
func (n *nemesis) leader() int {
	best, term := -1, uint64(0)
	for i := range n.c.Len() {
		a := n.c.Agent(i)
		if a == nil || !a.Store().IsLeader() {
			continue
		}
		if st := a.Store().Status(); best < 0 || st.Term > term {
			best, term = i, st.Term
		}
	}
	return best
}

func (n *nemesis) running() []int {
	var out []int
	for i := range n.c.Len() {
		if n.c.Agent(i) != nil {
			out = append(out, i)
		}
	}
	return out
}

// pickLeader is the leader, or a random running node when there is none.
func (n *nemesis) pickLeader() int {
	if l := n.leader(); l >= 0 {
		return l
	}
	return n.pickOther(-1)
}

// pickOther is a random running node other than not.
func (n *nemesis) pickOther(not int) int {
	var c []int
	for _, i := range n.running() {
		if i != not {
			c = append(c, i)
		}
	}
	if len(c) == 0 {
		return -1
	}
	return c[n.r.IntN(len(c))]
}

func (n *nemesis) run(d time.Duration) {
	type ev struct {
		at     time.Duration
		step   int
		inject bool
	}
	var evs []ev
	for i, st := range n.s.Steps {
		evs = append(evs, ev{st.At, i, true}, ev{st.Until, i, false})
	}
	slices.SortStableFunc(evs, func(a, b ev) int { return int(a.at - b.at) })
	start := time.Now()
	for time.Since(start) < d {
		for len(evs) > 0 && time.Since(start) >= evs[0].at {
			e := evs[0]
			evs = evs[1:]
			if e.inject {
				n.inject(e.step)
			} else {
				n.recover(e.step)
			}
		}
		n.flapTick()
		time.Sleep(20 * time.Millisecond)
	}
	for _, e := range evs {
		if !e.inject {
			n.recover(e.step)
		}
	}
}

func (n *nemesis) inject(step int) {
	f := n.s.Steps[step].Fault
	c := n.c
	switch f {
	case FaultNone:
		n.logf("no fault")
	case FaultIsolateLeader:
		l := n.pickLeader()
		n.net(step, func() { c.Isolate(l) })
		n.isolated[step] = isolation{l, time.Now()}
		n.logf("%s: node%d (the leader) cut off from all", f, l)
	case FaultIsolateFollower:
		x := n.pickOther(n.leader())
		n.net(step, func() { c.Isolate(x) })
		n.logf("%s: node%d cut off from all", f, x)
	case FaultMajority:
		nodes := n.r.Perm(c.Len())[:(c.Len()-1)/2]
		n.net(step, func() { c.Partition(nodes...) })
		n.logf("%s: minority %v cut off from the rest", f, nodes)
		if l := n.leader(); slices.Contains(nodes, l) && len(nodes) == 1 {
			n.isolated[step] = isolation{l, time.Now()}
		}
	case FaultBridge:
		// Two halves, one bridge node in neither that reaches both.
		perm := n.r.Perm(c.Len())
		bridge, rest := perm[0], perm[1:]
		a, b := rest[:len(rest)/2], rest[len(rest)/2:]
		n.net(step, func() {
			for _, i := range a {
				for _, j := range b {
					c.CutLink(i, j)
				}
			}
		})
		n.logf("%s: %v and %v see each other only through node%d", f, a, b, bridge)
	case FaultCutLeaderLink:
		l := n.pickLeader()
		x := n.pickOther(l)
		n.net(step, func() { c.CutLink(l, x) })
		n.logf("%s: link node%d (leader) - node%d cut", f, l, x)
	case FaultOneWayToLeader:
		l := n.pickLeader()
		x := n.pickOther(l)
		n.net(step, func() { c.CutOneWay(x, l) })
		n.logf("%s: node%d -> node%d (leader) dropped, the other way open", f, x, l)
	case FaultOneWayFromLead:
		l := n.pickLeader()
		x := n.pickOther(l)
		n.net(step, func() { c.CutOneWay(l, x) })
		n.logf("%s: node%d (leader) -> node%d dropped, the other way open", f, l, x)
	case FaultCrashLeader, FaultStopLeader, FaultCrashRandom:
		x := n.pickLeader()
		if f == FaultCrashRandom {
			x = n.pickOther(-1)
		}
		if x < 0 {
			n.logf("%s: no running node", f)
			return
		}
		n.logf("%s: node%d going down", f, x)
		if f == FaultStopLeader {
			c.Stop(x)
		} else {
			c.Crash(x)
		}
		n.crashed[step] = []int{x}
		n.logf("%s: node%d down", f, x)
	case FaultRestartAll:
		all := n.running()
		for _, i := range all {
			c.Isolate(i) // every node cut at the same instant...
		}
		for _, i := range all {
			c.Crash(i) // ...then all stopped
		}
		n.crashed[step] = all
		n.logf("%s: killed %v", f, all)
	case FaultFlap:
		n.flap[step] = -1
		n.logf("%s: start", f)
	case FaultCloudDrop:
		if n.cloud == nil {
			n.logf("%s: no cloud in this schedule", f)
			return
		}
		n.cloud.down()
		n.logf("%s: the cloud backend is down", f)
	}
}

// net applies a network fault and remembers it, so healing another fault
// does not heal this one.
func (n *nemesis) net(step int, apply func()) {
	apply()
	n.active[step] = apply
}

func (n *nemesis) flapTick() {
	if len(n.flap) == 0 || time.Since(n.lastFlap) < 300*time.Millisecond {
		return
	}
	n.lastFlap = time.Now()
	for step, cur := range n.flap {
		if cur >= 0 {
			delete(n.active, step)
			n.flap[step] = -1
			n.heal()
			n.logf("flap: healed node%d", cur)
			continue
		}
		x := n.pickOther(-1)
		if x < 0 {
			continue
		}
		n.flap[step] = x
		n.net(step, func() { n.c.Isolate(x) })
		n.logf("flap: node%d cut off", x)
	}
}

// heal removes every partition, then puts back the faults still active.
func (n *nemesis) heal() {
	n.c.Heal()
	for _, apply := range n.active {
		apply()
	}
}

func (n *nemesis) recover(step int) {
	f := n.s.Steps[step].Fault
	if iso, ok := n.isolated[step]; ok {
		// A leader cut off from every voter for twice Raft's
		// heartbeat timeout (its lease is half of it) must have
		// stepped down: else it keeps answering as leader and taking
		// writes that can never commit.
		held := time.Since(iso.since)
		if a := n.c.Agent(iso.node); a != nil && held > 2*heartbeatTimeout(n.s.Tuning)+time.Second && a.Store().IsLeader() {
			msg := fmt.Sprintf("node%d still leads term %d after %s cut off from every other node", iso.node, a.Store().Status().Term, held.Round(time.Millisecond))
			n.deposed = append(n.deposed, msg)
			n.logf("VIOLATION: %s", msg)
		}
		delete(n.isolated, step)
	}
	if _, ok := n.flap[step]; ok {
		delete(n.flap, step)
	}
	if _, ok := n.active[step]; ok || f == FaultFlap {
		delete(n.active, step)
		n.heal()
		n.logf("%s: healed", f)
	}
	if f == FaultCloudDrop && n.cloud != nil && n.cloud.server() == nil {
		if err := n.cloud.up(); err != nil {
			n.t.Fatalf("cloud back up: %v", err)
		}
		n.logf("%s: the cloud backend is back", f)
	}
	if nodes, ok := n.crashed[step]; ok {
		delete(n.crashed, step)
		if f == FaultRestartAll {
			n.heal() // the instant cut; each stays cut until restarted
		}
		for _, i := range nodes {
			n.c.Restart(i)
		}
		n.logf("%s: restarted %v", f, nodes)
	}
}

// recoverAll heals everything and restarts every stopped node.
func (n *nemesis) recoverAll() {
	clear(n.active)
	clear(n.flap)
	n.c.Heal()
	if n.cloud != nil && n.cloud.server() == nil {
		if err := n.cloud.up(); err != nil {
			n.t.Fatalf("cloud back up: %v", err)
		}
	}
	for i := range n.c.Len() {
		if n.c.Agent(i) == nil {
			n.c.Restart(i)
			n.logf("final: restarted node%d", i)
		}
	}
}

//go:build jepsen

package jepsen

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Faults the in-process nemesis injects (natlab drops datagrams in the
// nodes' underlay Binds; a crash cuts a node off before it stops, as
// kill -9 would).
const (
	FaultIsolateLeader   = "isolate-leader"   // leader alone in a minority
	FaultIsolateFollower = "isolate-follower" // one follower alone
	FaultMajority        = "majority"         // random majority/minority split
	FaultBridge          = "bridge"           // two halves that only one node reaches
	FaultCutLeaderLink   = "cut-leader-link"  // one follower loses the leader only
	FaultOneWayToLeader  = "oneway-to-leader" // a follower's datagrams to the leader drop; the leader's arrive
	FaultOneWayFromLead  = "oneway-from-leader"
	FaultCrashLeader     = "crash-leader" // kill -9 of the leader, restarted at recovery
	FaultCrashRandom     = "crash-random" // kill -9 of any node
	FaultStopLeader      = "stop-leader"  // clean stop of the leader (its goodbye heard)
	FaultRestartAll      = "restart-all"  // every node killed and restarted at once
	FaultFlap            = "flap"         // isolate and heal a random node every 300 ms
	FaultNone            = "none"         // no fault: the baseline
	FaultCloudDrop       = "cloud-drop"   // the cloud backend down mid-command (schedules with a cloud)
	tuningFast           = "fast"         // Raft 300 ms timers, plain Raft
	tuningQuiet          = "quiet"        // Raft 1 s timers: the quiet transport and beat-driven liveness on
)

// Faults lists every fault a randomized schedule picks from.
func Faults() []string {
	return []string{FaultIsolateLeader, FaultIsolateFollower, FaultMajority, FaultBridge, FaultCutLeaderLink,
		FaultOneWayToLeader, FaultOneWayFromLead, FaultCrashLeader, FaultCrashRandom, FaultStopLeader,
		FaultRestartAll, FaultFlap, FaultNone}
}

// Step is one fault: injected At, recovered (healed, restarted) at Until.
type Step struct {
	Fault string        `json:"fault"`
	At    time.Duration `json:"at"`
	Until time.Duration `json:"until"`
}

// Schedule is one run: a cluster, a workload, faults.
type Schedule struct {
	Name     string        `json:"name"`
	Seed     uint64        `json:"seed"`
	Nodes    int           `json:"nodes"`
	Tuning   string        `json:"tuning"`
	Clients  int           `json:"clients"`
	Keys     int           `json:"keys"`
	Duration time.Duration `json:"duration"`
	Steps    []Step        `json:"steps"`
	// Cloud connects the cluster to a real runos-cloud backend that
	// sends commands (deploy/delete service, create token) throughout.
	Cloud bool `json:"cloud,omitempty"`
}

func (s Schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s seed=%d nodes=%d tuning=%s clients=%d keys=%d cloud=%v for %s:", s.Name, s.Seed, s.Nodes, s.Tuning, s.Clients, s.Keys, s.Cloud, s.Duration.Round(10*time.Millisecond))
	for _, st := range s.Steps {
		fmt.Fprintf(&b, " %s@%s-%s", st.Fault, st.At.Round(10*time.Millisecond), st.Until.Round(10*time.Millisecond))
	}
	return b.String()
}

// Random makes schedule i of a campaign from its seed: the same seed and
// index always give the same schedule (SEED=... replays a campaign).
func Random(seed uint64, i int) Schedule {
	r := rand.New(rand.NewPCG(seed, uint64(i)))
	s := Schedule{
		Name:     fmt.Sprintf("s%03d", i),
		Seed:     seed,
		Nodes:    []int{3, 3, 5}[r.IntN(3)],
		Tuning:   []string{tuningFast, tuningQuiet}[r.IntN(2)],
		Clients:  4 + r.IntN(3),
		Keys:     1 + r.IntN(2),
		Duration: 4 * time.Second,
	}
	// One fault, two overlapping, or two in sequence.
	n := 1 + r.IntN(2)
	for range n {
		faults := Faults()
		f := faults[r.IntN(len(faults))]
		at := 300*time.Millisecond + time.Duration(r.Int64N(int64(2*time.Second)))
		hold := 700*time.Millisecond + time.Duration(r.Int64N(int64(2500*time.Millisecond)))
		if s.Tuning == tuningQuiet {
			// Long enough for the 1 s Raft timers to act on the fault.
			hold += time.Second
		}
		s.Steps = append(s.Steps, Step{Fault: f, At: at, Until: at + hold})
	}
	// A third of the schedules run with a cloud; half of those lose it
	// for a while.
	if r.IntN(3) == 0 {
		s.Cloud = true
		if r.IntN(2) == 0 {
			at := 300*time.Millisecond + time.Duration(r.Int64N(int64(2*time.Second)))
			s.Steps = append(s.Steps, Step{Fault: FaultCloudDrop, At: at, Until: at + time.Second + time.Duration(r.Int64N(int64(2*time.Second)))})
		}
	}
	for _, st := range s.Steps {
		s.Duration = max(s.Duration, st.Until+500*time.Millisecond)
	}
	return s
}

// Fixed are the schedules CI runs every time: one of each family, short.
func Fixed() []Schedule {
	mk := func(name string, nodes int, tuning string, steps ...Step) Schedule {
		s := Schedule{Name: name, Nodes: nodes, Tuning: tuning, Clients: 4, Keys: 1, Duration: 4 * time.Second, Steps: steps}
		for _, st := range steps {
			s.Duration = max(s.Duration, st.Until+500*time.Millisecond)
		}
		return s
	}
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	return []Schedule{
		mk("ci-isolate-leader-quiet", 3, tuningQuiet, Step{FaultIsolateLeader, sec(0.5), sec(4)}),
		mk("ci-crash-leader", 3, tuningFast, Step{FaultCrashLeader, sec(0.5), sec(2.5)}),
		mk("ci-bridge-oneway", 5, tuningFast, Step{FaultBridge, sec(0.4), sec(2)}, Step{FaultOneWayToLeader, sec(2.2), sec(3.5)}),
		mk("ci-restart-all", 3, tuningQuiet, Step{FaultRestartAll, sec(1), sec(2)}),
		withCloud(mk("ci-cloud-drop-crash-leader", 3, tuningFast, Step{FaultCloudDrop, sec(0.5), sec(2.5)}, Step{FaultCrashLeader, sec(1), sec(2)})),
	}
}

func withCloud(s Schedule) Schedule { s.Cloud = true; return s }

// Mutant are the schedules the mutation check runs against broken builds
// (make jepsen-mutants): the CI set plus write bursts across repeated
// leader crashes and one-way drops, where a forwarded write commits but
// its answer is lost and the store retries it with the same command ID.
func Mutant() []Schedule {
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	burst := func(name string, nodes int, tuning string, steps ...Step) Schedule {
		s := Schedule{Name: name, Nodes: nodes, Tuning: tuning, Clients: 10, Keys: 2, Duration: 4 * time.Second, Steps: steps}
		for _, st := range steps {
			s.Duration = max(s.Duration, st.Until+500*time.Millisecond)
		}
		return s
	}
	return append(Fixed(),
		burst("mut-crash-leader-x3", 3, tuningFast, Step{FaultCrashLeader, sec(0.5), sec(1)}, Step{FaultCrashLeader, sec(2.5), sec(3)}, Step{FaultCrashLeader, sec(4.5), sec(5)}),
		burst("mut-oneway-from-leader", 3, tuningQuiet, Step{FaultOneWayFromLead, sec(0.5), sec(5)}),
		burst("mut-oneway-to-leader", 5, tuningFast, Step{FaultOneWayToLeader, sec(0.5), sec(5)}),
	)
}

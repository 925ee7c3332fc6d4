package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
)

// productionRaft is fastTuning (quick health beats and reconcilers) with
// production Raft timers: followers keep a silent leader for 8-16 s, so
// anything faster is failover on demand or a handover.
func productionRaft() Tuning {
	t := fastTuning
	t.RaftHeartbeat, t.RaftElection = 0, 0
	return t
}

// crashAsync cuts node i off and stops it in the background (its stop
// first tries to hand leadership over, which the cut makes fail, for up to
// handOverWait); wait for it with the returned func.
func (c *cluster) crashAsync(i int) (wait func()) {
	c.cut(i)
	a := c.agents[i]
	c.dc.Agents[i] = nil // c.agents is the same slice
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Close()
	}()
	return func() { <-done }
}

// untilReached runs scenario up to 3 times: a run that returns false did
// not reach the state it tests (missed, with the reason given, on a loaded
// machine) and proves nothing either way. None reached: skipped.
func untilReached(t *testing.T, missed string, scenario func(*testing.T) bool) {
	t.Helper()
	for attempt := 1; attempt <= 3; attempt++ {
		if scenario(t) {
			return
		}
		t.Logf("attempt %d: %s (machine under load); again", attempt, missed)
	}
	t.Skipf("in every attempt, %s: the scenario was not reached", missed)
}

// crashedLeader starts a 3-node cluster with production Raft timers and
// crashes its leader; wait waits for the crashed node's Close.
func crashedLeader(t *testing.T) (c *cluster, old *Agent, term uint64, wait func()) {
	t.Helper()
	c = newClusterTuned(t, 3, productionRaft())
	old = c.waitLeader()
	term = old.store.Status().Term
	return c, old, term, c.crashAsync(slices.Index(c.agents, old))
}

func failoverElections(agents []*Agent) (n uint64) {
	for _, a := range agents {
		n += a.store.FailoverStats().Elections
	}
	return n
}

// A write issued right after the leader crashes does not wait for Raft's
// election timer: the follower it was written on finds the leader silent,
// the other voter agrees, and one of them campaigns at once. Every term
// the cluster moves through is an election started by failover on demand,
// none by Raft's timers. That is one election, except in a race seen under
// load: rounds on both survivors picked themselves while a log still grew
// from the dead leader's last packets, and the loser's TimeoutNow landed
// after it had voted for the winner; the next round ends that at once.
func TestWriteAfterLeaderCrashElectsAtOnce(t *testing.T) {
	c, _, term, wait := crashedLeader(t)
	defer wait()
	survivors := c.running()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := survivors[0].CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatalf("write after the leader crashed: %v", err)
	}
	l := c.waitLeader()
	got, n := l.store.Status().Term, failoverElections(survivors)
	if n == 0 || got != term+n {
		t.Errorf("term %d → %d with %d elections started on a confirmed suspicion: Raft's timer elected", term, got, n)
	}
	if n > 1 {
		t.Logf("%d elections (the race in the comment above)", n)
	}
	for _, a := range survivors {
		t.Logf("%s: %+v", a.Name(), a.store.FailoverStats())
	}
}

// A leader that stops on purpose hands leadership over first: the next
// leader is elected by the transfer (term + 1), no failover on demand is
// needed, and writes continue through the survivors.
func TestPlannedStopHandsLeadershipOver(t *testing.T) {
	// On a loaded machine the transfer sometimes misses the stop's 2 s
	// bound (the others then elect on the goodbye heartbeat: failover
	// works, the handover was not tested).
	untilReached(t, "the handover missed its bound", plannedStop)
}

// plannedStop runs the scenario once and reports whether the handover
// finished within the stop's bound.
func plannedStop(t *testing.T) bool {
	c := newClusterTuned(t, 3, productionRaft())
	defer c.dc.Close()
	old := c.waitLeader()
	term := old.store.Status().Term
	c.stop(slices.Index(c.agents, old))
	if st := old.store.FailoverStats(); st.HandedOver != 1 {
		if st.HandOverFailed == 0 {
			t.Fatalf("the stopping leader did not try to hand over: %+v", st)
		}
		return false
	}
	survivors := c.running()

	l := c.waitLeader()
	if got := l.store.Status().Term; got != term+1 {
		t.Errorf("new leader's term %d, want %d (elected by the transfer)", got, term+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, a := range survivors {
		if _, err := a.CreateToken(ctx, api.TokenRequest{}); err != nil {
			t.Fatalf("write through %s after the leader stopped: %v", a.Name(), err)
		}
	}
	if got := c.waitLeader().store.Status().Term; got != term+1 {
		t.Errorf("term %d after writes, want %d", got, term+1)
	}
	if n := failoverElections(survivors); n != 0 {
		t.Errorf("%d elections on a suspicion: the stop did not hand over", n)
	}
	return true
}

// Checking a leader that answers changes nothing: a follower asking every
// voter about a live leader starts no election.
func TestLiveLeaderSurvivesSuspicion(t *testing.T) {
	c := newClusterTuned(t, 3, productionRaft())
	l := c.waitLeader()
	f := c.follower()
	k := raftstore.Suspicion{Leader: l.cfg.NodeID, Term: l.store.Status().Term}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, a := range c.running() {
		if a == l {
			continue
		}
		if v := a.store.CheckLeader(ctx, k); v.Unreachable {
			t.Errorf("%s finds the live leader unreachable: %+v", a.Name(), v)
		}
		if err := a.store.Campaign(k); err == nil {
			t.Errorf("%s campaigned against a live leader it did not find unreachable", a.Name())
		}
	}
	p := failoverPeers{f}.Probe(ctx, l.cfg.NodeID)
	if !p.Reached || !p.Answered || !p.Leader || p.Term != k.Term {
		t.Errorf("probe of the live leader: %+v", p)
	}
	if got := l.store.Status(); got.State != "Leader" || got.Term != k.Term {
		t.Errorf("leader after the checks: %+v", got)
	}
}

// A probe of a node that is gone finds it unreachable, whether its socket
// is silent or the node stopped.
func TestProbeOfStoppedNode(t *testing.T) {
	c := newClusterTuned(t, 3, productionRaft())
	f := c.follower()
	var other *Agent
	for _, a := range c.running() {
		if a != f {
			other = a
			break
		}
	}
	id := other.cfg.NodeID
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p := (failoverPeers{f}).Probe(ctx, id); !p.Reached || !p.Answered {
		t.Fatalf("probe of a running node: %+v", p)
	}
	wait := c.crashAsync(slices.Index(c.agents, other))
	wait()
	pctx, pcancel := context.WithTimeout(ctx, time.Second)
	defer pcancel()
	if p := (failoverPeers{f}).Probe(pctx, id); p.Reached {
		t.Fatalf("probe of a crashed node: %+v", p)
	}
}

// A write through a node whose Raft timer already dropped the dead leader
// (it knows no leader; the other voter still follows the dead one and
// refuses its pre-votes) checks the leader it followed last: the other
// voter confirms and campaigns, without waiting for its own timer.
func TestWriteWithNoLeaderKnownChecksTheLastOne(t *testing.T) {
	// The scenario needs the other voter's Raft timer not to fire between
	// the setup and the write's check; on a loaded machine it sometimes
	// does (a timer election, no check needed). A reached scenario must
	// elect by the check.
	untilReached(t, "Raft's own timer elected a leader before the check could run", writeWithNoLeaderKnown)
}

// writeWithNoLeaderKnown runs the scenario once and reports whether it
// was reached (no leader was elected by a timer before the check).
func writeWithNoLeaderKnown(t *testing.T) bool {
	c, old, term, wait := crashedLeader(t)
	defer c.dc.Close()
	defer wait()
	survivors := c.running()
	// Wait for one survivor's Raft timer to drop the dead leader while the
	// other still follows it. Both timers may fire first: then both have
	// dropped it, or one of them already leads.
	var lost *Agent
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		var follows []string
		lost = nil
		for _, a := range survivors {
			switch a.store.LeaderID() {
			case "":
				lost = a
			case old.cfg.NodeID:
				follows = append(follows, a.Name())
			default:
				return false // a timer elected a new leader
			}
		}
		if lost != nil && len(follows) == 1 {
			break
		}
		if len(follows) == 0 {
			return false // both timers fired
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a minute, survivors still follow the dead leader: %v", follows)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := lost.CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatalf("write through %s: %v", lost.Name(), err)
	}
	for _, a := range survivors {
		t.Logf("%s: %+v", a.Name(), a.store.FailoverStats())
	}
	n := failoverElections(survivors)
	if n == 0 && c.waitLeader().store.Status().Term > term {
		// A leader without a failover campaign: the other voter's timer
		// fired too (the write then found the new leader at once, or its
		// checks found it already, or both voters were candidates and
		// neither could take a TimeoutNow). That failover elects when it
		// can is TestWriteAfterLeaderCrashElectsAtOnce's to show.
		return false
	}
	if n != 1 {
		t.Errorf("%d elections started on a confirmed suspicion, want 1", n)
	}
	return true
}

// Once a survivor won the election on a suspicion, the other survivor,
// which confirmed the same suspicion, refuses to campaign on it: it
// follows a newer leader, and its TimeoutNow would unseat the winner for
// nothing. The winner counts as an election under way (what stops
// concurrent rounds from splitting the vote) only for a grace period, so
// a candidate that lost does not hold later rounds off for good.
func TestCampaignRefusedOnceTheSuspicionIsSettled(t *testing.T) {
	untilReached(t, "the agents' own failover elected first, or the confirmation went stale before the second campaign", campaignAfterSettled)
}

// campaignAfterSettled runs the scenario once and reports whether it was
// reached (the second voter's confirmation was still fresh).
func campaignAfterSettled(t *testing.T) bool {
	c, old, term, wait := crashedLeader(t)
	defer c.dc.Close()
	defer wait()
	k := raftstore.Suspicion{Leader: old.cfg.NodeID, Term: term}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	survivors := c.running()
	for _, a := range survivors {
		if v := a.store.CheckLeader(ctx, k); !v.Unreachable || !v.CanCampaign {
			if a.store.Status().Term > term {
				return false // the agents' own failover (a background write) elected first
			}
			t.Fatalf("%s on the crashed leader: %+v, want unreachable and able to campaign", a.Name(), v)
		}
	}
	winner, other := survivors[0], survivors[1]

	campaigned := time.Now()
	if err := winner.store.Campaign(k); err != nil {
		t.Fatalf("%s campaigns on a confirmed suspicion: %v", winner.Name(), err)
	}
	eventually(t, winner.Name()+" leads and "+other.Name()+" follows it", func() error {
		if l := other.store.LeaderID(); !winner.store.IsLeader() || l != winner.cfg.NodeID {
			return fmt.Errorf("%s follows %q", other.Name(), l)
		}
		return nil
	})
	if v := winner.store.CheckLeader(ctx, k); !v.Electing && time.Since(campaigned) < time.Second {
		t.Errorf("%s right after its election on the suspicion: %+v, want electing", winner.Name(), v)
	}

	err := other.store.Campaign(k)
	if err != nil && strings.Contains(err.Error(), "has not found the leader unreachable") {
		return false
	}
	if err == nil || !strings.Contains(err.Error(), "does not follow the suspected leader") {
		t.Errorf("%s campaigns on the settled suspicion: err = %v, want a refusal", other.Name(), err)
	}
	if st := winner.store.Status(); st.State != "Leader" || st.Term != term+1 {
		t.Errorf("the winner after the refused campaign: %+v, want leader in term %d", st, term+1)
	}
	if n := failoverElections(survivors); n != 1 {
		t.Errorf("%d elections started on the suspicion, want 1", n)
	}

	eventually(t, winner.Name()+"'s election no longer counts as under way", func() error {
		if v := winner.store.CheckLeader(ctx, k); v.Electing {
			return fmt.Errorf("electing %.1fs after the campaign", time.Since(campaigned).Seconds())
		}
		return nil
	})
	return true
}

package agent_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/runos/runos-agent/agent"
	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
)

// A false alarm: one follower loses its link to a live leader (the other
// follower still reaches it). A write through the cut-off follower waits,
// so it checks the leader and asks the other voter, which still reaches
// it: no election, the leader and its term stay. Healed, the write path
// works again without any election.
func TestCutLinkToLiveLeaderIsNoFailover(t *testing.T) {
	tuning := agenttest.FastTuning()
	tuning.RaftHeartbeat, tuning.RaftElection = 0, 0 // production Raft timers
	c := agenttest.Start(t, 3, agenttest.WithTuning(tuning))
	l := c.Leader()
	term := l.Store().Status().Term
	var cutOff, other *agent.Agent
	for _, a := range c.Running() {
		switch {
		case a == l:
		case cutOff == nil:
			cutOff = a
		default:
			other = a
		}
	}
	c.CutLink(c.Index(cutOff), c.Index(l))
	t.Logf("cut %s off from the leader %s; %s still reaches both", cutOff.Name(), l.Name(), other.Name())

	// The write cannot reach the leader; it waits until the check found
	// the leader alive from the other voter, then the test gives up on it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	wctx, wcancel := context.WithCancel(ctx)
	werr := make(chan error, 1)
	go func() {
		_, err := cutOff.CreateToken(wctx, api.TokenRequest{})
		werr <- err
	}()
	agenttest.Eventually(t, "the cut-off follower's check found no quorum", func() error {
		if st := cutOff.Store().FailoverStats(); st.Unconfirmed == 0 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	wcancel()
	if err := <-werr; err == nil {
		t.Log("the write went through anyway (a path around the cut)")
	}

	for _, a := range c.Running() {
		if st := a.Store().FailoverStats(); st.Elections != 0 {
			t.Errorf("%s started an election: %+v", a.Name(), st)
		}
	}
	for _, a := range []*agent.Agent{l, other} {
		if st := a.Store().Status(); st.Term != term || st.Leader != l.NodeConfig().NodeID {
			t.Errorf("%s: term %d leader %s, want term %d leader %s", a.Name(), st.Term, st.Leader, term, l.Name())
		}
	}

	c.Heal()
	if _, err := cutOff.CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatalf("write through the healed follower: %v", err)
	}
	agenttest.Eventually(t, "one leader, same term", func() error {
		for _, a := range c.Running() {
			st := a.Store().Status()
			if st.Term != term || st.Leader != l.NodeConfig().NodeID {
				return fmt.Errorf("%s: term %d leader %q", a.Name(), st.Term, st.Leader)
			}
		}
		if !l.Store().IsLeader() {
			return errors.New("the leader lost leadership")
		}
		return nil
	})
}

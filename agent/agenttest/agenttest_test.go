package agenttest_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/runos/runos-agent/agent"
	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, agenttest.LeakOptions()...)
}

// healthOf is how a sees the node named name.
func healthOf(a *agent.Agent, name string) string {
	for _, n := range a.Nodes().Nodes {
		if n.Name == name {
			return n.Health
		}
	}
	return "absent"
}

func tokenIDs(a *agent.Agent) []string {
	st, _ := a.Store().State()
	return slices.Sorted(maps.Keys(st.Tokens))
}

// tokenID is the id part of a join token (RO1<ca>::<id>.<secret>).
func tokenID(t *testing.T, tok string) string {
	t.Helper()
	_, cred, ok := strings.Cut(tok, "::")
	id, _, ok2 := strings.Cut(cred, ".")
	if !ok || !ok2 || id == "" {
		t.Fatalf("malformed join token %q", tok)
	}
	return id
}

// sameTokens waits until every running node holds exactly want.
func sameTokens(t *testing.T, c *agenttest.Cluster, what string, want []string) {
	t.Helper()
	agenttest.Eventually(t, what, func() error {
		for _, a := range c.Running() {
			if got := tokenIDs(a); !slices.Equal(got, want) {
				return fmt.Errorf("%s has tokens %v, want %v", a.Name(), got, want)
			}
		}
		return nil
	})
}

// The leader of three is cut off through natlab: the other two see it go
// offline, elect a leader among themselves and commit a write; a write
// through the cut-off node does not commit. Healed, the cluster is one
// again: all healthy, one leader, and every node holds the majority's write
// and not the minority's.
func TestPartitionedLeaderAndHeal(t *testing.T) {
	c := agenttest.Start(t, 3)
	before := tokenIDs(c.Leader()) // the join tokens
	sameTokens(t, c, "every node has the join tokens", before)
	c.WaitVoters(3) // still: a voter change in flight would leave the majority without a quorum
	old := c.Leader()
	c.Isolate(c.Index(old))
	t.Logf("isolated the leader %s", old.Name())

	var majority []*agent.Agent
	for _, a := range c.Running() {
		if a != old {
			majority = append(majority, a)
		}
	}
	agenttest.Eventually(t, "the majority sees "+old.Name()+" offline", func() error {
		for _, a := range majority {
			if h := healthOf(a, old.Name()); h != api.Offline {
				return fmt.Errorf("%s sees %s %s", a.Name(), old.Name(), h)
			}
		}
		return nil
	})
	agenttest.Eventually(t, "a leader among the majority", func() error {
		for _, a := range majority {
			if a.Store().IsLeader() {
				return nil
			}
		}
		return errors.New("none of the majority leads")
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tok, err := majority[0].CreateToken(ctx, api.TokenRequest{TTL: "1h"})
	if err != nil {
		t.Fatalf("write through the majority: %v", err)
	}
	want := slices.Sorted(slices.Values(append(slices.Clone(before), tokenID(t, tok.Token))))
	// The cut-off node cannot commit: refused (no quorum, no leader to
	// forward to) or still waiting when the test gives up on it.
	mctx, mcancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = old.CreateToken(mctx, api.TokenRequest{TTL: "1h"})
	mcancel()
	if err == nil {
		t.Fatal("a write through the isolated node committed")
	}
	t.Logf("write through the isolated node: %v", err)
	if h := healthOf(old, majority[0].Name()); h == api.Healthy {
		t.Errorf("the isolated node still sees %s healthy", majority[0].Name())
	}
	if got := tokenIDs(old); !slices.Equal(got, before) {
		t.Errorf("the isolated node's state changed: tokens %v, had %v", got, before)
	}

	c.Heal()
	c.WaitFormed(3)
	sameTokens(t, c, "every node holds the majority's write and nothing else", want)
	if _, err := old.CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatalf("write through the healed node: %v", err)
	}
}

// A crashed node goes offline and stays cut off; a node joins meanwhile;
// the crashed one restarts from its data dir and the four form again.
func TestCrashJoinRestart(t *testing.T) {
	c := agenttest.Start(t, 3)
	victim := c.Index(c.Follower())
	name := c.Agent(victim).Name()
	c.Crash(victim)
	if c.Agent(victim) != nil {
		t.Fatal("a crashed node is still listed as running")
	}
	agenttest.Eventually(t, name+" offline", func() error {
		for _, a := range c.Running() {
			if h := healthOf(a, name); h != api.Offline {
				return fmt.Errorf("%s sees %s %s", a.Name(), name, h)
			}
		}
		return nil
	})
	j := c.Join()
	if j != 3 || c.Len() != 4 {
		t.Fatalf("joined as node %d of %d", j, c.Len())
	}
	c.WaitFormed(4)
	c.Restart(victim)
	c.WaitFormed(4)
	if dirs := c.Dirs(); len(dirs) != 4 {
		t.Fatalf("%d data dirs", len(dirs))
	}
}

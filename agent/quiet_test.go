package agent

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
)

// An idle cluster's Raft is silent on the wire: the leader answers its own
// repeated heartbeats and commit refreshes while followers' health
// heartbeats are fresh, and followers keep their leader from the leader's
// health heartbeats. Writes, follower reads and failover still work.
func TestIdleRaftIsQuietButAlive(t *testing.T) {
	tuning := fastTuning
	// Raft's timers well above the heartbeat interval, as in production
	// (8 s against 5 s), so the health plane stands in for Raft's idle
	// traffic.
	tuning.RaftHeartbeat = time.Second
	tuning.RaftElection = time.Second
	c := newClusterTuned(t, 3, tuning)
	for _, a := range c.agents {
		if a.raftTiming().QuietFresh == 0 {
			t.Fatal("quiet Raft not enabled")
		}
	}

	l := c.leader()
	term, _ := l.store.Beat()
	// Once the followers' beats are fresh, a window of three Raft
	// heartbeat timeouts, idle, has the repeats answered locally and at
	// most a couple sent. (How soon is not the point; a loaded machine
	// delays the beats.)
	eventually(t, "idle Raft quiet", func() error {
		sup0, sent0 := l.store.QuietStats()
		time.Sleep(3 * time.Second)
		sup1, sent1 := l.store.QuietStats()
		t.Logf("leader: %d empty AppendEntries answered locally, %d sent", sup1-sup0, sent1-sent0)
		if sup1-sup0 < 20 || sent1-sent0 > 2 {
			return fmt.Errorf("%d repeats answered locally and %d sent in 3 s", sup1-sup0, sent1-sent0)
		}
		return nil
	})
	for _, a := range c.agents {
		if tm, _ := a.store.Beat(); tm != term || c.leader() != l {
			t.Fatalf("%s: term %d, want %d: an election happened while idle", a.Name(), tm, term)
		}
	}

	// A write commits, and followers apply it promptly (a new commit index
	// is never answered locally).
	if _, err := c.follower().CreateToken(context.Background(), api.TokenRequest{}); err != nil {
		t.Fatal(err)
	}
	leaderState, _ := l.store.State()
	eventually(t, "token replicated to every node", func() error {
		for _, a := range c.agents {
			st, _ := a.store.State()
			if len(st.Tokens) != len(leaderState.Tokens) {
				return fmt.Errorf("%s has %d tokens, leader %d", a.Name(), len(st.Tokens), len(leaderState.Tokens))
			}
		}
		return nil
	})

	// The leader dies: with no health heartbeats from it, followers elect
	// a new one.
	c.stop(indexOf(c.agents, l))
	eventually(t, "new leader", func() error {
		if nl := c.leader(); nl == nil || nl == l {
			return errors.New("no new leader")
		}
		return nil
	})
	if _, err := c.running()[0].CreateToken(context.Background(), api.TokenRequest{}); err != nil {
		t.Fatalf("write after failover: %v", err)
	}
}

func indexOf(agents []*Agent, a *Agent) int {
	for i, x := range agents {
		if x == a {
			return i
		}
	}
	return -1
}

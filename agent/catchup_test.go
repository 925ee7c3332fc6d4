package agent

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
)

// After a restart a node's state is its last snapshot: Raft applies the
// entries after it only once it learns the commit index from a leader.
// CatchUp is what brings it current, and what the Kubernetes loop waits for
// before acting on the state (a spec from the snapshot once retired the
// data of an etcd member the node still had).
func TestRestartedNodeIsStaleUntilCaughtUp(t *testing.T) {
	c := newCluster(t, 3)
	f := c.follower()
	i := slices.Index(c.agents, f)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Raft refuses a snapshot until a new configuration entry is applied.
	eventually(t, "a snapshot on the follower", f.store.Snapshot)
	st, _ := f.store.State()
	before := len(st.Tokens)
	if _, err := f.CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the follower applies the write after its snapshot", func() error {
		if st, _ := f.store.State(); len(st.Tokens) != before+1 {
			return fmt.Errorf("%d tokens", len(st.Tokens))
		}
		return nil
	})

	// Everyone stops; the follower comes back alone: no leader can tell it
	// the commit index.
	for j := range c.agents {
		c.stop(j)
	}
	c.start(i)
	f = c.agents[i]
	if st, _ := f.store.State(); len(st.Tokens) != before {
		t.Fatalf("restarted alone, the node has %d tokens; its snapshot had %d", len(st.Tokens), before)
	}
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	if err := f.store.CatchUp(short); err == nil {
		t.Fatal("CatchUp succeeded with no leader reachable")
	}

	for j := range c.agents {
		if j != i {
			c.start(j)
		}
	}
	if err := catchUpWithin(ctx, f); err != nil {
		t.Fatal(err)
	}
	if st, _ := f.store.State(); len(st.Tokens) != before+1 {
		t.Fatalf("after CatchUp the node has %d tokens, want %d", len(st.Tokens), before+1)
	}
}

func catchUpWithin(ctx context.Context, a *Agent) error {
	for {
		err := a.store.CatchUp(ctx)
		if err == nil || ctx.Err() != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

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
	// The gate the managed-Kubernetes loop passes before its first apply
	// holds while no leader can answer, and opens only on the caught-up
	// state.
	gate := make(chan int, 1)
	go func() {
		if !f.awaitCaughtUp(ctx, "the test") {
			gate <- -1
			return
		}
		st, _ := f.store.State()
		gate <- len(st.Tokens)
	}()
	select {
	case n := <-gate:
		t.Fatalf("the catch-up gate opened with no leader reachable (%d tokens)", n)
	case <-time.After(2 * time.Second):
	}

	for j := range c.agents {
		if j != i {
			c.start(j)
		}
	}
	if n := <-gate; n != before+1 {
		t.Fatalf("the catch-up gate opened on %d tokens, want %d", n, before+1)
	}
}

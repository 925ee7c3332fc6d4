package agent

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runos/runos-agent/raftstore"
)

// Writes forwarded from a follower in batches survive the leader crashing
// mid-stream: every one is committed exactly once (a batch whose answer
// was lost is retried with the same command IDs, which the state machine
// answers with their first results), and each writer gets its own
// command's result.
func TestForwardedWritesAcrossLeaderCrash(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	var via *Agent
	for _, a := range c.running() {
		if a != l {
			via = a
			break
		}
	}
	const writers, each = 24, 20
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var done atomic.Int64
	var mu sync.Mutex
	indexes := map[uint64]string{} // log index -> the write whose result named it; guarded by mu
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				detail := fmt.Sprintf("forwarded %d/%d", w, i)
				res, err := via.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpEvent,
					Event: &raftstore.Event{Kind: "test", Detail: detail}})
				if err == nil {
					err = res.Error()
				}
				if err == nil && res.Index == 0 {
					err = fmt.Errorf("no log index in the result")
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", detail, err)
					return
				}
				mu.Lock()
				if other, ok := indexes[res.Index]; ok {
					err = fmt.Errorf("%s got index %d, the result of %s", detail, res.Index, other)
				}
				indexes[res.Index] = detail
				mu.Unlock()
				if err != nil {
					errs <- err
					return
				}
				done.Add(1)
			}
		})
	}
	// Crash the leader while batches are in flight.
	eventually(t, "a third of the writes committed", func() error {
		if n := done.Load(); n < writers*each/3 {
			return fmt.Errorf("%d committed", n)
		}
		return nil
	})
	c.crash(slices.Index(c.agents, l))
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if nl := c.waitLeader(); nl == l {
		t.Fatal("the crashed node still leads")
	}

	// Every write is in the log once: count them in the events on the
	// node they went through, once it has applied everything.
	want := c.waitLeader().store.Status().CommitIndex
	eventually(t, via.Name()+" caught up", func() error {
		if got := via.store.Status().AppliedIndex; got < want {
			return fmt.Errorf("applied %d of %d", got, want)
		}
		return nil
	})
	st, _ := via.store.State()
	seen := map[string]int{}
	for _, e := range st.Events {
		if e.Kind == "test" {
			seen[e.Detail]++
		}
	}
	for w := range writers {
		for i := range each {
			if d := fmt.Sprintf("forwarded %d/%d", w, i); seen[d] != 1 {
				t.Errorf("%s is in the log %d times", d, seen[d])
			}
		}
	}
}

package agent

import (
	"fmt"
	"testing"
	"time"
)

// A follower that restarts comes back with no leader, and heartbeats no
// longer install one: its beats say so, and the leader sends it Raft's
// own heartbeats over the wire until it follows again. Then the wire is
// quiet again, and no election happened.
func TestRestartedFollowerFollowsAgainUnderQuietRaft(t *testing.T) {
	c := newClusterTuned(t, 3, quietTuning())
	l := c.waitLeader()
	term0, _ := l.store.Beat()
	f := c.follower()
	i := indexOf(c.agents, f)
	c.stop(i)
	c.start(i)
	c.agents = c.dc.Agents
	f = c.agents[i]
	eventually(t, "restarted follower follows the leader", func() error {
		if id := f.store.LeaderID(); id != l.cfg.NodeID {
			return fmt.Errorf("%s follows %q, want %s", f.Name(), id, l.cfg.NodeID)
		}
		return nil
	})
	// Quiet again once its beats say it follows: a window of three Raft
	// heartbeat timeouts, idle, carries at most a couple of repeats. (How
	// soon is not the point; a loaded machine delays the beats.)
	eventually(t, "the wire quiet again after the restart", func() error {
		_, sent0 := l.store.QuietStats()
		time.Sleep(3 * time.Second)
		if _, sent1 := l.store.QuietStats(); sent1-sent0 > 2 {
			return fmt.Errorf("%d empty AppendEntries went over the wire in 3 s", sent1-sent0)
		}
		return nil
	})
	if !l.store.IsLeader() {
		t.Errorf("leader %s lost the lead", l.Name())
	}
	for name, tm := range terms(c) {
		if tm != term0 {
			t.Errorf("%s: term %d, was %d", name, tm, term0)
		}
	}
	if err := writeToken(l); err != nil {
		t.Errorf("write: %v", err)
	}
}

package agent

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/health"
	"github.com/runos/runos-agent/raftstore"
)

// crash stops a node without its goodbye, as kill -9 would.
func (c *cluster) crash(i int) {
	c.tb.Helper()
	c.cut(i)
	c.stop(i)
}

func TestCrashedNodeGoesDegradedThenOffline(t *testing.T) {
	c := newCluster(t, 3)
	victim := 2
	if c.agents[victim].store.IsLeader() {
		victim = 1
	}
	name := c.agents[victim].Name()
	// Start from a settled history: a slow start (the race detector) may
	// have recorded a blip that is still being undone.
	eventually(t, name+" recorded healthy", func() error {
		st, _ := c.waitLeader().store.State()
		if h, ok := health.LastRecorded(st)[name]; ok && h != api.Healthy {
			return fmt.Errorf("recorded %s", h)
		}
		if h := c.waitLeader().health.Of(st.NodeByName(name)).Health; h != api.Healthy {
			return fmt.Errorf("seen %s", h)
		}
		return nil
	})
	before := c.agents[0].Events(0).Last
	c.crash(victim)
	seen := map[string][]string{} // observer -> distinct healths seen, in order
	eventually(t, "every survivor sees the crashed node offline", func() error {
		var errs []error
		for _, a := range c.running() {
			for _, n := range a.Nodes().Nodes {
				if n.Name != name {
					continue
				}
				hs := seen[a.Name()]
				if len(hs) == 0 || hs[len(hs)-1] != n.Health {
					seen[a.Name()] = append(hs, n.Health)
					t.Logf("%s sees %s %s: %s", a.Name(), name, n.Health, n.HealthReason)
				}
				if n.Health != api.Offline {
					errs = append(errs, fmt.Errorf("%s sees %s %s", a.Name(), name, n.Health))
				} else if !strings.Contains(n.HealthReason, "dead") && !strings.Contains(n.HealthReason, "no heartbeat") {
					errs = append(errs, fmt.Errorf("offline with reason %q", n.HealthReason))
				}
			}
		}
		return errors.Join(errs...)
	})
	for obs, hs := range seen {
		if !slices.Contains(hs, api.Degraded) {
			t.Errorf("%s never saw %s degraded before offline: %v", obs, name, hs)
		}
	}
	var steps []string
	eventually(t, "one event per transition", func() error {
		steps = steps[:0]
		for _, e := range c.running()[0].Events(before).Events {
			if e.Kind == raftstore.EventHealthChanged && e.Node == name {
				steps = append(steps, e.From+">"+e.To)
			}
		}
		if got := strings.Join(steps, ","); got != "healthy>degraded,degraded>offline" {
			return fmt.Errorf("health events %q", got)
		}
		return nil
	})
	// Both survivors show the same history.
	eventually(t, "same history everywhere", func() error {
		a, b := c.running()[0].Events(0), c.running()[1].Events(0)
		if len(a.Events) != len(b.Events) {
			return fmt.Errorf("%d vs %d events", len(a.Events), len(b.Events))
		}
		return nil
	})
}

func TestRestartedNodeReturnsToHealthy(t *testing.T) {
	c := newCluster(t, 3)
	victim := 2
	if c.agents[victim].store.IsLeader() {
		victim = 1
	}
	name := c.agents[victim].Name()
	c.crash(victim)
	eventually(t, "offline", func() error {
		for _, n := range c.running()[0].Nodes().Nodes {
			if n.Name == name && n.Health != api.Offline {
				return fmt.Errorf("%s", n.Health)
			}
		}
		return nil
	})
	c.start(victim)
	c.waitFormed(3)
	eventually(t, "back to healthy recorded", func() error {
		evs := c.running()[0].Events(0).Events
		for i := len(evs) - 1; i >= 0; i-- {
			if evs[i].Kind == raftstore.EventHealthChanged && evs[i].Node == name {
				if evs[i].To != api.Healthy {
					return fmt.Errorf("last health event is %s", evs[i].To)
				}
				return nil
			}
		}
		return fmt.Errorf("no health event")
	})
	for _, n := range c.agents[0].Nodes().Nodes {
		if n.LastHeartbeatSeconds < 0 || n.MemTotalBytes == 0 || n.UptimeSeconds == 0 {
			t.Errorf("node %s lacks heartbeat metrics: %+v", n.Name, n)
		}
	}
}

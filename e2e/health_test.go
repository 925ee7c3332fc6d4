package e2e

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// healthJSON is the health part of `nodes --json` (the documented keys).
type healthJSON struct {
	Name                 string  `json:"name"`
	Health               string  `json:"health"`
	HealthReason         string  `json:"health_reason"`
	LastHeartbeatSeconds float64 `json:"last_heartbeat_seconds"`
	RaftRole             string  `json:"raft_role"`
}

// eventJSON is one entry of `events --json`.
type eventJSON struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Node   string    `json:"node"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Detail string    `json:"detail"`
}

func (n *agentNode) health() ([]healthJSON, error) {
	var ns []healthJSON
	return ns, n.cliJSON(&ns, "nodes", "--json", "--data-dir", n.dir)
}

func (n *agentNode) events() ([]eventJSON, error) {
	var es []eventJSON
	return es, n.cliJSON(&es, "events", "--json", "--data-dir", n.dir)
}

// healthOf is how n sees node name now.
func (n *agentNode) healthOf(name string) (healthJSON, error) {
	ns, err := n.health()
	if err != nil {
		return healthJSON{}, err
	}
	for _, x := range ns {
		if x.Name == name {
			return x, nil
		}
	}
	return healthJSON{}, fmt.Errorf("%s does not list %s", n.name, name)
}

// healthSteps lists node's health_changed events after seq as "from>to".
func healthSteps(es []eventJSON, node string, after uint64) []string {
	var out []string
	for _, e := range es {
		if e.Seq > after && e.Kind == "health_changed" && e.Node == node {
			out = append(out, e.From+">"+e.To)
		}
	}
	return out
}

// startCluster is a new cluster (kernel mode, production timers), formed.
func startCluster(tb testing.TB, subnet string, names ...string) *cluster {
	tb.Helper()
	c := newCluster(tb, subnet, names...)
	c.form()
	return c
}

// form inits the first node, joins the others through it, starts them
// all and waits until the cluster formed.
func (c *cluster) form() {
	c.t.Helper()
	first := c.nodes[0]
	first.initCluster()
	first.start()
	for _, n := range c.nodes[1:] {
		n.join(first)
	}
	for _, n := range c.nodes[1:] {
		n.startNoWait()
	}
	voters := c.names(c.nodes)
	if len(voters) > 5 {
		voters = nil
	}
	c.eventually(2*time.Minute, "cluster forms", func() error { return c.formed(c.nodes, nil, voters) })
}

// TestPausedNodeIsDegradedNotOffline freezes a follower's process with
// SIGSTOP for 15 s (a VM pause, a long GC, a swap storm): the others must
// show it degraded, never offline, and healthy again once it continues,
// with exactly one event for each of the two transitions.
func TestPausedNodeIsDegradedNotOffline(t *testing.T) {
	t.Parallel()
	c := startCluster(t, "10.95.0.0/24", "a", "b", "c")
	leader := c.leader(c.nodes)
	victim := others(c.nodes, leader)[0]
	observers := others(c.nodes, victim)
	// Formation under load can flap a joining node's health; its return
	// to healthy is recorded moments after every node shows it healthy.
	// The history starts once every node's last health event is in.
	var es []eventJSON
	c.eventually(30*time.Second, "health events settled", func() error {
		var err error
		if es, err = leader.events(); err != nil {
			return err
		}
		last := map[string]string{}
		for _, e := range es {
			if e.Kind == "health_changed" {
				last[e.Node] = e.To
			}
		}
		for node, to := range last {
			if to != "healthy" {
				return fmt.Errorf("%s's last health event: to %s", node, to)
			}
		}
		return nil
	})
	var before uint64
	if len(es) > 0 {
		before = es[len(es)-1].Seq
	}
	// A node joined but not yet running is rightly degraded after 10 s;
	// under load the test's own joins take that long. Those events are
	// history: only what follows the pause is checked.
	if steps := healthSteps(es, victim.name, 0); len(steps) != 0 {
		t.Logf("health events for %s before the pause (formation): %v", victim.name, steps)
	}

	const pause = 15 * time.Second
	t.Logf("SIGSTOP %s (follower; leader %s) for %v", victim.name, leader.name, pause)
	if err := victim.current().Signal(syscall.SIGSTOP); err != nil {
		c.fatalf("SIGSTOP: %v", err)
	}
	stopped := time.Now()
	continued := false
	t.Cleanup(func() {
		if !continued {
			_ = victim.current().Signal(syscall.SIGCONT)
		}
	})
	// During the pause, each observer's view of the victim, in order of
	// change.
	seen := map[string][]string{}
	note := func(o *agentNode, h healthJSON) {
		if hs := seen[o.name]; len(hs) == 0 || hs[len(hs)-1] != h.Health {
			seen[o.name] = append(hs, h.Health)
			t.Logf("%5.1fs: %s sees %s %s (%s)", time.Since(stopped).Seconds(), o.name, victim.name, h.Health, h.HealthReason)
		}
		if h.Health == "offline" {
			c.fatalf("%s saw the paused %s offline %.1fs into the pause: %s", o.name, victim.name, time.Since(stopped).Seconds(), h.HealthReason)
		}
	}
	for time.Since(stopped) < pause {
		for _, o := range observers {
			h, err := o.healthOf(victim.name)
			if err != nil {
				c.fatalf("%v", err)
			}
			note(o, h)
		}
		time.Sleep(300 * time.Millisecond)
	}
	for _, o := range observers {
		if !slices.Contains(seen[o.name], "degraded") {
			c.fatalf("%s never saw the paused %s degraded: %v", o.name, victim.name, seen[o.name])
		}
	}

	if err := victim.current().Signal(syscall.SIGCONT); err != nil {
		c.fatalf("SIGCONT: %v", err)
	}
	continued = true
	resumed := time.Now()
	t.Logf("SIGCONT %s after %v", victim.name, resumed.Sub(stopped).Round(time.Millisecond))
	c.eventually(30*time.Second, "the others see the continued node healthy", func() error {
		for _, o := range observers {
			h, err := o.healthOf(victim.name)
			if err != nil {
				return err
			}
			note(o, h)
			if h.Health != "healthy" {
				return fmt.Errorf("%s sees %s %s (%s)", o.name, victim.name, h.Health, h.HealthReason)
			}
		}
		return nil
	})
	t.Logf("healthy everywhere %v after SIGCONT", time.Since(resumed).Round(time.Millisecond))

	// The history: one event down, one event up, the same on every node,
	// and nothing more arrives afterwards.
	want := []string{"healthy>degraded", "degraded>healthy"}
	check := func() error {
		for _, n := range c.nodes {
			es, err := n.events()
			if err != nil {
				return err
			}
			if got := healthSteps(es, victim.name, before); !slices.Equal(got, want) {
				return fmt.Errorf("%s: health events for %s: %v, want %v", n.name, victim.name, got, want)
			}
			for _, e := range es {
				if e.Seq > before && e.Kind == "health_changed" && e.Node != victim.name {
					return fmt.Errorf("%s: health event for another node: %+v", n.name, e)
				}
			}
		}
		return nil
	}
	c.eventually(30*time.Second, "one event per transition", check)
	time.Sleep(5 * time.Second)
	if err := check(); err != nil {
		c.fatalf("after settling: %v", err)
	}
	for _, o := range observers {
		t.Logf("%s saw %s: %s", o.name, victim.name, strings.Join(seen[o.name], " -> "))
	}
}

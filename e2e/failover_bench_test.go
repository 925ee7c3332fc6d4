package e2e

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
)

// failoverStops is how many leaders BenchmarkLeaderFailover stops each way.
const failoverStops = 10

// BenchmarkLeaderFailover stops the leader of a 3-node kernel-mode cluster
// (production timers) failoverStops times with kill -9, then as many times
// with SIGTERM, and times each from the signal until a write (a join token)
// issued through a survivor's local API at that moment is committed. The
// stopped node is restarted and the cluster formed again between stops.
// Reported: the median and the worst of each.
func BenchmarkLeaderFailover(b *testing.B) {
	var killed, termed []time.Duration
	for range b.N {
		b.StopTimer()
		c := startCluster(b, "10.91.0.0/24", "f1", "f2", "f3")
		for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
			for range failoverStops {
				took := stopLeaderAndWrite(c, sig)
				if sig == syscall.SIGKILL {
					killed = append(killed, took)
				} else {
					termed = append(termed, took)
				}
			}
		}
		for _, n := range c.nodes {
			n.kill()
		}
	}
	report := func(what string, took []time.Duration) {
		slices.Sort(took)
		b.Logf("%s: %v", what, took)
		b.ReportMetric(took[len(took)/2].Seconds(), what+"-median-s")
		b.ReportMetric(took[len(took)-1].Seconds(), what+"-max-s")
	}
	report("kill", killed)
	report("term", termed)
	b.ReportMetric(0, "ns/op")
}

// stopLeaderAndWrite signals the leader, writes through a survivor, and
// returns how long after the signal the write committed; then it brings
// the leader back and waits for the cluster to form.
func stopLeaderAndWrite(c *cluster, sig syscall.Signal) time.Duration {
	c.t.Helper()
	leader := c.leader(c.nodes)
	survivor := others(c.nodes, leader)[0]
	p := leader.current()
	client := api.NewClient(survivor.dir)

	t0 := time.Now()
	if err := p.Signal(sig); err != nil {
		c.fatalf("signal %v to %s: %v", sig, leader.name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	_, err := client.CreateToken(ctx, api.TokenRequest{TTL: "1m"})
	cancel()
	took := time.Since(t0)
	if err != nil {
		c.fatalf("write through %s after %v to the leader %s: %v", survivor.name, sig, leader.name, err)
	}
	c.t.Logf("%v: leader %s; write through %s committed after %v", sig, leader.name, survivor.name, took)

	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		c.fatalf("%s still runs 30 s after %v", leader.name, sig)
	}
	leader.mu.Lock()
	leader.proc = nil
	leader.mu.Unlock()
	restarted := time.Now()
	leader.start()
	fresh := map[string]time.Time{leader.name: restarted}
	c.eventually(2*time.Minute, fmt.Sprintf("%s back in the cluster", leader.name), func() error {
		return c.formed(c.nodes, fresh, c.names(c.nodes))
	})
	return took
}

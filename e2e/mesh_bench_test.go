package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
)

// BenchmarkKernelMeshFormation measures how long a kernel-mode cluster in
// namespaces takes to form: from starting the last node's `run` until every
// pair of nodes has a WireGuard handshake and every node's gossip sees all
// the others alive. Each iteration builds a fresh topology (init and joins
// are not timed) and reports the mean as formation-s. It polls the agents'
// local API in-process every 10 ms, so the figure is accurate to about that.
func BenchmarkKernelMeshFormation(b *testing.B) {
	for _, size := range []int{3, 5} {
		b.Run(fmt.Sprintf("nodes=%d", size), func(b *testing.B) {
			var total time.Duration
			for range b.N {
				b.StopTimer()
				total += formOnce(b, size)
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "formation-s")
		})
	}
}

// formOnce builds a cluster of size nodes, times its formation with the
// benchmark timer running, and stops its agents.
func formOnce(b *testing.B, size int) time.Duration {
	var names []string
	for i := range size {
		names = append(names, fmt.Sprintf("n%d", i+1))
	}
	c := newCluster(b, "10.97.0.0/24", names...)
	first, rest := c.nodes[0], c.nodes[1:]
	first.initCluster()
	first.start()
	for _, n := range rest {
		n.join(first)
	}
	defer func() {
		for _, n := range c.nodes {
			n.kill()
		}
	}()

	for _, n := range rest[:len(rest)-1] {
		n.startNoWait()
	}
	b.StartTimer()
	t0 := time.Now()
	rest[len(rest)-1].startNoWait()
	deadline := t0.Add(2 * time.Minute)
	for {
		err := formedAPI(c, size)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.StopTimer()
			c.fatalf("no formation after %v: %v", time.Since(t0), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := time.Since(t0)
	b.StopTimer()
	return d
}

// formedAPI is nil once every node has a handshake with every other and
// sees all of them alive (healthy) in gossip.
func formedAPI(c *cluster, size int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, n := range c.nodes {
		cl := api.NewClient(n.dir)
		st, err := cl.Status(ctx)
		if err != nil {
			return err
		}
		if len(st.Peers) != size-1 {
			return fmt.Errorf("%s has %d peers", n.name, len(st.Peers))
		}
		for _, p := range st.Peers {
			if p.LastHandshakeSeconds < 0 {
				return fmt.Errorf("%s: no handshake with %s", n.name, p.Name)
			}
		}
		ns, err := cl.Nodes(ctx)
		if err != nil {
			return err
		}
		if len(ns.Nodes) != size {
			return fmt.Errorf("%s knows %d nodes", n.name, len(ns.Nodes))
		}
		for _, x := range ns.Nodes {
			if x.Health != api.Healthy {
				return fmt.Errorf("%s sees %s %s", n.name, x.Name, x.Health)
			}
		}
	}
	return nil
}

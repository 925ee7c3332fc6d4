package agent

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runos/runos-agent/raftstore"
)

// BenchmarkCloudCatchUp10k: with the cloud down, the cluster makes 10,000
// changes (node updates, each carrying the node's record); the clock runs
// from starting the cloud again until its mirror has acknowledged them all.
func BenchmarkCloudCatchUp10k(b *testing.B) {
	const changes = 10000
	c := newCluster(b, 1)
	tc := startCloud(b)
	a := c.agents[0]
	id := connectCloud(b, tc, a, "bench")
	waitMirror(b, c, tc, id)
	var total time.Duration
	for range b.N {
		tc.stop()
		var wg sync.WaitGroup
		var failed atomic.Int64
		per := changes / 16
		for g := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range per {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					ep := []string{fmt.Sprintf("127.0.0.1:%d", 10000+g*per+i)}
					_, err := a.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpUpdateNode, UpdateNode: &raftstore.UpdateNodeCmd{NodeID: a.cfg.NodeID, Endpoints: ep}})
					cancel()
					if err != nil {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if failed.Load() > 0 {
			b.Fatalf("%d writes failed", failed.Load())
		}
		st, idx := a.store.State()
		pending := a.CloudStatus().Pending
		if pending < changes {
			b.Fatalf("only %d changes queued", pending)
		}
		last := st.Cloud.Changes[len(st.Cloud.Changes)-1].Index
		tc.start()
		// The clock starts when the session is up (the reconnect backoff
		// before it is jitter, not catch-up work).
		var t0 time.Time
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(2 * time.Millisecond) {
			if _, ok := tc.srv.ClusterConnected(id); ok {
				t0 = time.Now()
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("cluster did not reconnect")
			}
		}
		eventually(b, "cloud caught up", func() error {
			m, err := tc.srv.MirrorOf(id)
			if err != nil {
				return err
			}
			if m.Cluster.Cursor < last {
				return fmt.Errorf("cursor %d < %d (index %d)", m.Cluster.Cursor, last, idx)
			}
			return nil
		})
		took := time.Since(t0)
		total += took
		b.Logf("%d changes queued, caught up %v after the session came up", pending, took.Round(time.Millisecond))
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "catchup-s")
	b.ReportMetric(float64(changes*b.N)/total.Seconds(), "changes/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkCloudUplinkIdle5: a connected five-node cluster idles; the bytes
// its cloud session moves (TLS included, both directions reported) over the
// window (default 60 s, RUNOS_BENCH_CLOUD_WINDOW) are scaled to one node
// for one hour. Production link timers (health every 15 s, ping every 30 s).
func BenchmarkCloudUplinkIdle5(b *testing.B) {
	window := 60 * time.Second
	if v := os.Getenv("RUNOS_BENCH_CLOUD_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatal(err)
		}
		window = d
	}
	c := newCluster(b, 5)
	tc := startCloud(b)
	id := connectCloud(b, tc, c.agents[0], "bench")
	waitMirror(b, c, tc, id)
	sum := func() (sent, recv uint64) {
		for _, a := range c.running() {
			s := a.cloud.Status()
			sent += s.BytesSent
			recv += s.BytesReceived
		}
		return
	}
	var up, down float64
	for range b.N {
		s0, r0 := sum()
		time.Sleep(window)
		s1, r1 := sum()
		scale := float64(time.Hour) / float64(window) / 5
		up += float64(s1-s0) * scale
		down += float64(r1-r0) * scale
	}
	b.ReportMetric(up/float64(b.N)/1e3, "uplink-kB/node/h")
	b.ReportMetric(down/float64(b.N)/1e3, "downlink-kB/node/h")
	b.ReportMetric(0, "ns/op")
}

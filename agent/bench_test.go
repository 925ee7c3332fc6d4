package agent

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
)

// fullMesh reports whether every running node has a handshake with every
// other running node and gossip sees them all alive.
func (c *cluster) fullMesh() error {
	running := c.running()
	for _, a := range running {
		st, err := a.Status()
		if err != nil {
			return err
		}
		hs := 0
		for _, p := range st.Peers {
			if p.LastHandshakeSeconds >= 0 {
				hs++
			}
		}
		if hs < len(running)-1 {
			return fmt.Errorf("%s: %d handshakes", a.Name(), hs)
		}
		if n := a.ml.NumMembers(); n < len(running) {
			return fmt.Errorf("%s: gossip sees %d", a.Name(), n)
		}
	}
	return nil
}

// BenchmarkMeshFormation5: a five-node cluster cold-starts from its data
// dirs (a power cut); the clock runs from starting the last node until every
// pair has a WireGuard handshake and gossip sees all five alive.
func BenchmarkMeshFormation5(b *testing.B) {
	c := newCluster(b, 5)
	var total time.Duration
	for range b.N {
		for i := range c.agents {
			c.stop(i)
		}
		for i := range 4 {
			c.start(i)
		}
		t0 := time.Now()
		c.start(4)
		eventually(b, "full mesh", c.fullMesh)
		total += time.Since(t0)
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "formation-s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkLeaderFailover: the leader of three voters crashes (its socket
// is cut, then it stops: kill -9 as seen from the others); the clock runs
// until a write issued through a survivor at the crash is committed.
// Production Raft timers, so this is failover on demand. failoverKills
// crashes per op; the median and the worst are reported.
func BenchmarkLeaderFailover(b *testing.B) {
	c := newClusterTuned(b, 3, productionRaft())
	var took []time.Duration
	for range b.N {
		for range failoverKills {
			idx := slices.Index(c.agents, c.waitLeader())
			survivor := c.agents[(idx+1)%3]
			t0 := time.Now()
			wait := c.crashAsync(idx)
			took = append(took, timeWrite(b, survivor, t0))
			wait()
			c.start(idx)
			c.waitFormed(3)
			c.waitVoters(3)
		}
	}
	reportSpread(b, took, "failover")
}

// BenchmarkLeaderStop: the leader of three voters stops on purpose (Close,
// as on SIGTERM: it hands leadership over first); the clock runs until a
// write issued through a survivor at the stop is committed. Production
// Raft timers.
func BenchmarkLeaderStop(b *testing.B) {
	c := newClusterTuned(b, 3, productionRaft())
	var took []time.Duration
	for range b.N {
		for range failoverKills {
			idx := slices.Index(c.agents, c.waitLeader())
			survivor := c.agents[(idx+1)%3]
			a := c.agents[idx]
			c.dc.Agents[idx] = nil
			t0 := time.Now()
			stopped := make(chan struct{})
			go func() {
				defer close(stopped)
				a.Close()
			}()
			took = append(took, timeWrite(b, survivor, t0))
			<-stopped
			c.start(idx)
			c.waitFormed(3)
			c.waitVoters(3)
		}
	}
	reportSpread(b, took, "stop")
}

// failoverKills is how many leaders a failover benchmark stops per op.
const failoverKills = 10

// timeWrite commits a write through a and returns how long after t0.
func timeWrite(b *testing.B, a *Agent, t0 time.Time) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := a.CreateToken(ctx, api.TokenRequest{}); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}

// reportSpread reports the median and worst of took as <what>-median-s and
// <what>-max-s.
func reportSpread(b *testing.B, took []time.Duration, what string) {
	slices.Sort(took)
	b.Logf("%s: %v", what, took)
	b.ReportMetric(took[len(took)/2].Seconds(), what+"-median-s")
	b.ReportMetric(took[len(took)-1].Seconds(), what+"-max-s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkRaftWrites: small commands committed by three voters, from 1 and
// 64 concurrent clients, on the leader and forwarded from a follower.
//
// raft=production runs Raft with the production timers, so replication goes
// through the quiet transport (synchronous, no pipelining); raft=fast is the
// test timing with hashicorp/raft's plain pipelined transport.
func BenchmarkRaftWrites(b *testing.B) {
	for _, timing := range []string{"fast", "production"} {
		tuning := fastTuning
		if timing == "production" {
			tuning.RaftHeartbeat, tuning.RaftElection = 0, 0
		}
		b.Run("raft="+timing, func(b *testing.B) { benchRaftWrites(b, tuning) })
	}
}

func benchRaftWrites(b *testing.B, tuning Tuning) {
	c := newClusterTuned(b, 3, tuning)
	if q := c.waitLeader().raftTiming().QuietFresh > 0; q != (tuning.RaftHeartbeat == 0) {
		b.Fatalf("quiet Raft %v with this timing", q)
	}
	for _, via := range []string{"leader", "follower"} {
		for _, clients := range []int{1, 64} {
			b.Run(fmt.Sprintf("via=%s/clients=%d", via, clients), func(b *testing.B) {
				a := c.leader()
				if via == "follower" {
					a = c.follower()
				}
				const perClient = 200
				lat := make([]time.Duration, clients*perClient)
				var wg sync.WaitGroup
				b.ResetTimer()
				t0 := time.Now()
				for w := range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range perClient {
							s := time.Now()
							res, err := a.store.Apply(context.Background(), &raftstore.Command{
								Op: raftstore.OpUpdateNode, UpdateNode: &raftstore.UpdateNodeCmd{NodeID: a.cfg.NodeID, Version: Version},
							})
							if err == nil {
								err = res.Error()
							}
							if err != nil {
								b.Error(err)
								return
							}
							lat[w*perClient+i] = time.Since(s)
						}
					}()
				}
				wg.Wait()
				elapsed := time.Since(t0)
				slices.Sort(lat)
				b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "writes/s")
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

// BenchmarkFollowerApplyLag: with production Raft timers (the quiet
// transport, CommitTimeout 250 ms), how long after a write commits on the
// leader a follower's state shows it.
func BenchmarkFollowerApplyLag(b *testing.B) {
	tuning := fastTuning
	tuning.RaftHeartbeat, tuning.RaftElection = 0, 0
	c := newClusterTuned(b, 3, tuning)
	l, f := c.leader(), c.follower()
	var total, worst time.Duration
	const writes = 10
	for range b.N {
		for range writes {
			if _, err := l.store.Apply(context.Background(), &raftstore.Command{
				Op: raftstore.OpUpdateNode, UpdateNode: &raftstore.UpdateNodeCmd{NodeID: l.cfg.NodeID, Version: Version},
			}); err != nil {
				b.Fatal(err)
			}
			committed := time.Now()
			want := l.store.Status().AppliedIndex
			for f.store.Status().AppliedIndex < want {
				time.Sleep(time.Millisecond)
			}
			lag := time.Since(committed)
			total += lag
			worst = max(worst, lag)
			time.Sleep(300 * time.Millisecond) // idle again: the next write is the last of its burst
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N*writes), "mean-lag-ms")
	b.ReportMetric(float64(worst.Milliseconds()), "max-lag-ms")
	b.ReportMetric(0, "ns/op")
}

package agent

import (
	"bytes"
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

// BenchmarkWrites: small writes committed by three voters, from 1 and 64
// concurrent clients, on the leader and through a follower, runos-agent
// (production Raft timers) and a 3-member Debian etcd on loopback side by
// side in one run, the order alternating from case to case.
//
// What each path includes (see README "Benchmarks"): an agent write is
// Store.Apply in the agent's process, as the local API, the UI and joins
// call it; through a follower it is forwarded to the leader over the node
// API (HTTPS with mutual TLS, batched), and Raft replicates over mutual
// TLS, both inside userspace WireGuard (wireguard-go with gVisor's
// netstack) between the three in-process agents. etcd is written two ways:
// system=etcd is its gRPC API (KV/Put over one HTTP/2 connection, as its
// own client does), system=etcd-json a POST /v3/kv/put to its JSON gateway
// over HTTP/1.1 keep-alive, which etcd turns into a gRPC call to itself.
// etcd members and clients talk plain HTTP on loopback. The ratios are
// agent/etcd(gRPC), and writes-ratio-vs-json agent/etcd(JSON).
func BenchmarkWrites(b *testing.B) {
	etcd := startEtcd(b, 3)
	tuning := fastTuning
	tuning.RaftHeartbeat, tuning.RaftElection = 0, 0 // production Raft timers
	c := newClusterTuned(b, 3, tuning)
	if c.waitLeader().raftTiming().QuietFresh == 0 {
		b.Fatal("production timing without the quiet transport")
	}
	value := bytes.Repeat([]byte("v"), 128) // about an agent command's size
	k := 0
	for _, via := range []string{"leader", "follower"} {
		for _, clients := range []int{1, 64} {
			perClient := 200
			if clients == 1 {
				perClient = 1000
			}
			// Each side's writer, bound to its target (the leader, or a
			// follower of it) when its run starts.
			etcdWriter := func(put func(context.Context, int, string, []byte) error) func(b *testing.B) func(int) error {
				return func(b *testing.B) func(int) error {
					member, err := etcd.leader()
					if err != nil {
						b.Fatal(err)
					}
					if via == "follower" {
						member = (member + 1) % 3
					}
					return func(w int) error {
						return put(context.Background(), member, fmt.Sprintf("bench/%d", w), value)
					}
				}
			}
			writers := map[string]func(b *testing.B) func(w int) error{
				"etcd":      etcdWriter(etcd.put),
				"etcd-json": etcdWriter(etcd.putJSON),
				"agent": func(*testing.B) func(int) error {
					a := c.leader()
					if via == "follower" {
						a = c.follower()
					}
					return func(int) error {
						res, err := a.store.Apply(context.Background(), &raftstore.Command{
							Op: raftstore.OpUpdateNode, UpdateNode: &raftstore.UpdateNodeCmd{NodeID: a.cfg.NodeID, Version: Version},
						})
						if err == nil {
							err = res.Error()
						}
						return err
					}
				},
			}
			order := []string{"etcd", "agent", "etcd-json"}
			if k%2 == 1 {
				order = []string{"etcd-json", "agent", "etcd"}
			}
			k++
			got := map[string]writeStats{}
			for _, system := range order {
				b.Run(fmt.Sprintf("via=%s/clients=%d/system=%s", via, clients, system), func(b *testing.B) {
					cpu := selfCPU
					if system != "agent" {
						cpu = func() time.Duration { return selfCPU() + etcd.cpu() }
					}
					st := runWriters(b, clients, perClient, cpu, writers[system](b))
					got[system] = st
					st.report(b)
				})
			}
			b.Run(fmt.Sprintf("via=%s/clients=%d/agent-vs-etcd", via, clients), func(b *testing.B) {
				a, e, j := got["agent"], got["etcd"], got["etcd-json"]
				if a.perSec == 0 || e.perSec == 0 || j.perSec == 0 {
					b.Skip("a side failed")
				}
				b.ReportMetric(a.perSec/e.perSec, "writes-ratio")
				b.ReportMetric(float64(a.p50)/float64(e.p50), "p50-ratio")
				b.ReportMetric(float64(a.p99)/float64(e.p99), "p99-ratio")
				b.ReportMetric(float64(a.cpuPerWrite)/float64(e.cpuPerWrite), "cpu-ratio")
				b.ReportMetric(a.perSec/j.perSec, "writes-ratio-vs-json")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

type writeStats struct {
	perSec   float64
	p50, p99 time.Duration
	// cpuPerWrite is the CPU time of the run (this process: the agents or
	// etcd's clients, plus the etcd members) per write.
	cpuPerWrite time.Duration
}

func (st writeStats) report(b *testing.B) {
	b.ReportMetric(st.perSec, "writes/s")
	b.ReportMetric(float64(st.p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(st.p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(st.cpuPerWrite.Nanoseconds())/1000, "cpu-us/write")
	b.ReportMetric(0, "ns/op")
}

// runWriters runs clients goroutines that each call write perClient times
// (w is the goroutine's number) and measures every call.
func runWriters(b *testing.B, clients, perClient int, cpu func() time.Duration, write func(w int) error) writeStats {
	lat := make([]time.Duration, clients*perClient)
	var wg sync.WaitGroup
	b.ResetTimer()
	cpu0 := cpu()
	t0 := time.Now()
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perClient {
				s := time.Now()
				if err := write(w); err != nil {
					b.Error(err)
					return
				}
				lat[w*perClient+i] = time.Since(s)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	used := cpu() - cpu0
	b.StopTimer()
	if b.Failed() {
		return writeStats{}
	}
	slices.Sort(lat)
	return writeStats{perSec: float64(len(lat)) / elapsed.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100],
		cpuPerWrite: used / time.Duration(len(lat))}
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

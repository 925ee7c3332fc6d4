package raftstore

import (
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// raftCluster is n hashicorp/raft servers over stream layers, with a
// counting FSM: the transport is what differs between runs.
type raftCluster struct {
	rafts  []*raft.Raft
	fsms   []*countFSM
	logs   []*logStore
	leader *raft.Raft
}

// startRaftCluster starts n voters over the stream layers newStream makes
// and waits for a leader. disk keeps the logs in the WAL (an fsync per
// batch, as in production) rather than in memory.
func startRaftCluster(tb testing.TB, n int, newStream func(i int) *StreamLayer, disk bool) *raftCluster {
	tb.Helper()
	rc := &raftCluster{}
	var (
		servers []raft.Server
		transes []*raft.NetworkTransport
	)
	for i := range n {
		trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: newStream(i), MaxPool: 3, Timeout: 5 * time.Second, Logger: hclog.NewNullLogger(),
		})
		transes = append(transes, trans)
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(fmt.Sprintf("node-%d", i)), Address: trans.LocalAddr()})
	}
	for i := range n {
		conf := raft.DefaultConfig()
		conf.LocalID = servers[i].ID
		// Long enough that a loaded machine (benchmarks share it) does
		// not depose the leader mid-run.
		conf.HeartbeatTimeout = time.Second
		conf.ElectionTimeout = time.Second
		conf.LeaderLeaseTimeout = 500 * time.Millisecond
		conf.CommitTimeout = 5 * time.Millisecond
		conf.Logger = hclog.NewNullLogger()
		var logs raft.LogStore
		var stable raft.StableStore
		if disk {
			l, err := openLogStore(filepath.Join(tb.TempDir(), logDir), discard)
			if err != nil {
				tb.Fatal(err)
			}
			rc.logs = append(rc.logs, l)
			logs, stable = l, l
		} else {
			mem := raft.NewInmemStore()
			logs, stable = mem, mem
		}
		fsm := &countFSM{}
		r, err := raft.NewRaft(conf, fsm, logs, stable, raft.NewInmemSnapshotStore(), transes[i])
		if err != nil {
			tb.Fatal(err)
		}
		rc.rafts = append(rc.rafts, r)
		rc.fsms = append(rc.fsms, fsm)
	}
	if err := rc.rafts[0].BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		tb.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for rc.leader == nil {
		if time.Now().After(deadline) {
			tb.Fatal("no leader elected")
		}
		time.Sleep(10 * time.Millisecond)
		for _, r := range rc.rafts {
			if r.State() == raft.Leader {
				rc.leader = r
			}
		}
	}
	return rc
}

func (rc *raftCluster) close(tb testing.TB) {
	for _, r := range rc.rafts {
		if err := r.Shutdown().Error(); err != nil {
			tb.Error(err)
		}
	}
	for _, l := range rc.logs {
		l.Close()
	}
}

// BenchmarkRaftTransport: small commands committed by three voters from 1
// and 64 concurrent clients, over the stream layer with plain TCP (how Raft
// ran before issue 12) and with mutual TLS 1.3, side by side in one run.
// store=disk keeps the logs in segment files as production does (an fsync per
// batch dominates); store=mem keeps them in memory, leaving the transport's
// own cost in view.
func BenchmarkRaftTransport(b *testing.B) {
	for _, store := range []string{"disk", "mem"} {
		for _, transport := range []string{"plain", "mtls"} {
			b.Run("store="+store+"/transport="+transport, func(b *testing.B) {
				p := newTestPKI(b)
				rc := startRaftCluster(b, 3, func(i int) *StreamLayer {
					if transport == "plain" {
						return newTestStreamLayerTLS(b, nil, nil)
					}
					srv, cli, _ := p.node(b, fmt.Sprintf("node-%d", i), true)
					return newTestStreamLayerTLS(b, srv, cli)
				}, store == "disk")
				defer rc.close(b)
				for _, clients := range []int{1, 64} {
					b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
						perClient := 200
						if store == "mem" {
							perClient = 2000 // fast enough that 200 would measure noise
						}
						benchApply(b, rc.leader, clients, perClient)
					})
				}
			})
		}
	}
}

func benchApply(b *testing.B, r *raft.Raft, clients, perClient int) {
	payload := make([]byte, 128)
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
				if err := r.Apply(payload, 10*time.Second).Error(); err != nil {
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
}

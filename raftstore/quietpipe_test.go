package raftstore

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// quietCluster is three hashicorp/raft voters over quiet transports on
// loopback TCP, with the test standing in for the health plane: every
// beatEvery each node hears every other node's term and leadership.
type quietCluster struct {
	rafts  []*raft.Raft
	fsms   []*countFSM
	quiets []*quietTransport
	ids    []raft.ServerID
	logs   *logRecorder
}

// logRecorder keeps the lines Raft logged at warn or above.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Enabled(_ context.Context, lvl slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		l.mu.Lock()
		l.lines = append(l.lines, r.Message)
		l.mu.Unlock()
	}
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) warnings() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func startQuietCluster(t *testing.T) *quietCluster {
	t.Helper()
	const (
		n         = 3
		beatEvery = 100 * time.Millisecond
		timeout   = time.Second // Raft's heartbeat and election: well above beatEvery
	)
	qc := &quietCluster{logs: &logRecorder{}}
	closing := new(atomic.Bool)
	hlog := newHCLog(slog.New(qc.logs), closing)
	var servers []raft.Server
	var transes []*raft.NetworkTransport
	for i := range n {
		trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: newTestStreamLayer(t), MaxPool: 3, Timeout: 5 * time.Second, Logger: hlog,
		})
		transes = append(transes, trans)
		qc.quiets = append(qc.quiets, newQuietTransport(trans, timeout))
		qc.ids = append(qc.ids, raft.ServerID(fmt.Sprintf("node-%d", i)))
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: qc.ids[i], Address: trans.LocalAddr()})
	}
	for i := range n {
		conf := raft.DefaultConfig()
		conf.LocalID = qc.ids[i]
		conf.HeartbeatTimeout, conf.ElectionTimeout = timeout, timeout
		conf.LeaderLeaseTimeout = timeout / 2
		conf.CommitTimeout = 50 * time.Millisecond
		conf.Logger = hlog
		fsm := &countFSM{}
		mem := raft.NewInmemStore()
		r, err := raft.NewRaft(conf, fsm, mem, mem, raft.NewInmemSnapshotStore(), qc.quiets[i])
		if err != nil {
			t.Fatal(err)
		}
		qc.rafts = append(qc.rafts, r)
		qc.fsms = append(qc.fsms, fsm)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(beatEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				qc.beat()
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		closing.Store(true)
		for _, r := range qc.rafts {
			r.Shutdown().Error()
		}
		for _, tr := range transes {
			tr.Close()
		}
	})
	if err := qc.rafts[0].BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a leader", func() bool { return qc.leader() != nil })
	return qc
}

// beat is one round of health heartbeats, taken in as Store.ObserveBeat
// takes them.
func (qc *quietCluster) beat() {
	for i, r := range qc.rafts {
		cur := r.CurrentTerm()
		la, lid := r.LeaderWithID()
		for j, peer := range qc.rafts {
			if i == j {
				continue
			}
			term, leads := peer.CurrentTerm(), peer.State() == raft.Leader
			_, follows := peer.LeaderWithID()
			var addr raft.ServerAddress
			if leads && term == cur && lid == qc.ids[j] {
				addr = la
			}
			qc.quiets[i].observeBeat(qc.ids[j], addr, term, cur, follows == "")
		}
	}
}

func (qc *quietCluster) leader() *raft.Raft {
	for _, r := range qc.rafts {
		if r.State() == raft.Leader {
			return r
		}
	}
	return nil
}

func (qc *quietCluster) leaderQuiet() *quietTransport {
	for i, r := range qc.rafts {
		if r.State() == raft.Leader {
			return qc.quiets[i]
		}
	}
	return nil
}

// idle reports whether no follower of the leader is pipelined to.
func (q *quietTransport) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, p := range q.peers {
		if p.busy {
			return false
		}
	}
	return true
}

func (q *quietTransport) pipeStats() (pipelines, pipelined uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pipelines, q.pipelined
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // a hung test's safety net
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Under a burst of writes the leader pipelines to its followers; once
// they are caught up it replicates synchronously again and the wire goes
// quiet: no entry-less appends while idle, and a lone write afterwards
// opens no pipeline connection. Every write is applied everywhere, and
// ending a pipeline is not reported as an error.
func TestQuietPipelineWhileBusyQuietWhenIdle(t *testing.T) {
	qc := startQuietCluster(t)
	l, q := qc.leader(), qc.leaderQuiet()
	term := l.CurrentTerm()

	const writers, each = 32, 50
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Go(func() {
			for range each {
				if err := l.Apply([]byte("x"), 5*time.Second).Error(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("write: %v", err)
	}
	opened, pipelined := q.pipeStats()
	t.Logf("burst of %d writes: %d pipelines opened, %d appends pipelined", writers*each, opened, pipelined)
	if opened == 0 || pipelined == 0 {
		t.Fatal("a burst of writes was not pipelined")
	}
	want := qc.fsms[0].n.Load()
	waitFor(t, "every write applied on every node", func() bool {
		for _, f := range qc.fsms {
			if f.n.Load() != want || want < writers*each {
				return false
			}
		}
		return true
	})

	waitFor(t, "the followers idle again", q.idle)
	sup0, sent0 := q.stats()
	time.Sleep(time.Second) // twenty commit timeouts
	sup1, sent1 := q.stats()
	t.Logf("idle after the burst: %d empty appends answered locally, %d sent", sup1-sup0, sent1-sent0)
	if sent1 != sent0 {
		t.Errorf("%d empty appends went over the wire while idle after a burst", sent1-sent0)
	}
	if sup1 == sup0 {
		t.Error("no idle repeats answered locally after the burst")
	}

	// A lone write: one synchronous append and a commit refresh, no
	// pipeline connection.
	opened0, _ := q.pipeStats()
	if err := l.Apply([]byte("x"), 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	want = qc.fsms[0].n.Load()
	waitFor(t, "the lone write applied everywhere", func() bool {
		for _, f := range qc.fsms {
			if f.n.Load() != want {
				return false
			}
		}
		return true
	})
	waitFor(t, "the followers idle again", q.idle)
	if opened1, _ := q.pipeStats(); opened1 != opened0 {
		t.Errorf("a lone write opened %d pipeline connections", opened1-opened0)
	}
	for _, line := range qc.logs.warnings() {
		if strings.Contains(line, "pipeline") {
			t.Errorf("logged at warn or above: %s", line)
		}
	}
	for _, r := range qc.rafts {
		if r.CurrentTerm() != term {
			t.Errorf("term %d, was %d: an election happened", r.CurrentTerm(), term)
		}
	}
}

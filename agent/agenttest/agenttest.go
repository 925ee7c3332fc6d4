// Package agenttest runs whole runos-agent clusters inside one test process,
// as wireguard-go's bindtest does for binds. Every node is a real agent
// (userspace WireGuard, gossip, Raft, node API, local API) created the way
// `runos-agent dev` creates them: node 0 runs init, the others join it with
// a token through its join endpoint. Each node's underlay UDP socket is a
// host on a natlab network, so a test stops, restarts, crashes and
// partitions nodes by dropping datagrams, without root or a firewall.
//
// Node i's underlay address is 127.0.0.(10+i): what the agents do over real
// sockets (the join endpoint on the advertised address, UIs, metrics, the
// cloud link) stays on this machine's loopback.
//
// A Cluster is driven from the test's goroutine; cleanup (t.Cleanup) stops
// every node, whether the test passed or not.
package agenttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/runos/runos-agent/agent"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/nat/bindtest"
)

// safety bounds a harness step that waits for the cluster (start, join,
// Eventually); it catches a hung test, it measures nothing.
const safety = 2 * time.Minute

// FastTuning is agent.FastTuning: timers short enough that a test sees a
// crash go degraded then offline in seconds.
func FastTuning() agent.Tuning { return agent.FastTuning() }

// LeakOptions are the goroutines goleak must ignore in a test package that
// runs agents (goleak.VerifyTestMain(m, agenttest.LeakOptions()...)):
// process-wide ones that belong to no agent.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		// hashicorp/go-metrics runs a process-wide sink goroutine.
		goleak.IgnoreTopFunction("github.com/hashicorp/go-metrics.(*InmemSignal).run"),
		goleak.IgnoreTopFunction("github.com/armon/go-metrics.(*InmemSignal).run"),
		goleak.IgnoreAnyFunction("github.com/hashicorp/go-metrics.NewInmemSink"),
		// memberlist's Shutdown does not wait for a probe in flight: it
		// ends by itself when its ack timer fires, which memberlist scales
		// up to 9x the probe interval after the failed probes of a test
		// that stopped nodes — longer than goleak waits.
		goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	}
}

// Logger discards, unless RUNOS_TEST_LOG is set: then debug to stderr. It
// never writes through t.Log, as agents may log after a test returns.
func Logger(testing.TB) *slog.Logger {
	if os.Getenv("RUNOS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Eventually polls cond until it returns nil, and fails the test with the
// last error if that does not happen within a generous safety deadline (a
// hung test, not a performance assertion).
func Eventually(t testing.TB, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(safety)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

// Option changes how Start builds a cluster.
type Option func(*options)

type options struct {
	tuning   agent.Tuning
	ui       bool
	metrics  bool
	loopback bool
}

// WithTuning runs the nodes with t instead of FastTuning.
func WithTuning(t agent.Tuning) Option { return func(o *options) { o.tuning = t } }

// WithUI serves every node's web UI on a free 127.0.0.1 port (Agent.UIURL).
func WithUI() Option { return func(o *options) { o.ui = true } }

// WithMetrics serves every node's /metrics on a free 127.0.0.1 port
// (Agent.MetricsURL).
func WithMetrics() Option { return func(o *options) { o.metrics = true } }

// WithLoopbackSockets runs the nodes on real UDP sockets on loopback
// instead of natlab. Partition, Isolate and Heal are then unavailable; Crash
// still works (the socket is cut before the node closes). For tests that
// carry heavy traffic next to a browser under the race detector: natlab's
// in-process delivery synchronises every datagram between the sender's and
// the receiver's goroutines, which the race detector makes costly enough to
// starve Raft's lease at test timings.
func WithLoopbackSockets() Option { return func(o *options) { o.loopback = true } }

// Cluster is an in-process cluster whose nodes can be stopped, restarted
// from their data dirs, crashed, partitioned and healed.
type Cluster struct {
	t   testing.TB
	dc  *agent.DevCluster
	net *network // nil with WithLoopbackSockets
	// sockets are the nodes' real sockets of their current start (only
	// with WithLoopbackSockets); driven from the test goroutine.
	sockets map[int]*bindtest.Cuttable
}

// Start creates an n-node cluster in a temporary dir and waits until it is
// formed: every node sees n healthy nodes and a WireGuard handshake with
// every peer, there is one leader, and the voters are chosen.
func Start(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	o := options{tuning: FastTuning()}
	for _, opt := range opts {
		opt(&o)
	}
	c := &Cluster{t: t, net: newNetwork()}
	if o.loopback {
		c.net, c.sockets = nil, map[int]*bindtest.Cuttable{}
	}
	do := agent.DevOptions{Nodes: n, Dir: t.TempDir(), Tuning: o.tuning, Node: c.place}
	if o.ui {
		do.UIListen = "127.0.0.1:0"
	}
	if o.metrics {
		do.MetricsListen = "127.0.0.1:0"
	}
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	dc, err := agent.StartDev(ctx, do, Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	c.dc = dc
	t.Cleanup(func() { dc.Close() })
	c.WaitFormed(n)
	c.WaitVoters(n)
	return c
}

// place puts node i on its natlab host (or a real loopback socket); a new
// Bind for every start.
func (c *Cluster) place(i int) agent.DevNode {
	if c.net == nil {
		b := bindtest.NewCuttable(conn.NewStdNetBind())
		c.sockets[i] = b
		return agent.DevNode{Addr: addr(i), Deps: agent.Deps{Underlay: b}}
	}
	return agent.DevNode{Addr: addr(i), Deps: agent.Deps{Underlay: c.net.host(i).Bind()}}
}

func (c *Cluster) needNatlab(what string) {
	if c.net == nil {
		c.t.Fatalf("agenttest: %s needs natlab (not WithLoopbackSockets)", what)
	}
}

// Len is the number of nodes the cluster was given, running or not.
func (c *Cluster) Len() int { return len(c.dc.Dirs) }

// Agent is node i, or nil while it is stopped.
func (c *Cluster) Agent(i int) *agent.Agent { return c.dc.Agents[i] }

// Running lists the running nodes in index order.
func (c *Cluster) Running() []*agent.Agent {
	var out []*agent.Agent
	for _, a := range c.dc.Agents {
		if a != nil {
			out = append(out, a)
		}
	}
	return out
}

// Index is a's node index, or -1.
func (c *Cluster) Index(a *agent.Agent) int {
	for i, x := range c.dc.Agents {
		if x != nil && x == a {
			return i
		}
	}
	return -1
}

// Dirs are the nodes' data dirs (each one's local API socket is there).
func (c *Cluster) Dirs() []string { return append([]string(nil), c.dc.Dirs...) }

// AdminPassword is the UI's admin password init printed.
func (c *Cluster) AdminPassword() string { return c.dc.AdminPassword }

// Leader is a running node that believes it leads, or nil. Behind a
// partition an old leader may still believe so until its lease runs out.
func (c *Cluster) Leader() *agent.Agent {
	for _, a := range c.Running() {
		if a.Store().IsLeader() {
			return a
		}
	}
	return nil
}

// Follower is a running node that does not lead, or nil.
func (c *Cluster) Follower() *agent.Agent {
	for _, a := range c.Running() {
		if !a.Store().IsLeader() {
			return a
		}
	}
	return nil
}

// Stop stops node i cleanly: the others hear its goodbye.
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	if err := c.dc.StopNode(i); err != nil {
		c.t.Logf("stop node%d: %v", i, err)
	}
}

// Crash stops node i as kill -9 would: it is cut off first, so nothing it
// sends while closing (its goodbye) arrives, and the others must find out
// from heartbeat ages and gossip. It stays cut off until Restart.
func (c *Cluster) Crash(i int) {
	c.t.Helper()
	if c.net == nil {
		c.sockets[i].Cut()
	} else {
		c.net.setCut(i, true)
	}
	c.Stop(i)
}

// Restart starts node i again from its data dir (stopping it cleanly first
// if it runs), reconnected if it had crashed.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.Stop(i)
	if c.net != nil {
		c.net.setCut(i, false)
	}
	if _, err := c.dc.StartNode(context.Background(), i); err != nil {
		c.t.Fatalf("restart node%d: %v", i, err)
	}
}

// Partition cuts nodes off from all others: datagrams between them still
// flow, datagrams across the cut are dropped. Each call makes a new side.
func (c *Cluster) Partition(nodes ...int) {
	c.t.Helper()
	c.needNatlab("Partition")
	c.net.partition(nodes)
}

// Isolate cuts node i off from every other node.
func (c *Cluster) Isolate(i int) { c.Partition(i) }

// CutLink drops every datagram between nodes i and j, both ways; each
// still reaches the others (one node that cannot reach another while the
// rest can).
func (c *Cluster) CutLink(i, j int) {
	c.t.Helper()
	c.needNatlab("CutLink")
	c.net.cutLink(i, j)
}

// CutOneWay drops every datagram node i sends to node j, while j's still
// reach i: an asymmetric partition (a firewall rule in one direction).
func (c *Cluster) CutOneWay(i, j int) {
	c.t.Helper()
	c.needNatlab("CutOneWay")
	c.net.cutOneWay(i, j)
}

// Heal removes every partition and cut link. Crashed nodes stay down.
func (c *Cluster) Heal() {
	c.t.Helper()
	c.needNatlab("Heal")
	c.net.heal()
}

// Join adds a node: a fresh data dir joined through a running member with a
// token, as `runos-agent join` does, then started. It returns its index
// once the node is in the cluster state.
func (c *Cluster) Join() int {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	i, err := c.dc.AddNode(ctx, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return i
}

// WaitFormed waits until every running node sees n nodes (the running ones
// healthy) and a WireGuard handshake with every running peer, and there is
// one leader.
func (c *Cluster) WaitFormed(n int) {
	c.t.Helper()
	running := c.Running()
	isRunning := map[string]bool{}
	for _, a := range running {
		isRunning[a.Name()] = true
	}
	Eventually(c.t, "cluster formed", func() error {
		leaders := 0
		for _, a := range running {
			if a.Store().IsLeader() {
				leaders++
			}
			nodes := a.Nodes().Nodes
			if len(nodes) != n {
				return fmt.Errorf("%s sees %d nodes, want %d", a.Name(), len(nodes), n)
			}
			for _, x := range nodes {
				if x.Health != api.Healthy && isRunning[x.Name] {
					return fmt.Errorf("%s sees %s %s", a.Name(), x.Name, x.Health)
				}
			}
			st, err := a.Status()
			if err != nil {
				return err
			}
			for _, p := range st.Peers {
				if isRunning[p.Name] && p.LastHandshakeSeconds < 0 {
					return fmt.Errorf("%s has no handshake with %s", a.Name(), p.Name)
				}
			}
		}
		if leaders != 1 {
			return fmt.Errorf("%d leaders", leaders)
		}
		return nil
	})
}

// WaitVoters waits until the leader has chosen the voter set for n live
// nodes (n, odd, at most 5) and every running node has that configuration,
// so the change is committed, not only proposed: a partition made right
// after leaves a majority of voters that can elect.
func (c *Cluster) WaitVoters(n int) {
	c.t.Helper()
	want := min(n, 5)
	if want%2 == 0 {
		want--
	}
	Eventually(c.t, "voters chosen", func() error {
		l := c.Leader()
		if l == nil {
			return errors.New("no leader")
		}
		voters := l.Store().Status().Voters
		if len(voters) != want {
			return fmt.Errorf("%d voters, want %d", len(voters), want)
		}
		for _, a := range c.Running() {
			if got := a.Store().Status().Voters; !slices.Equal(got, voters) {
				return fmt.Errorf("%s has voters %v, the leader %v", a.Name(), got, voters)
			}
		}
		return nil
	})
}

// AccessPort is node i's wg1 UDP port on 127.0.0.1 (each node has its own).
func (c *Cluster) AccessPort(i int) int { return c.dc.AccessPort(i) }

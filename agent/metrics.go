package agent

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
)

// startMetrics serves Prometheus metrics at /metrics when MetricsListen is
// set. Off by default: it exposes cluster topology.
func (a *Agent) startMetrics() error {
	if a.metricsListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.metricsListen)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	a.metricsURL = "http://" + ln.Addr().String() + "/metrics"
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.metricsHandler())
	// Go's profiler on the same opt-in listener: how the footprint numbers
	// in the README were investigated, and what an operator sends us.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	a.serve(ln, mux, "metrics")
	a.log.Info("metrics listening", "url", a.metricsURL)
	return nil
}

// MetricsURL is where metrics are served, or "" when off.
func (a *Agent) MetricsURL() string { return a.metricsURL }

// metricsHandler builds this agent's own registry (never the process-wide
// default one: tests run many agents in one process) and serves it. Every
// gauge is read from the agent's live state at scrape time; only the commit
// latency histogram is fed as writes happen.
func (a *Agent) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	commit := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "runos_raft_commit_seconds",
		Help: "Time from submitting a write on the leader until it is committed and applied (observed on the leader only).",
		// 1 ms .. ~8 s
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	a.store.ObserveApply(func(d time.Duration) { commit.Observe(d.Seconds()) })
	reg.MustRegister(
		commit,
		&agentCollector{a: a},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPromLogger{a}})
}

type slogPromLogger struct{ a *Agent }

func (l slogPromLogger) Println(v ...any) { l.a.log.Warn("metrics", "err", fmt.Sprint(v...)) }

// Metric descriptors. Names are documented in README.md.
var (
	descInfo = prometheus.NewDesc("runos_agent_info",
		"Constant 1, labelled with this node's name, cluster and agent version.",
		[]string{"node", "cluster", "version"}, nil)
	descRaftState = prometheus.NewDesc("runos_raft_state",
		"1 for this node's current Raft state, 0 for the others.", []string{"state"}, nil)
	descRaftTerm = prometheus.NewDesc("runos_raft_term",
		"Current Raft term.", nil, nil)
	descRaftApplied = prometheus.NewDesc("runos_raft_applied_index",
		"Last Raft log index applied to this node's state.", nil, nil)
	descRaftCommit = prometheus.NewDesc("runos_raft_commit_index",
		"Last Raft log index this node knows to be committed.", nil, nil)
	descRaftServers = prometheus.NewDesc("runos_raft_servers",
		"Raft servers in the configuration by suffrage.", []string{"suffrage"}, nil)
	descRaftIdle = prometheus.NewDesc("runos_raft_idle_appends_total",
		"Entry-less AppendEntries this leader answered locally from followers' heartbeats, and those it sent.", []string{"outcome"}, nil)
	descGossipMembers = prometheus.NewDesc("runos_gossip_members",
		"Cluster nodes (this one included) by gossip state as this node's failure detector sees them.", []string{"state"}, nil)
	descWGPeers = prometheus.NewDesc("runos_wireguard_peers",
		"WireGuard peers by path: direct (a handshake in the last 3 minutes), none (no live session).", []string{"path"}, nil)
	descPeerRx = prometheus.NewDesc("runos_wireguard_peer_receive_bytes_total",
		"Bytes received from a WireGuard peer (overlay payload, as the device counts it).", []string{"peer"}, nil)
	descPeerTx = prometheus.NewDesc("runos_wireguard_peer_transmit_bytes_total",
		"Bytes sent to a WireGuard peer (overlay payload, as the device counts it).", []string{"peer"}, nil)
	descPeerHandshake = prometheus.NewDesc("runos_wireguard_peer_last_handshake_seconds",
		"Seconds since the last WireGuard handshake with a peer (absent if none yet).", []string{"peer"}, nil)
	descBeatAge = prometheus.NewDesc("runos_node_heartbeat_age_seconds",
		"Seconds since this node last received the node's heartbeat (absent if none yet).", []string{"node"}, nil)
	descNodeHealth = prometheus.NewDesc("runos_node_health",
		"1 for the node's current health as this node classifies it, 0 for the others.", []string{"node", "health"}, nil)
	descHealthCounts = prometheus.NewDesc("runos_nodes",
		"Nodes of the cluster (this one included) by health as this node classifies them.", []string{"health"}, nil)
	descEvents = prometheus.NewDesc("runos_events_total",
		"Cluster events this node has seen in the Raft event log since it started (the retained history counts at start), by kind.", []string{"kind"}, nil)
)

var healthStates = []string{api.Healthy, api.Degraded, api.Offline}

// agentCollector reads the agent's state at scrape time.
type agentCollector struct {
	a *Agent

	mu      sync.Mutex
	lastSeq uint64             // guarded by mu
	events  map[string]float64 // guarded by mu; by kind
}

func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descInfo, descRaftState, descRaftTerm, descRaftApplied, descRaftCommit, descRaftServers, descRaftIdle,
		descGossipMembers, descWGPeers, descPeerRx, descPeerTx, descPeerHandshake,
		descBeatAge, descNodeHealth, descHealthCounts, descEvents,
	} {
		ch <- d
	}
	for _, d := range cloudDescs() {
		ch <- d
	}
}

func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descInfo, 1, a.cfg.Name, a.cfg.ClusterID, Version)
	a.collectCloud(ch)

	// Raft.
	rs := a.store.Status()
	state := strings.ToLower(rs.State)
	for _, s := range []string{"leader", "follower", "candidate", "shutdown"} {
		gauge(descRaftState, b2f(s == state), s)
	}
	gauge(descRaftTerm, float64(rs.Term))
	gauge(descRaftApplied, float64(rs.AppliedIndex))
	gauge(descRaftCommit, float64(rs.CommitIndex))
	gauge(descRaftServers, float64(len(rs.Voters)), "voter")
	gauge(descRaftServers, float64(len(rs.NonVoters)), "nonvoter")
	answered, sent := c.a.store.QuietStats()
	ch <- prometheus.MustNewConstMetric(descRaftIdle, prometheus.CounterValue, float64(answered), "answered_locally")
	ch <- prometheus.MustNewConstMetric(descRaftIdle, prometheus.CounterValue, float64(sent), "sent")

	// Gossip and health, over the nodes of the cluster state.
	st, _ := a.store.State()
	members := map[string]float64{"alive": 0, "suspect": 0, "dead": 0, "left": 0}
	counts := map[string]float64{api.Healthy: 0, api.Degraded: 0, api.Offline: 0}
	for _, n := range st.SortedNodes() {
		gs := memberlist.StateAlive
		if n.Name != a.cfg.Name {
			var ok bool
			if gs, ok = a.memberState(n.Name); !ok {
				gs = memberlist.StateDead // never seen: not reachable by gossip
			}
		}
		members[memberStateName(gs)]++
		health, _, beat, seen := a.healthOf(n)
		counts[health]++
		for _, h := range healthStates {
			gauge(descNodeHealth, b2f(h == health), n.Name, h)
		}
		if seen {
			gauge(descBeatAge, a.now().Sub(beat.at).Seconds(), n.Name)
		}
	}
	for s, v := range members {
		gauge(descGossipMembers, v, s)
	}
	for h, v := range counts {
		gauge(descHealthCounts, v, h)
	}

	// WireGuard.
	if stats, err := a.dev.Stats(); err == nil {
		names := map[string]string{}
		for _, n := range st.Nodes {
			names[n.PublicKey] = n.Name
		}
		paths := map[string]float64{"direct": 0, "none": 0}
		for _, p := range stats {
			name, ok := names[p.PublicKey.String()]
			if !ok {
				name = p.PublicKey.String()
			}
			path := "none"
			if !p.LastHandshake.IsZero() {
				age := time.Since(p.LastHandshake)
				if age < 3*time.Minute {
					path = "direct"
				}
				gauge(descPeerHandshake, age.Seconds(), name)
			}
			paths[path]++
			ch <- prometheus.MustNewConstMetric(descPeerRx, prometheus.CounterValue, float64(p.RxBytes), name)
			ch <- prometheus.MustNewConstMetric(descPeerTx, prometheus.CounterValue, float64(p.TxBytes), name)
		}
		for p, v := range paths {
			gauge(descWGPeers, v, p)
		}
	}

	// Events: count the ones applied since the last scrape.
	c.mu.Lock()
	if c.events == nil {
		c.events = map[string]float64{}
		for _, k := range []string{raftstore.EventNodeJoined, raftstore.EventNodeRemoved, raftstore.EventHealthChanged,
			raftstore.EventLeaderChanged, raftstore.EventVoterPromoted, raftstore.EventVoterDemoted, raftstore.EventPathChanged} {
			c.events[k] = 0
		}
	}
	for _, e := range st.Events {
		if e.Seq > c.lastSeq {
			c.events[e.Kind]++
			c.lastSeq = e.Seq
		}
	}
	for k, v := range c.events {
		ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, v, k)
	}
	c.mu.Unlock()
}

func memberStateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateLeft:
		return "left"
	}
	return "dead"
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

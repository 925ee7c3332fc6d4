package metrics

import (
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudlink"
	"github.com/runos/runos-agent/raftstore"
)

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
	descRaftChecks = prometheus.NewDesc("runos_raft_leader_checks_total",
		"Checks of a leader a waiting write could not reach (failover on demand), by outcome: alive, unconfirmed (unreachable from here, not from a quorum of voters), election (this node campaigned).", []string{"outcome"}, nil)
	descRaftHandOvers = prometheus.NewDesc("runos_raft_handovers_total",
		"Leadership transfers this node started before stopping or applying its own removal, by result: moved, failed (no new leader in time; the others then elect on the goodbye heartbeat).", []string{"result"}, nil)
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

	descCloudState = prometheus.NewDesc("runos_cloud_link_state",
		"1 for the cloud link's current state on this node, 0 for the others (only the leader connects).", []string{"state"}, nil)
	descCloudPending = prometheus.NewDesc("runos_cloud_outbox_pending",
		"State changes the cloud has not acknowledged yet.", nil, nil)
	descCloudBytes = prometheus.NewDesc("runos_cloud_link_bytes_total",
		"Bytes on the wire (TLS included) of this node's cloud sessions since it started.", []string{"direction"}, nil)

	descKubeUp = prometheus.NewDesc("runos_kube_component_up",
		"1 if the managed Kubernetes component runs on this node, 0 if it is down (only where managed Kubernetes runs).", []string{"component"}, nil)
	descKubeRestarts = prometheus.NewDesc("runos_kube_component_restarts_total",
		"Times the agent restarted the component after it exited (resets when the agent restarts or the component is reconfigured).", []string{"component"}, nil)
	descDNSQueries = prometheus.NewDesc("runos_dns_queries_total",
		"Queries to this node's resolver by result: local, local_nxdomain (the cluster zone), kubernetes (cluster.local), forwarded (cache miss), cached, coalesced (an identical question in flight answered it), servfail, refused (source outside the cluster), error, dropped.", []string{"result"}, nil)
	descDNSCache = prometheus.NewDesc("runos_dns_cache_entries",
		"Forwarded answers in this node's resolver cache.", nil, nil)
	descDNSUpstreamFails = prometheus.NewDesc("runos_dns_upstream_failures_total",
		"Failed exchanges with one upstream resolver (the next one is then tried).", nil, nil)

	descKubeReady = prometheus.NewDesc("runos_kube_node_ready",
		"1 if this node's Kubernetes Node is Ready, else 0 (read from the API at most every 10 s).", nil, nil)
)

var healthStates = []string{api.Healthy, api.Degraded, api.Offline}

var cloudLinkStates = []string{cloudlink.StateOff, cloudlink.StateStandby, cloudlink.StateConnecting, cloudlink.StateConnected, cloudlink.StateBackoff}

// collector reads the node's components at scrape time.
type collector struct {
	cfg Config

	mu      sync.Mutex
	lastSeq uint64             // guarded by mu
	events  map[string]float64 // guarded by mu; by kind
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descInfo, descRaftState, descRaftTerm, descRaftApplied, descRaftCommit, descRaftServers, descRaftIdle, descRaftChecks, descRaftHandOvers,
		descGossipMembers, descWGPeers, descPeerRx, descPeerTx, descPeerHandshake,
		descBeatAge, descNodeHealth, descHealthCounts, descEvents,
		descCloudState, descCloudPending, descCloudBytes,
		descKubeUp, descKubeRestarts, descKubeReady,
		descDNSQueries, descDNSCache, descDNSUpstreamFails,
	} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	cfg := c.cfg
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descInfo, 1, cfg.Node, cfg.Cluster, cfg.Version)
	c.collectCloud(ch)
	c.collectKube(ch)
	c.collectDNS(ch)

	// Raft.
	rs := cfg.Store.Status()
	state := strings.ToLower(rs.State)
	for _, s := range []string{"leader", "follower", "candidate", "shutdown"} {
		gauge(descRaftState, b2f(s == state), s)
	}
	gauge(descRaftTerm, float64(rs.Term))
	gauge(descRaftApplied, float64(rs.AppliedIndex))
	gauge(descRaftCommit, float64(rs.CommitIndex))
	gauge(descRaftServers, float64(len(rs.Voters)), "voter")
	gauge(descRaftServers, float64(len(rs.NonVoters)), "nonvoter")
	answered, sent := cfg.Store.QuietStats()
	ch <- prometheus.MustNewConstMetric(descRaftIdle, prometheus.CounterValue, float64(answered), "answered_locally")
	ch <- prometheus.MustNewConstMetric(descRaftIdle, prometheus.CounterValue, float64(sent), "sent")
	fs := cfg.Store.FailoverStats()
	ch <- prometheus.MustNewConstMetric(descRaftChecks, prometheus.CounterValue, float64(fs.Alive), "alive")
	ch <- prometheus.MustNewConstMetric(descRaftChecks, prometheus.CounterValue, float64(fs.Unconfirmed), "unconfirmed")
	ch <- prometheus.MustNewConstMetric(descRaftChecks, prometheus.CounterValue, float64(fs.Elections), "election")
	ch <- prometheus.MustNewConstMetric(descRaftHandOvers, prometheus.CounterValue, float64(fs.HandedOver), "moved")
	ch <- prometheus.MustNewConstMetric(descRaftHandOvers, prometheus.CounterValue, float64(fs.HandOverFailed), "failed")

	// Gossip and health, over the nodes of the cluster state.
	st, _ := cfg.Store.State()
	members := map[string]float64{"alive": 0, "suspect": 0, "dead": 0, "left": 0}
	counts := map[string]float64{api.Healthy: 0, api.Degraded: 0, api.Offline: 0}
	for _, n := range st.SortedNodes() {
		gs := memberlist.StateAlive
		if n.Name != cfg.Node {
			var ok bool
			if gs, ok = cfg.Health.MemberState(n.Name); !ok {
				gs = memberlist.StateDead // never seen: not reachable by gossip
			}
		}
		members[memberStateName(gs)]++
		hs := cfg.Health.Of(n)
		counts[hs.Health]++
		for _, h := range healthStates {
			gauge(descNodeHealth, b2f(h == hs.Health), n.Name, h)
		}
		if hs.Seen {
			gauge(descBeatAge, hs.Age.Seconds(), n.Name)
		}
	}
	for s, v := range members {
		gauge(descGossipMembers, v, s)
	}
	for h, v := range counts {
		gauge(descHealthCounts, v, h)
	}

	// WireGuard.
	if stats, err := cfg.Device.Stats(); err == nil {
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

func (c *collector) collectCloud(ch chan<- prometheus.Metric) {
	if c.cfg.Cloud == nil {
		return
	}
	s := c.cfg.Cloud()
	if s == nil {
		return
	}
	for _, st := range cloudLinkStates {
		ch <- prometheus.MustNewConstMetric(descCloudState, prometheus.GaugeValue, b2f(st == s.State), st)
	}
	ch <- prometheus.MustNewConstMetric(descCloudPending, prometheus.GaugeValue, float64(s.Pending))
	ch <- prometheus.MustNewConstMetric(descCloudBytes, prometheus.CounterValue, float64(s.BytesSent), "sent")
	ch <- prometheus.MustNewConstMetric(descCloudBytes, prometheus.CounterValue, float64(s.BytesReceived), "received")
}

func (c *collector) collectDNS(ch chan<- prometheus.Metric) {
	if c.cfg.DNS == nil {
		return
	}
	st := c.cfg.DNS()
	if st == nil {
		return
	}
	for result, n := range st.Queries {
		ch <- prometheus.MustNewConstMetric(descDNSQueries, prometheus.CounterValue, float64(n), result)
	}
	ch <- prometheus.MustNewConstMetric(descDNSCache, prometheus.GaugeValue, float64(st.CacheEntries))
	ch <- prometheus.MustNewConstMetric(descDNSUpstreamFails, prometheus.CounterValue, float64(st.UpstreamFailures))
}

func (c *collector) collectKube(ch chan<- prometheus.Metric) {
	if c.cfg.Kube == nil {
		return
	}
	k := c.cfg.Kube()
	if k == nil {
		return
	}
	for _, comp := range k.Components {
		ch <- prometheus.MustNewConstMetric(descKubeUp, prometheus.GaugeValue, b2f(comp.Running), comp.Name)
		ch <- prometheus.MustNewConstMetric(descKubeRestarts, prometheus.CounterValue, float64(comp.Restarts), comp.Name)
	}
	ch <- prometheus.MustNewConstMetric(descKubeReady, prometheus.GaugeValue, b2f(k.Ready))
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

// Package api is the agent's local API: the JSON shapes it speaks and a
// client for them. The CLI and the UI are thin clients of this API; the field
// names are a contract (see README), so add fields freely but never rename.
package api

import (
	"time"

	"github.com/runos/runos-agent/hostinfo"
)

// Status is GET /v1/status.
type Status struct {
	Name      string     `json:"name"`
	NodeID    string     `json:"node_id"`
	ClusterID string     `json:"cluster_id"`
	MeshIP    string     `json:"mesh_ip"`
	PodCIDR   string     `json:"pod_cidr"`
	Net       string     `json:"net"`
	Version   string     `json:"version"`
	Raft      RaftStatus `json:"raft"`
	Peers     []Peer     `json:"peers"`
	// Devices are the user devices entering through this node (wg1), with
	// their handshake and counters.
	Devices []AccessDevice `json:"devices,omitempty"`
}

// RaftStatus is this replica's view of consensus. Leader and Voters hold
// node names.
type RaftStatus struct {
	State        string   `json:"state"` // leader|follower|candidate|shutdown
	Leader       string   `json:"leader"`
	Term         uint64   `json:"term"`
	AppliedIndex uint64   `json:"applied_index"`
	Voters       []string `json:"voters"`
	NonVoters    []string `json:"nonvoters"`
}

// Peer is one WireGuard peer of this node.
type Peer struct {
	Name                 string  `json:"name"`
	MeshIP               string  `json:"mesh_ip"`
	Endpoint             string  `json:"endpoint"`
	LastHandshakeSeconds float64 `json:"last_handshake_seconds"` // -1: never
	RxBytes              uint64  `json:"rx_bytes"`
	TxBytes              uint64  `json:"tx_bytes"`
	Path                 string  `json:"path"`   // direct|relay|none
	Via                  string  `json:"via"`    // relay node name, or empty
	RTTMillis            float64 `json:"rtt_ms"` // last probe round trip on the path
}

// Health values.
const (
	Healthy  = "healthy"
	Degraded = "degraded"
	Offline  = "offline"
)

// Raft roles.
const (
	RoleLeader   = "leader"
	RoleVoter    = "voter"
	RoleNonvoter = "nonvoter"
)

// Node is one element of GET /v1/nodes.
type Node struct {
	Name      string    `json:"name"`
	ID        string    `json:"id"`
	MeshIP    string    `json:"mesh_ip"`
	PodCIDR   string    `json:"pod_cidr"`
	Health    string    `json:"health"`
	RaftRole  string    `json:"raft_role"`
	Version   string    `json:"version"`
	Endpoints []string  `json:"endpoints"`
	Relay     bool      `json:"relay"` // offers relaying to members that cannot reach each other
	JoinedAt  time.Time `json:"joined_at"`

	HealthReason         string  `json:"health_reason"`
	LastHeartbeatSeconds float64 `json:"last_heartbeat_seconds"` // -1: none yet
	// The node's last heartbeat: CPU, load, memory, disk, uptime.
	hostinfo.Snapshot
	MeshRxBytes uint64 `json:"mesh_rx_bytes"`
	MeshTxBytes uint64 `json:"mesh_tx_bytes"`
}

// NodesResponse wraps the node list with the state index it reflects.
type NodesResponse struct {
	Index uint64 `json:"index"`
	Nodes []Node `json:"nodes"`
}

// TokenRequest is POST /v1/tokens.
type TokenRequest struct {
	TTL  string `json:"ttl"` // Go duration, default 1h
	Uses int    `json:"uses"`
}

// Token is the answer to POST /v1/tokens.
type Token struct {
	Token       string    `json:"token"`
	ExpiresAt   time.Time `json:"expires_at"`
	Uses        int       `json:"uses"`
	JoinCommand string    `json:"join_command"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// Event is one entry of the cluster's history (GET /v1/events).
type Event struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"` // node_joined|node_removed|health_changed|leader_changed|voter_promoted|voter_demoted|path_changed
	Node   string    `json:"node,omitempty"`
	From   string    `json:"from,omitempty"`
	To     string    `json:"to,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// EventsResponse is GET /v1/events?after=SEQ[&wait=DURATION].
type EventsResponse struct {
	Events []Event `json:"events"`
	// Last is the highest seq returned (or the after= value when none), to
	// pass as after= on the next call.
	Last uint64 `json:"last"`
}

// Netcheck is GET /v1/netcheck: what this node's underlay allows.
type Netcheck struct {
	UDP          bool         `json:"udp"`
	Public       string       `json:"public"`  // STUN-reflexive address, if any
	Mapping      string       `json:"mapping"` // endpoint-independent|endpoint-dependent|unknown
	LANAddresses []string     `json:"lan_addresses"`
	Results      []STUNResult `json:"results"`
}

// STUNResult is one STUN server's answer.
type STUNResult struct {
	Server    string  `json:"server"`
	Mapped    string  `json:"mapped,omitempty"`
	RTTMillis float64 `json:"rtt_ms"`
	Error     string  `json:"error,omitempty"`
}

// PingResult is GET /v1/ping: one echo over the mesh.
type PingResult struct {
	Node      string  `json:"node"`
	Seq       int     `json:"seq"`
	Path      string  `json:"path"` // direct|relay|none
	Via       string  `json:"via,omitempty"`
	Endpoint  string  `json:"endpoint,omitempty"`
	RTTMillis float64 `json:"rtt_ms"`
	Error     string  `json:"error,omitempty"`
}

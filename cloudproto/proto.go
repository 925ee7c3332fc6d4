// Package cloudproto is the cloud wire protocol, the one thing the agent's
// cloud link (package cloudlink) and the backend (package cloud) share: the
// paths on the cloud's public listener, the length-prefixed JSON frames of
// the session and their message kinds, the downlink commands and their
// arguments, registration tokens and the registration exchange. It holds
// types and pure functions only, owns no sockets, and imports nothing of the
// agent's state or mesh, so the backend links neither Raft nor WireGuard.
package cloudproto

import (
	"encoding/json"
	"time"

	"github.com/runos/runos-agent/api"
)

// Paths on the cloud's public listener.
const (
	RegisterPath = "/v1/register"
	LinkPath     = "/v1/link"
	// LinkProtocol is the Upgrade token of the session.
	LinkProtocol = "runos-link/1"
)

// Frame types.
const (
	MsgHello    = "hello"    // agent -> cloud, first frame
	MsgWelcome  = "welcome"  // cloud -> agent, answer to hello: the cloud's cursor
	MsgSnapshot = "snapshot" // agent -> cloud: full resync
	MsgChanges  = "changes"  // agent -> cloud: outbox entries in index order
	MsgAck      = "ack"      // cloud -> agent: applied through Index
	MsgHealth   = "health"   // agent -> cloud: every node's health now
	MsgCommand  = "command"  // cloud -> agent
	MsgResult   = "result"   // agent -> cloud
	MsgPing     = "ping"     // either way; answered by pong
	MsgPong     = "pong"
	MsgError    = "error" // either way, then the sender closes
	// MsgReissue (agent -> cloud) asks for a new client certificate for
	// the CSR's key; MsgReissued answers with it. From then on the cloud
	// accepts only the new certificate: a removed node's copy of the old
	// one opens nothing.
	MsgReissue  = "reissue"
	MsgReissued = "reissued"
)

// Msg is one frame: a 4-byte big-endian length, then this as JSON.
type Msg struct {
	Type     string     `json:"t"`
	Index    uint64     `json:"i,omitempty"`
	Hello    *Hello     `json:"hello,omitempty"`
	Snapshot *Snapshot  `json:"snapshot,omitempty"`
	Changes  []Change   `json:"changes,omitempty"`
	Health   *Health    `json:"health,omitempty"`
	Command  *Command   `json:"command,omitempty"`
	Result   *CmdResult `json:"result,omitempty"`
	Reissue  *Reissue   `json:"reissue,omitempty"`
	Error    string     `json:"error,omitempty"`
}

// Reissue is the body of MsgReissue (CSR) and MsgReissued (CertPEM, or
// Error: the old certificate stays the current one).
type Reissue struct {
	CSR     string `json:"csr,omitempty"`
	CertPEM string `json:"cert_pem,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Hello opens a session.
type Hello struct {
	CloudClusterID string `json:"cloud_cluster_id"`
	ClusterID      string `json:"cluster_id"` // the agent's own cluster ID
	Node           string `json:"node"`       // the leader holding the session
	Version        string `json:"version"`
	Index          uint64 `json:"index"` // the state index the leader has applied
}

// Token is a join token as the mirror shows it (never its secret).
type Token struct {
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expires_at"`
	UsesLeft  int       `json:"uses_left"`
	CreatedAt time.Time `json:"created_at"`
}

// Snapshot is the whole mirrored state at Index.
type Snapshot struct {
	Index  uint64      `json:"index"`
	Nodes  []api.Node  `json:"nodes"`
	Tokens []Token     `json:"tokens"`
	Events []api.Event `json:"events"`
	// Services and apps as the local API lists them (never credentials).
	Services []api.Service `json:"services,omitempty"`
	Apps     []api.App     `json:"apps,omitempty"`
}

// Change is one outbox entry with what the mirror needs to apply it: the
// node's record (nil: gone), the token list when tokens changed, and the
// events recorded at that index.
type Change struct {
	Index  uint64      `json:"index"`
	Op     string      `json:"op"`
	NodeID string      `json:"node_id,omitempty"`
	Node   *api.Node   `json:"node,omitempty"`
	Tokens []Token     `json:"tokens,omitempty"`
	Events []api.Event `json:"events,omitempty"`
	// TokensChanged says Tokens is the complete new list (possibly empty).
	TokensChanged bool `json:"tokens_changed,omitempty"`
	// WorkloadID names a service or app that changed: Service or App is
	// its record now; neither means it is gone.
	WorkloadID string       `json:"workload_id,omitempty"`
	Service    *api.Service `json:"service,omitempty"`
	App        *api.App     `json:"app,omitempty"`
}

// Health is the leader's view of every node, sent periodically.
type Health struct {
	Leader string     `json:"leader"`
	Nodes  []api.Node `json:"nodes"`
}

// Command is a downlink command. ID is unique per cloud command; the
// cluster applies it at most once.
type Command struct {
	ID        string          `json:"id"`
	Kind      string          `json:"kind"` // create_token|remove_node|deploy_service|delete_service|deploy_app|delete_app
	Args      json.RawMessage `json:"args,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
}

// CmdResult is what applying a command produced.
type CmdResult struct {
	ID    string          `json:"id"`
	Error string          `json:"error,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	// Replayed: the command had been applied before; this is that
	// outcome again and nothing was applied now.
	Replayed bool   `json:"replayed,omitempty"`
	Index    uint64 `json:"index,omitempty"`
}

// CreateTokenArgs are the arguments of create_token.
type CreateTokenArgs struct {
	TTL  string `json:"ttl,omitempty"` // Go duration, default 1h
	Uses int    `json:"uses,omitempty"`
}

// DeployServiceArgs are the arguments of deploy_service (as POST
// /v1/services takes them).
type DeployServiceArgs = api.ServiceRequest

// DeployAppArgs are the arguments of deploy_app (as POST /v1/apps).
type DeployAppArgs = api.AppRequest

// DeleteWorkloadArgs are the arguments of delete_service and delete_app.
type DeleteWorkloadArgs struct {
	OSID string `json:"osid"`
}

// RemoveNodeArgs are the arguments of remove_node.
type RemoveNodeArgs struct {
	Name string `json:"name"`
}

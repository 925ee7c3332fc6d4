// Package cloudlink is the agent side of the cloud link: registration with
// a runos-cloud backend, the one mTLS session the Raft leader holds, the
// uplink (heartbeats, health and the outbox of state changes) and the
// downlink (commands applied through Raft exactly once). Nothing local ever
// waits for it. The wire protocol lives here too; the backend (package
// cloud) speaks it from the other end.
package cloudlink

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
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

// MaxFrame bounds one frame of the session. A batch of changes is cut well
// below it (see maxBatchBytes).
const MaxFrame = 4 << 20

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
	Error    string     `json:"error,omitempty"`
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

// Errors of the framing.
var (
	ErrFrameTooLarge = errors.New("cloudlink: frame exceeds the size limit")
	ErrMalformed     = errors.New("cloudlink: malformed frame")
)

// WriteFrame writes m as one frame.
func WriteFrame(w io.Writer, m *Msg) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > MaxFrame {
		return fmt.Errorf("%w: %d bytes (max %d)", ErrFrameTooLarge, len(b), MaxFrame)
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err = w.Write(buf)
	return err
}

// ReadFrame reads one frame. An oversized length is refused before any of
// it is read; a body that is not a frame with a type is malformed.
func ReadFrame(r io.Reader) (*Msg, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrame {
		return nil, fmt.Errorf("%w: %d bytes announced (max %d)", ErrFrameTooLarge, n, MaxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%w: truncated: %v", ErrMalformed, err)
	}
	var m Msg
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if m.Type == "" {
		return nil, fmt.Errorf("%w: no type", ErrMalformed)
	}
	return &m, nil
}

// A registration token carries the cloud CA's fingerprint, like the
// agent's join token:
//
//	RC1<sha256 of the cloud CA, 64 hex>::<token id, 12 hex>.<secret, 32 hex>
const regTokenPrefix = "RC1"

// RegToken is a parsed registration token.
type RegToken struct {
	CAFingerprint string
	ID            string
	Secret        string
}

func (t RegToken) String() string {
	return regTokenPrefix + t.CAFingerprint + "::" + t.ID + "." + t.Secret
}

var errRegTokenFormat = errors.New("malformed cloud registration token (expected RC1<ca-fingerprint>::<id>.<secret>, as printed by `runos-cloud token create`)")

// ParseRegToken parses a registration token.
func ParseRegToken(s string) (RegToken, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), regTokenPrefix)
	if !ok {
		return RegToken{}, errRegTokenFormat
	}
	fp, cred, ok := strings.Cut(rest, "::")
	if !ok {
		return RegToken{}, errRegTokenFormat
	}
	id, secret, ok := strings.Cut(cred, ".")
	if !ok || !isHex(fp, 64) || !isHex(id, 12) || !isHex(secret, 32) {
		return RegToken{}, errRegTokenFormat
	}
	return RegToken{CAFingerprint: fp, ID: id, Secret: secret}, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// RegisterRequest is POST /v1/register.
type RegisterRequest struct {
	Token     string `json:"token"`
	CSR       string `json:"csr"` // PEM
	ClusterID string `json:"cluster_id"`
}

// RegisterResponse answers a registration.
type RegisterResponse struct {
	CloudClusterID string `json:"cloud_cluster_id"`
	Name           string `json:"name"`
	ClientCertPEM  string `json:"client_cert_pem"`
	CACertPEM      string `json:"ca_cert_pem"`
}

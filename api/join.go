package api

import (
	"net/netip"
	"time"
)

// The join endpoint (a member's underlay TCP port, TLS pinned to the
// cluster CA's fingerprint) speaks these. It is not the local API: the
// joiner has no agent running yet.

// JoinRequest is what a joiner sends to POST /v1/join. Unknown fields are
// refused.
type JoinRequest struct {
	Token     string   `json:"token"`
	Name      string   `json:"name"`
	NodeID    string   `json:"node_id"`
	PublicKey string   `json:"public_key"` // WireGuard
	CSR       []byte   `json:"csr"`        // PEM
	Endpoints []string `json:"endpoints"`
	Version   string   `json:"version"`
}

// JoinResponse carries everything the joiner needs to run from its data
// dir.
type JoinResponse struct {
	ClusterID string        `json:"cluster_id"`
	Node      *NodeRecord   `json:"node"`
	CertPEM   []byte        `json:"cert_pem"`
	CACertPEM []byte        `json:"ca_cert_pem"`
	Peers     []*NodeRecord `json:"peers"`
	DataKey   string        `json:"data_key"` // seal.Key; the TLS session is pinned to the cluster CA
}

// NodeRecord is a node as the cluster state records it (the JSON of
// raftstore.Node, which this package does not import).
type NodeRecord struct {
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	PublicKey  string            `json:"public_key"` // WireGuard, base64
	MeshIP     netip.Addr        `json:"mesh_ip"`
	PodCIDR    netip.Prefix      `json:"pod_cidr"`
	Endpoints  []string          `json:"endpoints,omitempty"`
	Relay      bool              `json:"relay,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	CertSerial string            `json:"cert_serial"`
	// CertFingerprint is the SHA-256 of the node certificate's DER.
	CertFingerprint string    `json:"cert_fingerprint,omitempty"`
	Version         string    `json:"version,omitempty"`
	JoinedAt        time.Time `json:"joined_at"`
}

package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Managed Kubernetes (issue 13): the agents run the cluster themselves.

// KubeEnableRequest is POST /v1/kube/enable.
type KubeEnableRequest struct {
	// Version of the Kubernetes binaries every node runs ("" : the
	// version the agent was built for, DefaultKubeVersion).
	Version string `json:"version,omitempty"`
}

// DefaultKubeVersion is the Kubernetes release this agent is tested with.
const DefaultKubeVersion = "v1.34.4"

// KubeStatus is GET /v1/kube/status.
type KubeStatus struct {
	Managed   bool             `json:"managed"`
	Version   string           `json:"version,omitempty"`
	EnabledAt time.Time        `json:"enabled_at,omitzero"`
	Nodes     []KubeNodeStatus `json:"nodes"`
	// Etcd lists the etcd members as the cluster state drives them.
	Etcd []KubeEtcdMember `json:"etcd,omitempty"`
	// APIError is why the Kubernetes API could not be asked for Node
	// readiness (Ready is then false everywhere).
	APIError string `json:"api_error,omitempty"`
}

// KubeNodeStatus is one node's share of the cluster.
type KubeNodeStatus struct {
	Name  string `json:"name"`
	Ready bool   `json:"ready"`
	// Error is why the node's components could not be asked (the node is
	// down) or why they cannot run there (a missing binary).
	Error      string          `json:"error,omitempty"`
	Components []KubeComponent `json:"components"`
}

// KubeComponent is one process (or agent-served part) on a node.
type KubeComponent struct {
	Name      string    `json:"name"`
	Running   bool      `json:"running"`
	PID       int       `json:"pid,omitempty"`
	Version   string    `json:"version,omitempty"`
	Restarts  int       `json:"restarts"`
	LastError string    `json:"last_error,omitempty"`
	Since     time.Time `json:"since,omitzero"`
}

// KubeEtcdMember is one etcd member.
type KubeEtcdMember struct {
	Node  string `json:"node"`
	Phase string `json:"phase"`
}

// KubeNodeComponents is the node API's answer for its own node.
type KubeNodeComponents struct {
	Error      string          `json:"error,omitempty"`
	Components []KubeComponent `json:"components"`
}

// KubeImportResult is POST /v1/kube/import: per node, the import's outcome.
type KubeImportResult struct {
	Nodes []KubeImportNode `json:"nodes"`
}

// KubeImportNode is one node's import.
type KubeImportNode struct {
	Name  string `json:"name"`
	Error string `json:"error,omitempty"`
}

// EnableKube turns managed Kubernetes on.
func (c *Client) EnableKube(ctx context.Context, req KubeEnableRequest) (*KubeStatus, error) {
	var out KubeStatus
	return &out, c.do(ctx, http.MethodPost, "/v1/kube/enable", req, &out)
}

// DisableKube turns it off (refused while services or apps exist).
func (c *Client) DisableKube(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/kube/disable", struct{}{}, nil)
}

// KubeStatus reports every node's components and readiness.
func (c *Client) KubeStatus(ctx context.Context) (*KubeStatus, error) {
	var out KubeStatus
	return &out, c.do(ctx, http.MethodGet, "/v1/kube/status", nil, &out)
}

// AdminKubeconfig returns a new cluster-admin kubeconfig.
func (c *Client) AdminKubeconfig(ctx context.Context) ([]byte, error) {
	var out struct {
		Kubeconfig string `json:"kubeconfig"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/kube/kubeconfig", nil, &out); err != nil {
		return nil, err
	}
	return []byte(out.Kubeconfig), nil
}

// ImportImage sends an image archive to every node's containerd.
func (c *Client) ImportImage(ctx context.Context, archive io.Reader) (*KubeImportResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/v1/kube/import", archive)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-tar")
	var out KubeImportResult
	if err := c.doRequest(req, &out); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return &out, nil
}

package api

import (
	"context"
	"net/http"
	"time"
)

// CloudStatus is GET /v1/cloud: the cloud link as this node sees it.
type CloudStatus struct {
	Registered     bool      `json:"registered"`
	URL            string    `json:"url,omitempty"`
	CloudClusterID string    `json:"cloud_cluster_id,omitempty"`
	RegisteredAt   time.Time `json:"registered_at,omitzero"`
	// Allow is what the cloud may do: read (the mirror only), deploy
	// (workloads) or admin (also join tokens and node removal).
	Allow string `json:"allow,omitempty"`
	// RotatePending: the cloud client credential is to be re-issued by
	// the leader's session (after a node removal).
	RotatePending bool `json:"rotate_pending,omitempty"`
	// State: not_registered|standby|connecting|connected|backoff. Only
	// the Raft leader holds the session; the others are standby.
	State     string    `json:"state"`
	Since     time.Time `json:"since"`
	NextRetry time.Time `json:"next_retry,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	Holder    string    `json:"holder,omitempty"` // node that holds (or should hold) the session: the leader
	// Pending counts state changes the cloud has not acknowledged.
	Pending  int       `json:"pending"`
	AckIndex uint64    `json:"ack_index"`
	AckTime  time.Time `json:"ack_time,omitzero"`
	Index    uint64    `json:"index"` // this node's applied state index
	// Bytes on the wire of this node's sessions since it started.
	BytesSent     uint64 `json:"bytes_sent"`
	BytesReceived uint64 `json:"bytes_received"`
}

// CloudConnectRequest is POST /v1/cloud/connect.
type CloudConnectRequest struct {
	URL   string `json:"url"`
	Token string `json:"token"`
	// Allow: read, deploy ("", the default) or admin.
	Allow string `json:"allow,omitempty"`
}

// CloudAllowRequest is POST /v1/cloud/allow: change what the cloud may do.
type CloudAllowRequest struct {
	Allow string `json:"allow"`
}

// CloudStatus fetches the cloud link's status.
func (c *Client) CloudStatus(ctx context.Context) (*CloudStatus, error) {
	var s CloudStatus
	return &s, c.do(ctx, http.MethodGet, "/v1/cloud", nil, &s)
}

// CloudConnect registers the cluster with a cloud.
func (c *Client) CloudConnect(ctx context.Context, req CloudConnectRequest) (*CloudStatus, error) {
	var s CloudStatus
	return &s, c.do(ctx, http.MethodPost, "/v1/cloud/connect", req, &s)
}

// CloudDisconnect forgets the cloud registration.
func (c *Client) CloudDisconnect(ctx context.Context) (*CloudStatus, error) {
	var s CloudStatus
	return &s, c.do(ctx, http.MethodPost, "/v1/cloud/disconnect", struct{}{}, &s)
}

// CloudAllow changes what the cloud may do (read, deploy or admin).
func (c *Client) CloudAllow(ctx context.Context, allow string) (*CloudStatus, error) {
	var s CloudStatus
	return &s, c.do(ctx, http.MethodPost, "/v1/cloud/allow", CloudAllowRequest{Allow: allow}, &s)
}

package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/runos/runos-agent/raftstore"
)

// The node API listens on the mesh IP with mutual TLS: only nodes of the
// cluster state reach it. It carries writes (and read indexes) forwarded
// to the leader, and failover on demand's questions (failover.go).

// maxCommand bounds a forwarded command and its result.
const maxCommand = 1 << 20

// Node is what the node API asks of the agent: the leader-side commit
// (raftstore.Store.ApplyLocal).
type Node interface {
	ApplyLocal(ctx context.Context, cmd *raftstore.Command) (*raftstore.Result, error)
}

// NewNodeHandler returns the node API; k (nil: absent) serves this node's
// Kubernetes components to other members.
func NewNodeHandler(n Node, k KubeNode) (http.Handler, error) {
	if n == nil {
		return nil, errors.New("httpapi: a Node is required")
	}
	mux := http.NewServeMux()
	if k != nil {
		kubeNodeRoutes(mux, k)
	}
	if f, ok := n.(FailoverNode); ok {
		failoverRoutes(mux, f)
	}
	mux.HandleFunc("POST /v1/raft/apply", func(w http.ResponseWriter, r *http.Request) {
		var cmd raftstore.Command
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxCommand)).Decode(&cmd); err != nil {
			WriteError(w, Classify(err, ErrBadRequest))
			return
		}
		if cmd.ID == "" || cmd.Time.IsZero() {
			WriteError(w, badRequest("forwarded command lacks id or time"))
			return
		}
		res, err := n.ApplyLocal(r.Context(), &cmd)
		if err != nil {
			// 421 when this node no longer leads; any other failure is
			// worth retrying: the sender does, with the same command ID.
			WriteError(w, Classify(err, ErrUnavailable))
			return
		}
		WriteJSON(w, http.StatusOK, res)
	})
	return mux, nil
}

// NodeClient calls other members' node APIs. Its http.Client must dial
// node names on the mesh and present this node's certificate.
type NodeClient struct {
	http *http.Client
	port int
}

// NewNodeClient returns a client for node APIs on port, through hc.
func NewNodeClient(hc *http.Client, port int) (*NodeClient, error) {
	if hc == nil || port <= 0 {
		return nil, errors.New("httpapi: NewNodeClient needs an http.Client and a port")
	}
	return &NodeClient{http: hc, port: port}, nil
}

// Apply hands cmd to the leader, named leader, to commit. The URL carries
// the node's name so TLS checks its certificate against the name the
// cluster CA signed into it.
func (c *NodeClient) Apply(ctx context.Context, leader string, cmd *raftstore.Command) (*raftstore.Result, error) {
	body, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("https://%s:%d/v1/raft/apply", leader, c.port)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxCommand))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("leader %s: %s: %s", leader, resp.Status, bytes.TrimSpace(raw))
	}
	var res raftstore.Result
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

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
// Kubernetes components to other members, and its wg1 counters when it is
// an AccessNode too.
func NewNodeHandler(n Node, k KubeNode) (http.Handler, error) {
	if n == nil {
		return nil, errors.New("httpapi: a Node is required")
	}
	mux := http.NewServeMux()
	if k != nil {
		kubeNodeRoutes(mux, k)
	}
	if a, ok := k.(AccessNode); ok {
		accessNodeRoutes(mux, a)
	}
	if f, ok := n.(FailoverNode); ok {
		failoverRoutes(mux, f)
	}
	// One command per request: what agents before batching send, and
	// what NodeClient falls back to with a leader that has no batches.
	mux.HandleFunc("POST /v1/raft/apply", func(w http.ResponseWriter, r *http.Request) {
		raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxCommand))
		if err != nil {
			WriteError(w, Classify(err, ErrBadRequest))
			return
		}
		cmd, err := decodeForwarded(raw)
		if err != nil {
			WriteError(w, err)
			return
		}
		res, err := n.ApplyLocal(r.Context(), cmd)
		if err != nil {
			// 421 when this node no longer leads; any other failure is
			// worth retrying: the sender does, with the same command ID.
			WriteError(w, Classify(err, ErrUnavailable))
			return
		}
		WriteJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("POST /v1/raft/apply-batch", serveApplyBatch(n))
	return mux, nil
}

// NodeClient calls other members' node APIs. Its http.Client must dial
// node names on the mesh and present this node's certificate.
type NodeClient struct {
	http *http.Client
	port int
	// senders bounds the batches in flight to one leader (forward.go).
	senders int

	ctx    context.Context // ends batches in flight at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // batch senders

	mu sync.Mutex
	// queues are the forwarded writes waiting, by leader name; guarded
	// by mu.
	queues map[string]*applyQueue
	// noBatch: leaders that lack the batch endpoint, until when they are
	// sent one command per request; guarded by mu.
	noBatch map[string]time.Time
	closed  bool // guarded by mu
}

// NewNodeClient returns a client for node APIs on port, through hc. Close
// it to end forwarded writes in flight.
func NewNodeClient(hc *http.Client, port int) (*NodeClient, error) {
	if hc == nil || port <= 0 {
		return nil, errors.New("httpapi: NewNodeClient needs an http.Client and a port")
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &NodeClient{http: hc, port: port, senders: defaultSenders, ctx: ctx, cancel: cancel,
		queues: map[string]*applyQueue{}, noBatch: map[string]time.Time{}}, nil
}

// applyOne forwards one encoded command in a request of its own.
func (c *NodeClient) applyOne(ctx context.Context, leader string, body []byte) (*raftstore.Result, error) {
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

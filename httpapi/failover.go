package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/runos/runos-agent/raftstore"
)

// Failover on demand (raftstore/failover.go) asks members over the node
// API: is the leader alive (probe), do you find it unreachable too (check),
// start an election (campaign).

// FailoverNode is what the failover routes ask of a node
// (*raftstore.Store is one). A Node that is not one serves no such routes.
type FailoverNode interface {
	RaftProbe() raftstore.Probe
	CheckLeader(ctx context.Context, s raftstore.Suspicion) raftstore.Verdict
	Campaign(s raftstore.Suspicion) error
}

var _ FailoverNode = (*raftstore.Store)(nil)

func failoverRoutes(mux *http.ServeMux, n FailoverNode) {
	mux.HandleFunc("GET /v1/raft/probe", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, n.RaftProbe())
	})
	mux.HandleFunc("POST /v1/raft/check", func(w http.ResponseWriter, r *http.Request) {
		s, ok := readSuspicion(w, r)
		if ok {
			WriteJSON(w, http.StatusOK, n.CheckLeader(r.Context(), s))
		}
	})
	mux.HandleFunc("POST /v1/raft/campaign", func(w http.ResponseWriter, r *http.Request) {
		s, ok := readSuspicion(w, r)
		if !ok {
			return
		}
		if err := n.Campaign(s); err != nil {
			WriteError(w, Classify(err, ErrUnavailable))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

func readSuspicion(w http.ResponseWriter, r *http.Request) (raftstore.Suspicion, bool) {
	var s raftstore.Suspicion
	if !decodeBody(w, r, &s, 4096) {
		return s, false
	}
	if s.Leader == "" {
		WriteError(w, badRequest("a suspicion names a leader"))
		return s, false
	}
	return s, true
}

// Probe asks node (by name) whether it is alive and leads.
func (c *NodeClient) Probe(ctx context.Context, node string) (raftstore.Probe, error) {
	var p raftstore.Probe
	err := c.call(ctx, http.MethodGet, node, "/v1/raft/probe", nil, &p)
	return p, err
}

// CheckLeader asks node to check a suspected leader itself.
func (c *NodeClient) CheckLeader(ctx context.Context, node string, s raftstore.Suspicion) (raftstore.Verdict, error) {
	var v raftstore.Verdict
	err := c.call(ctx, http.MethodPost, node, "/v1/raft/check", s, &v)
	return v, err
}

// Campaign asks node to start an election on a suspicion it confirmed.
func (c *NodeClient) Campaign(ctx context.Context, node string, s raftstore.Suspicion) error {
	return c.call(ctx, http.MethodPost, node, "/v1/raft/campaign", s, nil)
}

// maxNodeAnswer bounds another node's JSON answer (a wg1 device list is the
// longest).
const maxNodeAnswer = 4 << 20

// call sends in (if not nil) as JSON and decodes a 2xx answer's body into
// out (if not nil). Every JSON request to another node goes through it.
func (c *NodeClient) call(ctx context.Context, method, node, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, fmt.Sprintf("https://%s:%d%s", node, c.port, path), body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxNodeAnswer))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return answerError(node, resp.Status, raw)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(raw, out)
}

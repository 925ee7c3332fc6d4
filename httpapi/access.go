package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/runos/runos-agent/api"
)

// Access is user access (wg1) as the local API serves it.
type Access interface {
	AccessAdd(ctx context.Context, req api.AccessAddRequest) (*api.AccessConfig, error)
	AccessList(ctx context.Context) *api.AccessDevices
	AccessRemove(ctx context.Context, name string) error
	AccessMove(ctx context.Context, name string, req api.AccessMoveRequest) (*api.AccessConfig, error)
}

// AccessNode is this node's wg1, served to other members on the node API.
type AccessNode interface {
	AccessStats() ([]api.AccessPeerStats, error)
	// AccessApplied returns once wg1 on this node serves the state at
	// index or later, or ctx's error.
	AccessApplied(ctx context.Context, index uint64) error
}

// maxAccessWait bounds how long the node API holds a request waiting for
// wg1 to catch up with an index.
const maxAccessWait = 5 * time.Second

func accessRoutes(mux *http.ServeMux, a Access) {
	mux.HandleFunc("POST /v1/access", withBody(1<<12, a.AccessAdd))
	mux.HandleFunc("GET /v1/access", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, a.AccessList(r.Context()))
	})
	mux.HandleFunc("DELETE /v1/access/{name}", func(w http.ResponseWriter, r *http.Request) {
		respond(w, nil, a.AccessRemove(r.Context(), r.PathValue("name")))
	})
	mux.HandleFunc("POST /v1/access/{name}/move", func(w http.ResponseWriter, r *http.Request) {
		var req api.AccessMoveRequest
		if !decodeBody(w, r, &req, 1<<12) {
			return
		}
		res, err := a.AccessMove(r.Context(), r.PathValue("name"), req)
		respond(w, res, err)
	})
}

func accessNodeRoutes(mux *http.ServeMux, a AccessNode) {
	mux.HandleFunc("GET /v1/access/stats", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.AccessStats()
		respond(w, st, err)
	})
	mux.HandleFunc("GET /v1/access/applied", func(w http.ResponseWriter, r *http.Request) {
		index, err := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
		if err != nil {
			WriteError(w, Classify(fmt.Errorf("index: want a Raft index: %w", err), ErrBadRequest))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), maxAccessWait)
		defer cancel()
		if err := a.AccessApplied(ctx, index); err != nil {
			WriteError(w, Classify(fmt.Errorf("wg1 has not applied index %d: %w", index, err), ErrUnavailable))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// AccessApplied asks node (by name) to answer once its wg1 serves the
// state at index or later.
func (c *NodeClient) AccessApplied(ctx context.Context, node string, index uint64) error {
	return c.call(ctx, http.MethodGet, node, fmt.Sprintf("/v1/access/applied?index=%d", index), nil, nil)
}

// answerError is the error another node's API answered: its api.Error
// when the body holds one, else the body itself.
func answerError(node, status string, body []byte) error {
	var e api.Error
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return fmt.Errorf("node %s: %s: %s", node, status, e.Error)
	}
	return fmt.Errorf("node %s: %s: %s", node, status, bytes.TrimSpace(body))
}

// AccessStats asks node (by name) for its wg1 devices' counters.
func (c *NodeClient) AccessStats(ctx context.Context, node string) ([]api.AccessPeerStats, error) {
	var out []api.AccessPeerStats
	err := c.call(ctx, http.MethodGet, node, "/v1/access/stats", nil, &out)
	return out, err
}

package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
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

// nodeError is the error another node's API answered.
func nodeError(node string, resp *http.Response) error {
	var e api.Error
	if json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e) == nil && e.Error != "" {
		return fmt.Errorf("%s: %s", node, e.Error)
	}
	return fmt.Errorf("%s answered %s", node, resp.Status)
}

// AccessStats asks node (by name) for its wg1 devices' counters.
func (c *NodeClient) AccessStats(ctx context.Context, node string) ([]api.AccessPeerStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://%s:%d/v1/access/stats", node, c.port), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nodeError(node, resp)
	}
	var out []api.AccessPeerStats
	return out, json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&out)
}

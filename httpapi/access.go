package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

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
}

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
		var e api.Error
		if json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e) == nil && e.Error != "" {
			return nil, fmt.Errorf("%s: %s", node, e.Error)
		}
		return nil, fmt.Errorf("%s answered %s", node, resp.Status)
	}
	var out []api.AccessPeerStats
	return out, json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&out)
}

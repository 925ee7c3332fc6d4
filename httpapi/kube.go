package httpapi

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/runos/runos-agent/api"
)

// ManagedKube is managed Kubernetes as the local API serves it.
type ManagedKube interface {
	EnableKube(ctx context.Context, req api.KubeEnableRequest) (*api.KubeStatus, error)
	DisableKube(ctx context.Context) error
	KubeStatus(ctx context.Context) (*api.KubeStatus, error)
	AdminKubeconfig(ctx context.Context) ([]byte, error)
	// ImportImage loads an image archive into every node's containerd.
	ImportImage(ctx context.Context, archive io.Reader) (*api.KubeImportResult, error)
}

// KubeNode is this node's share, served to other members on the node API.
type KubeNode interface {
	KubeComponents() *api.KubeNodeComponents
	// ImportImageHere loads an image archive into this node's containerd.
	ImportImageHere(ctx context.Context, archive io.Reader) error
}

// MaxImageArchive bounds an image archive sent through the APIs.
const MaxImageArchive = 4 << 30

func kubeRoutes(mux *http.ServeMux, k ManagedKube) {
	mux.HandleFunc("POST /v1/kube/enable", withBody(1<<10, k.EnableKube))
	mux.HandleFunc("POST /v1/kube/disable", func(w http.ResponseWriter, r *http.Request) {
		respond(w, nil, k.DisableKube(r.Context()))
	})
	mux.HandleFunc("GET /v1/kube/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := k.KubeStatus(r.Context())
		respond(w, st, err)
	})
	mux.HandleFunc("GET /v1/kube/kubeconfig", func(w http.ResponseWriter, r *http.Request) {
		kc, err := k.AdminKubeconfig(r.Context())
		if err != nil {
			WriteError(w, err)
			return
		}
		WriteJSON(w, http.StatusOK, map[string]string{"kubeconfig": string(kc)})
	})
	mux.HandleFunc("POST /v1/kube/import", func(w http.ResponseWriter, r *http.Request) {
		res, err := k.ImportImage(r.Context(), http.MaxBytesReader(w, r.Body, MaxImageArchive))
		respond(w, res, err)
	})
}

func kubeNodeRoutes(mux *http.ServeMux, k KubeNode) {
	mux.HandleFunc("GET /v1/kube/components", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, k.KubeComponents())
	})
	mux.HandleFunc("POST /v1/kube/import", func(w http.ResponseWriter, r *http.Request) {
		respond(w, nil, k.ImportImageHere(r.Context(), http.MaxBytesReader(w, r.Body, MaxImageArchive)))
	})
}

// KubeComponents asks node (by name) for its Kubernetes components.
func (c *NodeClient) KubeComponents(ctx context.Context, node string) (*api.KubeNodeComponents, error) {
	var out api.KubeNodeComponents
	if err := c.call(ctx, http.MethodGet, node, "/v1/kube/components", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ImportImage streams an image archive to node's containerd.
func (c *NodeClient) ImportImage(ctx context.Context, node string, archive io.Reader) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("https://%s:%d/v1/kube/import", node, c.port), archive)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		return answerError(node, resp.Status, raw)
	}
	return nil
}

package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/runos/runos-agent/api"
)

// The local API is how the CLI (and, behind its sign-in, the web UI) drive
// an agent. Every path api.Client calls is routed here.

// Local is what the local API asks of the agent, apart from workloads.
type Local interface {
	// Status, Nodes and Events read this node's copy of the state: they
	// may lag the leader (stale-allowed reads).
	Status() (*api.Status, error)
	Nodes() *api.NodesResponse
	Events(after uint64) *api.EventsResponse
	// Changed is closed at the next change of this node's state.
	Changed() <-chan struct{}
	// ConsistentRead returns once this node's copy of the state reflects
	// every write acknowledged, on any node, before it was called, so the
	// reads that follow are linearizable; without a leader and a quorum it
	// fails when ctx ends.
	ConsistentRead(ctx context.Context) error

	CreateToken(ctx context.Context, req api.TokenRequest) (*api.Token, error)
	SetTokenPolicy(ctx context.Context, req api.TokenPolicy) (*api.TokenPolicy, error)
	RemoveNode(ctx context.Context, name string) error
	Netcheck(ctx context.Context, stun []string) (*api.Netcheck, error)
	Ping(ctx context.Context, node string, seq int) (*api.PingResult, error)

	CloudStatus() *api.CloudStatus
	CloudConnect(ctx context.Context, req api.CloudConnectRequest) (*api.CloudStatus, error)
	CloudDisconnect(ctx context.Context) (*api.CloudStatus, error)
	CloudAllow(ctx context.Context, req api.CloudAllowRequest) (*api.CloudStatus, error)

	ResetUIPassword(ctx context.Context) (*api.UIPassword, error)
}

// Workloads are the service and app operations the local API serves
// (package workload's Ops).
type Workloads interface {
	Kube() *api.Kube
	SetKube(ctx context.Context, kubeconfig []byte) (*api.Kube, error)
	DeployService(ctx context.Context, req api.ServiceRequest) (*api.Service, error)
	Services(service string) []api.Service
	ServiceInfo(osid string, reveal bool) (*api.Service, error)
	DeleteService(ctx context.Context, osid string) error
	DeployApp(ctx context.Context, req api.AppRequest) (*api.App, error)
	Apps() []api.App
	AppInfo(osid string) (*api.App, error)
	DeleteApp(ctx context.Context, osid string) error
}

// LocalConfig configures the local API handler.
type LocalConfig struct {
	Local     Local     // required
	Workloads Workloads // required
	// Catalog returns what GET /v1/catalog lists: the deployable services.
	// Called per request, so that the catalog (typed Kubernetes objects) is
	// built only once someone asks for it; nil lists none.
	Catalog func() []api.CatalogService
	// Kube serves managed Kubernetes (nil: its routes are absent).
	Kube ManagedKube
	// Access serves user devices (nil: its routes are absent).
	Access Access
	// DNS serves the node resolver's status and the zone setting (nil:
	// its routes are absent).
	DNS LocalDNS
}

// ConsistentReadTimeout bounds the wait of a ?consistent=1 read for the
// leader's read index: long enough to ride out an election, short enough
// that a node cut off from the quorum says so rather than hanging.
const ConsistentReadTimeout = 10 * time.Second

// NewLocalHandler returns the local API.
func NewLocalHandler(cfg LocalConfig) (http.Handler, error) {
	switch {
	case cfg.Local == nil:
		return nil, errors.New("httpapi: LocalConfig.Local is required")
	case cfg.Workloads == nil:
		return nil, errors.New("httpapi: LocalConfig.Workloads is required")
	}
	l := &local{b: cfg.Local, wl: cfg.Workloads, catalog: cfg.Catalog}
	mux := http.NewServeMux()
	l.nodeRoutes(mux)
	l.cloudRoutes(mux)
	l.workloadRoutes(mux)
	l.uiRoutes(mux)
	l.testRoutes(mux)
	if cfg.Kube != nil {
		kubeRoutes(mux, cfg.Kube)
	}
	if cfg.Access != nil {
		accessRoutes(mux, cfg.Access)
	}
	if cfg.DNS != nil {
		dnsRoutes(mux, cfg.DNS)
	}
	return mux, nil
}

type local struct {
	b       Local
	wl      Workloads
	catalog func() []api.CatalogService // nil: none
}

func (l *local) nodeRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		if !l.readBarrier(w, r) {
			return
		}
		s, err := l.b.Status()
		respond(w, s, err)
	})
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		if !l.readBarrier(w, r) {
			return
		}
		WriteJSON(w, http.StatusOK, l.b.Nodes())
	})
	mux.HandleFunc("GET /v1/events", l.handleEvents)
	mux.HandleFunc("GET /v1/netcheck", func(w http.ResponseWriter, r *http.Request) {
		n, err := l.b.Netcheck(r.Context(), r.URL.Query()["stun"])
		if err != nil {
			// Netcheck fails only for want of STUN servers to ask.
			WriteError(w, Classify(err, ErrBadRequest))
			return
		}
		WriteJSON(w, http.StatusOK, n)
	})
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		seq, _ := strconv.Atoi(r.URL.Query().Get("seq"))
		p, err := l.b.Ping(r.Context(), r.URL.Query().Get("node"), seq)
		respond(w, p, err)
	})
	mux.HandleFunc("POST /v1/tokens", withBody(1<<16, l.b.CreateToken))
	mux.HandleFunc("POST /v1/tokens/policy", withBody(1<<16, l.b.SetTokenPolicy))
	mux.HandleFunc("DELETE /v1/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		respond(w, nil, l.b.RemoveNode(r.Context(), r.PathValue("name")))
	})
}

// readBarrier serves ?consistent=1: it holds the read until this node has
// caught up with the leader's read index, or answers the failure itself
// (503 when no leader with a quorum answered in time) rather than let a
// stale answer pass for a consistent one. Without the parameter the read
// is local and stale-allowed.
func (l *local) readBarrier(w http.ResponseWriter, r *http.Request) bool {
	v := r.URL.Query().Get("consistent")
	if v == "" {
		return true
	}
	consistent, err := strconv.ParseBool(v)
	if err != nil {
		WriteError(w, badRequest("invalid consistent=%q", v))
		return false
	}
	if !consistent {
		return true
	}
	ctx, cancel := context.WithTimeout(r.Context(), ConsistentReadTimeout)
	defer cancel()
	if err := l.b.ConsistentRead(ctx); err != nil {
		WriteError(w, fmt.Errorf("consistent read needs the leader and a quorum: %w", err))
		return false
	}
	return true
}

// handleEvents lists events after ?after=SEQ, holding the request up to
// ?wait=DURATION (at most a minute) until one arrives: `events --follow`.
func (l *local) handleEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			WriteError(w, badRequest("invalid after=%q", v))
			return
		}
		after = n
	}
	var wait time.Duration
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			WriteError(w, badRequest("invalid wait=%q", v))
			return
		}
		wait = min(d, time.Minute)
	}
	deadline := time.After(wait)
	for {
		changed := l.b.Changed()
		out := l.b.Events(after)
		if len(out.Events) > 0 || wait == 0 {
			WriteJSON(w, http.StatusOK, out)
			return
		}
		select {
		case <-changed:
		case <-deadline:
			WriteJSON(w, http.StatusOK, out)
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (l *local) cloudRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/cloud", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, l.b.CloudStatus())
	})
	mux.HandleFunc("POST /v1/cloud/connect", withBody(1<<16, l.b.CloudConnect))
	mux.HandleFunc("POST /v1/cloud/allow", withBody(1<<10, l.b.CloudAllow))
	mux.HandleFunc("POST /v1/cloud/disconnect", func(w http.ResponseWriter, r *http.Request) {
		s, err := l.b.CloudDisconnect(r.Context())
		respond(w, s, err)
	})
}

func (l *local) uiRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/ui/reset-password", func(w http.ResponseWriter, r *http.Request) {
		// Only the machine's owner, through the unix socket (file
		// permissions), may reset; the UI server never forwards this path.
		if !onUnixSocket(r) {
			WriteError(w, Classify(errors.New("reset-password is only served on the agent's unix socket"), ErrForbidden))
			return
		}
		pw, err := l.b.ResetUIPassword(r.Context())
		respond(w, pw, err)
	})
}

func (l *local) workloadRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/kube", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, l.wl.Kube())
	})
	mux.HandleFunc("PUT /v1/kube", withBody(1<<20, func(ctx context.Context, req api.KubeSetRequest) (*api.Kube, error) {
		return l.wl.SetKube(ctx, []byte(req.Kubeconfig))
	}))
	mux.HandleFunc("GET /v1/catalog", func(w http.ResponseWriter, r *http.Request) {
		list := []api.CatalogService{}
		if l.catalog != nil {
			list = l.catalog()
		}
		WriteJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, l.wl.Services(r.URL.Query().Get("type")))
	})
	mux.HandleFunc("POST /v1/services", withBody(1<<16, l.wl.DeployService))
	mux.HandleFunc("GET /v1/services/{osid}", func(w http.ResponseWriter, r *http.Request) {
		reveal := r.URL.Query().Get("reveal")
		s, err := l.wl.ServiceInfo(r.PathValue("osid"), reveal == "1" || reveal == "true")
		respond(w, s, err)
	})
	mux.HandleFunc("DELETE /v1/services/{osid}", func(w http.ResponseWriter, r *http.Request) {
		respond(w, nil, l.wl.DeleteService(r.Context(), r.PathValue("osid")))
	})
	mux.HandleFunc("GET /v1/apps", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, l.wl.Apps())
	})
	mux.HandleFunc("POST /v1/apps", withBody(1<<16, l.wl.DeployApp))
	mux.HandleFunc("GET /v1/apps/{osid}", func(w http.ResponseWriter, r *http.Request) {
		app, err := l.wl.AppInfo(r.PathValue("osid"))
		respond(w, app, err)
	})
	mux.HandleFunc("DELETE /v1/apps/{osid}", func(w http.ResponseWriter, r *http.Request) {
		respond(w, nil, l.wl.DeleteApp(r.Context(), r.PathValue("osid")))
	})
}

// withBody serves an operation that takes a JSON body of at most limit
// bytes and answers with its result (respond).
func withBody[Req, Res any](limit int64, op func(context.Context, Req) (Res, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if !decodeBody(w, r, &req, limit) {
			return
		}
		res, err := op(r.Context(), req)
		respond(w, res, err)
	}
}

// respond answers an operation: its error, 204 when it returns nothing,
// or its result as JSON.
func respond(w http.ResponseWriter, v any, err error) {
	switch {
	case err != nil:
		WriteError(w, err)
	case v == nil:
		w.WriteHeader(http.StatusNoContent)
	default:
		WriteJSON(w, http.StatusOK, v)
	}
}

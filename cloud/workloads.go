package cloud

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/templates"
)

// Services and apps in the console (issues 6 and 7): the catalog, the
// mirrored instances and apps in the local API's shapes, and deploys and
// deletes sent as cloud commands. Connection details are not here:
// credentials never leave the cluster.

// Catalog is GET /clusters/{id}/v1/catalog: the catalog this cloud was
// built with, in the agent's GET /v1/catalog shape.
func Catalog() []api.CatalogService { return templates.APICatalog() }

// Services lists a cluster's mirrored service instances (optionally of one
// service), with the apps using each.
func (s *Server) Services(ref, service string) ([]api.Service, error) {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return nil, err
	}
	m, err := s.store.readWorkloadsOnly(c.ID)
	if err != nil {
		return nil, err
	}
	out := []api.Service{}
	for _, v := range m.Services {
		if service != "" && v.Service != service {
			continue
		}
		v.UsedBy = nil
		for _, a := range m.Apps {
			if a.Status != api.StatusDeleting && slices.Contains(a.Uses, v.OSID) {
				v.UsedBy = append(v.UsedBy, a.OSID)
			}
		}
		out = append(out, v)
	}
	return out, nil
}

// Apps lists a cluster's mirrored apps.
func (s *Server) Apps(ref string) ([]api.App, error) {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return nil, err
	}
	m, err := s.store.readWorkloadsOnly(c.ID)
	if err != nil {
		return nil, err
	}
	return m.Apps, nil
}

func (s *Server) workloadRoutes(mux *http.ServeMux) {
	reply := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			httpErr(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
	send := func(w http.ResponseWriter, r *http.Request, kind string, args any) {
		b, _ := json.Marshal(args)
		v, err := s.SendCommand(r.PathValue("c"), kind, b)
		if err != nil {
			httpErr(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusAccepted, v)
	}
	decode := func(w http.ResponseWriter, r *http.Request, v any) bool {
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(v); err != nil {
			httpErr(w, http.StatusBadRequest, fmt.Errorf("malformed request: %w", err))
			return false
		}
		return true
	}
	mux.HandleFunc("GET /clusters/{c}/v1/catalog", func(w http.ResponseWriter, r *http.Request) {
		if _, err := s.store.findCluster(r.PathValue("c")); err != nil {
			httpErr(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusOK, Catalog())
	})
	mux.HandleFunc("GET /clusters/{c}/v1/services", func(w http.ResponseWriter, r *http.Request) {
		v, err := s.Services(r.PathValue("c"), r.URL.Query().Get("type"))
		reply(w, v, err)
	})
	mux.HandleFunc("GET /clusters/{c}/v1/services/{osid}", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("reveal") {
			httpErr(w, http.StatusForbidden, fmt.Errorf("credentials stay in the cluster: use the node's UI or `runos-agent services show --reveal OSID`"))
			return
		}
		v, err := s.Services(r.PathValue("c"), "")
		replyOne(w, r, "service", v, err, func(x api.Service) string { return x.OSID })
	})
	mux.HandleFunc("POST /clusters/{c}/v1/services", func(w http.ResponseWriter, r *http.Request) {
		var req api.ServiceRequest
		if !decode(w, r, &req) {
			return
		}
		// What the cloud can tell at once; the cluster checks the rest.
		if _, ok := templates.Lookup(req.Service); !ok {
			var names []string
			for _, c := range templates.Catalog() {
				names = append(names, c.Name)
			}
			httpErr(w, http.StatusBadRequest, fmt.Errorf("unknown service %q (one of: %s)", req.Service, strings.Join(names, ", ")))
			return
		}
		send(w, r, "deploy_service", req)
	})
	mux.HandleFunc("DELETE /clusters/{c}/v1/services/{osid}", func(w http.ResponseWriter, r *http.Request) {
		send(w, r, "delete_service", cloudproto.DeleteWorkloadArgs{OSID: r.PathValue("osid")})
	})
	mux.HandleFunc("GET /clusters/{c}/v1/apps", func(w http.ResponseWriter, r *http.Request) {
		v, err := s.Apps(r.PathValue("c"))
		reply(w, v, err)
	})
	mux.HandleFunc("GET /clusters/{c}/v1/apps/{osid}", func(w http.ResponseWriter, r *http.Request) {
		v, err := s.Apps(r.PathValue("c"))
		replyOne(w, r, "app", v, err, func(x api.App) string { return x.OSID })
	})
	mux.HandleFunc("POST /clusters/{c}/v1/apps", func(w http.ResponseWriter, r *http.Request) {
		var req api.AppRequest
		if !decode(w, r, &req) {
			return
		}
		if req.Name == "" || req.Image == "" {
			httpErr(w, http.StatusBadRequest, fmt.Errorf("an app needs a name and an image"))
			return
		}
		send(w, r, "deploy_app", req)
	})
	mux.HandleFunc("DELETE /clusters/{c}/v1/apps/{osid}", func(w http.ResponseWriter, r *http.Request) {
		send(w, r, "delete_app", cloudproto.DeleteWorkloadArgs{OSID: r.PathValue("osid")})
	})
}

// replyOne answers with the item of list whose OSID is the request's
// {osid}, or 404.
func replyOne[T any](w http.ResponseWriter, r *http.Request, what string, list []T, err error, osid func(T) string) {
	if err != nil {
		httpErr(w, statusOf(err), err)
		return
	}
	want := r.PathValue("osid")
	for _, x := range list {
		if osid(x) == want {
			writeJSON(w, http.StatusOK, x)
			return
		}
	}
	httpErr(w, http.StatusNotFound, fmt.Errorf("%s %s: no such service or app", what, want))
}

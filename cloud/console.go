package cloud

import (
	"context"
	"embed"
	"net/http"
	"net/url"
	"strings"

	"github.com/runos/runos-agent/ui"
)

// The console on --console-listen: the agent's web UI (package ui, the same
// files, sign-in, sessions, CSRF and rate limits) for each cluster under
// /clusters/{id}/, answered from the mirror, with writes sent as commands;
// a cluster list at /; the JSON API under /api/ behind the same session.

//go:embed console
var consoleFiles embed.FS

type clusterKey struct{}

func (s *Server) consoleHandler() (http.Handler, error) {
	api := s.apiHandler()
	// The shared UI calls its API with paths relative to the cluster
	// (/v1/nodes); the console API answers them as /clusters/{id}/v1/….
	clusterAPI := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := r.Context().Value(clusterKey{}).(string)
		if id == "" {
			httpErr(w, http.StatusNotFound, errNoCluster)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/clusters/" + id + r.URL.Path
		r2.URL.RawPath = ""
		api.ServeHTTP(w, r2)
	})
	app, err := ui.New(ui.Config{API: clusterAPI, Auth: consoleAuth{s.store}, Cluster: "cloud", Mode: "cloud"}, s.log.With("component", "console"))
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		if !app.SignedIn(r) {
			w.Header().Set("Location", "login")
			w.WriteHeader(http.StatusSeeOther)
			return
		}
		s.consoleFile(w, r, "console/index.html", "text/html; charset=utf-8")
	})
	mux.HandleFunc("GET /console.js", func(w http.ResponseWriter, r *http.Request) {
		if !app.SignedIn(r) {
			httpErr(w, http.StatusUnauthorized, errNotSignedIn)
			return
		}
		s.consoleFile(w, r, "console/console.js", "text/javascript; charset=utf-8")
	})
	mux.Handle("/api/", app.Protect(api))
	mux.HandleFunc("/clusters/{c}/", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("c")
		if strings.ContainsAny(id, "/?#%") {
			httpErr(w, http.StatusNotFound, errNoCluster)
			return
		}
		if app.SignedIn(r) {
			// Signed in: an unknown cluster is a clear 404, not an app
			// whose every call fails.
			if _, err := s.store.findCluster(id); err != nil {
				httpErr(w, statusOf(err), err)
				return
			}
		}
		ctx := context.WithValue(r.Context(), clusterKey{}, url.PathEscape(id))
		ui.StripBase("/clusters/"+url.PathEscape(id)+"/", app).ServeHTTP(w, r.WithContext(ctx))
	})
	// Sign-in, sign-out, the session and the UI's files.
	mux.Handle("/", app)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		mux.ServeHTTP(w, r)
	}), nil
}

var errNotSignedIn = errorString("not signed in")

type errorString string

func (e errorString) Error() string { return string(e) }

func (s *Server) consoleFile(w http.ResponseWriter, r *http.Request, name, ctype string) {
	b, err := consoleFiles.ReadFile(name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Write(b)
}

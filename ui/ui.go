// Package ui is the agent's local web UI, embedded in the binary (no
// Node.js to build it). It is a thin client of the local API: every view is
// a fetch of the same /v1 endpoints the CLI uses.
package ui

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var static embed.FS

// Handler serves the UI and, read-only, the local API it draws from. Writes
// (tokens, removals) stay on the unix socket: a browser page on another
// origin must not be able to trigger them through localhost.
func Handler(api http.Handler) http.Handler {
	files, _ := fs.Sub(static, "static")
	fileServer := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				http.Error(w, `{"error":"read-only: use the runos-agent CLI for changes"}`, http.StatusMethodNotAllowed)
				return
			}
			api.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Security-Policy", "default-src 'self'")
		w.Header().Set("X-Frame-Options", "DENY")
		fileServer.ServeHTTP(w, r)
	})
}

//go:build jepsen

package httpapi

import (
	"context"
	"net/http"

	"github.com/runos/runos-agent/api"
)

// Registers serve the test register (raftstore/register.go); only jepsen
// builds have these routes.
type Registers interface {
	WriteRegister(ctx context.Context, req api.RegisterRequest) (*api.Register, error)
	ReadRegister(key string) *api.Register
	TestState() (*api.TestState, error)
}

func (l *local) testRoutes(mux *http.ServeMux) {
	r, ok := l.b.(Registers)
	if !ok {
		return
	}
	mux.HandleFunc("POST /v1/test/register", withBody(1<<10, r.WriteRegister))
	mux.HandleFunc("GET /v1/test/register/{key}", func(w http.ResponseWriter, req *http.Request) {
		if !l.readBarrier(w, req) {
			return
		}
		WriteJSON(w, http.StatusOK, r.ReadRegister(req.PathValue("key")))
	})
	mux.HandleFunc("GET /v1/test/state", func(w http.ResponseWriter, req *http.Request) {
		st, err := r.TestState()
		respond(w, st, err)
	})
}

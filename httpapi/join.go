package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/runos/runos-agent/api"
)

// The join endpoint admits new nodes on the underlay TCP port (TLS with
// the member's certificate; the joiner pins the CA fingerprint from its
// token).

// MaxJoinBody bounds a join request.
const MaxJoinBody = 64 << 10

// Joiner is the member side of a join: it checks the token and the
// request, signs the CSR and commits the new node. Its errors carry
// StatusFor's sentinels or classes: a refused token is ErrForbidden, a
// taken name raftstore.ErrNameTaken, a member not ready ErrUnavailable.
type Joiner interface {
	Admit(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error)
}

// NewJoinHandler returns the join endpoint: POST /v1/join and nothing else.
func NewJoinHandler(j Joiner) (http.Handler, error) {
	if j == nil {
		return nil, errors.New("httpapi: a Joiner is required")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/join" {
			WriteError(w, ErrNotFound)
			return
		}
		var req api.JoinRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxJoinBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			WriteError(w, badRequest("malformed join request: %w", err))
			return
		}
		resp, err := j.Admit(r.Context(), &req)
		if err != nil {
			WriteError(w, err)
			return
		}
		WriteJSON(w, http.StatusOK, resp)
	})
	return mux, nil
}

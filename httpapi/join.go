package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"

	"github.com/runos/runos-agent/api"
)

// The join endpoint admits new nodes on the underlay TCP port (TLS with
// the member's certificate; the joiner pins the CA fingerprint from its
// token). Anyone on the network reaches it: it answers strangers with
// nothing about the cluster, and limits their attempts (JoinLimits).

// MaxJoinBody bounds a join request.
const MaxJoinBody = 64 << 10

// Joiner is the member side of a join: it checks the token and the
// request, signs the CSR and commits the new node. Its errors carry
// StatusFor's sentinels or classes: a refused token is ErrForbidden, a
// taken name raftstore.ErrNameTaken, a member not ready ErrUnavailable.
// Its error messages go to whoever connected: they must not name the
// node or the cluster.
type Joiner interface {
	Admit(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error)
}

// NewJoinHandler returns the join endpoint: POST /v1/join and nothing else,
// rate limited by limits (zero: the defaults). Refused attempts beyond the
// limits get 429 with Retry-After.
func NewJoinHandler(j Joiner, limits JoinLimits) (http.Handler, error) {
	if j == nil {
		return nil, errors.New("httpapi: a Joiner is required")
	}
	lim := newJoinLimiter(limits)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		src := sourceAddr(r)
		if ok, retry := lim.take(src); !ok {
			secs := max(1, int(math.Ceil(retry.Seconds())))
			w.Header().Set("Retry-After", fmt.Sprint(secs))
			WriteJSON(w, http.StatusTooManyRequests, api.Error{Error: fmt.Sprintf("too many join attempts; retry in %d s", secs)})
			return
		}
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
		lim.refund(src)
		WriteJSON(w, http.StatusOK, resp)
	}), nil
}

// sourceAddr is the client's IP address (IPv4-mapped unmapped); the zero
// Addr if RemoteAddr does not parse (every such request shares a bucket).
func sourceAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap().WithZone("")
}

// Package httpapi owns the agent's HTTP surfaces: the local API (served on
// the unix socket in the data dir, and mounted by the web UI behind its
// sign-in), the node API (on the mesh IP, mTLS between members: forwarded
// Raft writes and read indexes, failover checks) with its client, and the
// join endpoint's handler (underlay TCP, TLS). Each is a handler over a small backend
// interface (Local and Workloads, Node, Joiner) that the agent implements,
// so paths, methods, status codes, body shapes and size limits live here and
// nothing else. StatusFor is the one place that maps errors to status codes;
// WriteJSON and WriteError are the one JSON writer and the one error writer.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/workload"
)

// Error classes, for errors no sentinel of their own package describes. A
// backend returns fmt.Errorf("%w: ...", ErrBadRequest) or Classify(err,
// class) and StatusFor maps the class.
var (
	ErrBadRequest  = errors.New("bad request") // 400
	ErrForbidden   = errors.New("forbidden")   // 403
	ErrNotFound    = errors.New("not found")   // 404
	ErrUnavailable = errors.New("unavailable") // 503: try again (elsewhere)
)

// Classify returns err, with its text unchanged, marked as being of class
// (one of the Err classes above) as well.
func Classify(err, class error) error {
	if err == nil {
		return nil
	}
	return &classified{err: err, class: class}
}

type classified struct{ err, class error }

func (c *classified) Error() string   { return c.err.Error() }
func (c *classified) Unwrap() []error { return []error{c.err, c.class} }

// StatusFor maps an error to its HTTP status code. Order matters: an
// error's own sentinel wins over the class a caller marked it with (a
// forwarded write that failed as raftstore.ErrNotLeader is 421, any other
// failure 503), and anything unknown is a 500.
func StatusFor(err error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, workload.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, workload.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, workload.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, raftstore.ErrNoSuchNode):
		return http.StatusNotFound
	case errors.Is(err, raftstore.ErrNameTaken), errors.Is(err, raftstore.ErrKeyTaken),
		errors.Is(err, raftstore.ErrDeviceNameTaken), errors.Is(err, raftstore.ErrDeviceKeyTaken):
		return http.StatusConflict
	case errors.Is(err, raftstore.ErrNoSuchDevice):
		return http.StatusNotFound
	case errors.Is(err, raftstore.ErrAddressSpace):
		return http.StatusConflict
	case errors.Is(err, raftstore.ErrKubeEnabled), errors.Is(err, raftstore.ErrKubeNotEnabled),
		errors.Is(err, raftstore.ErrWorkloadsExist):
		// Managed Kubernetes is on (off) already, or in use: the request
		// clashes with the state, the agent is fine.
		return http.StatusConflict
	case errors.Is(err, raftstore.ErrNotLeader):
		// The forwarder retries at whichever node leads now.
		return http.StatusMisdirectedRequest
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// WriteJSON writes v as the JSON body of a code answer.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// WriteError answers with StatusFor(err) and an api.Error body, the shape
// of every non-2xx answer.
func WriteError(w http.ResponseWriter, err error) {
	WriteJSON(w, StatusFor(err), api.Error{Error: err.Error()})
}

// badRequest is a 400 with a message of its own.
func badRequest(format string, args ...any) error {
	return Classify(fmt.Errorf(format, args...), ErrBadRequest)
}

// decodeBody reads a JSON body of at most limit bytes into v, answering
// 400 itself when it cannot.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, limit int64) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit)).Decode(v); err != nil {
		WriteError(w, badRequest("malformed request: %w", err))
		return false
	}
	return true
}

// NewServer wraps h in an http.Server with the limits every agent listener
// uses; its own errors (TLS handshakes, malformed requests) go to log at
// debug level, as strangers on the network cause them.
func NewServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// onUnixSocket reports whether r came in on a unix socket (the local API's
// own listener, whose file permissions say who may), rather than through
// the web UI's TCP server that mounts the same handler.
func onUnixSocket(r *http.Request) bool {
	addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return ok && addr.Network() == "unix"
}

package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/workload"
)

func TestStatusFor(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("context: %w", err) }
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, http.StatusOK},
		{errors.New("boom"), http.StatusInternalServerError},
		{context.Canceled, http.StatusInternalServerError},
		{raftstore.ErrNotBootstrap, http.StatusInternalServerError},
		{ErrBadRequest, http.StatusBadRequest},
		{fmt.Errorf("%w: invalid ttl", ErrBadRequest), http.StatusBadRequest},
		{wrap(workload.ErrInvalid), http.StatusBadRequest},
		{wrap(workload.ErrNotFound), http.StatusNotFound},
		{wrap(workload.ErrConflict), http.StatusConflict},
		{wrap(raftstore.ErrNoSuchNode), http.StatusNotFound},
		{ErrNotFound, http.StatusNotFound},
		{wrap(raftstore.ErrNameTaken), http.StatusConflict},
		{wrap(raftstore.ErrKeyTaken), http.StatusConflict},
		{wrap(raftstore.ErrKubeEnabled), http.StatusConflict},
		{raftstore.ErrKubeNotEnabled, http.StatusConflict},
		{wrap(raftstore.ErrWorkloadsExist), http.StatusConflict},
		{Classify(errors.New("token of another cluster"), ErrForbidden), http.StatusForbidden},
		{wrap(context.DeadlineExceeded), http.StatusServiceUnavailable},
		{Classify(errors.New("no state yet"), ErrUnavailable), http.StatusServiceUnavailable},
		// An error's own sentinel wins over the class it was marked with.
		{Classify(raftstore.ErrNotLeader, ErrUnavailable), http.StatusMisdirectedRequest},
		{Classify(raftstore.ErrTokenUsed, ErrForbidden), http.StatusForbidden},
		{Classify(raftstore.ErrNameTaken, ErrForbidden), http.StatusConflict},
		{Classify(wrap(context.DeadlineExceeded), ErrUnavailable), http.StatusServiceUnavailable},
		// Workload's classes come first, as they did in the workload routes.
		{fmt.Errorf("%w: %w", workload.ErrNotFound, context.DeadlineExceeded), http.StatusNotFound},
	} {
		if got := StatusFor(tc.err); got != tc.want {
			t.Errorf("StatusFor(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if err := Classify(errors.New("text"), ErrForbidden); err.Error() != "text" {
		t.Errorf("Classify changed the text: %q", err)
	}
	if Classify(nil, ErrForbidden) != nil {
		t.Error("Classify(nil) is not nil")
	}
}

func TestWriteError(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteError(rec, fmt.Errorf("node %q: %w", "x", raftstore.ErrNoSuchNode))
	var e api.Error
	if rec.Code != http.StatusNotFound || rec.Header().Get("Content-Type") != "application/json" ||
		json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error != `node "x": no such node` {
		t.Fatalf("%d %q %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
}

// fakeLocal answers reads from fixed data; consistentErr is what
// ConsistentRead returns.
type fakeLocal struct {
	Local // methods a test does not call
	Workloads

	consistentReads int
	consistentErr   error
	deadline        bool // ConsistentRead saw a deadline
}

func (f *fakeLocal) Nodes() *api.NodesResponse {
	return &api.NodesResponse{Index: 7, Nodes: []api.Node{{Name: "a"}}}
}
func (f *fakeLocal) Status() (*api.Status, error) { return &api.Status{Name: "a"}, nil }
func (f *fakeLocal) ConsistentRead(ctx context.Context) error {
	f.consistentReads++
	_, f.deadline = ctx.Deadline()
	return f.consistentErr
}
func (f *fakeLocal) SetTokenPolicy(context.Context, api.TokenPolicy) (*api.TokenPolicy, error) {
	return &api.TokenPolicy{}, nil
}

func (f *fakeLocal) ResetUIPassword(context.Context) (*api.UIPassword, error) {
	return &api.UIPassword{User: "admin"}, nil
}

func serve(t *testing.T, h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec
}

func TestConsistentParameter(t *testing.T) {
	f := &fakeLocal{}
	h, err := NewLocalHandler(LocalConfig{Local: f, Workloads: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path      string
		code      int
		barriers  int
		bodyMatch string
	}{
		{"/v1/nodes", 200, 0, `"index":7`},
		{"/v1/nodes?consistent=0", 200, 0, `"index":7`},
		{"/v1/nodes?consistent=1", 200, 1, `"index":7`},
		{"/v1/nodes?consistent=true", 200, 1, `"index":7`},
		{"/v1/status?consistent=1", 200, 1, `"name":"a"`},
		{"/v1/nodes?consistent=maybe", 400, 0, `invalid consistent=\"maybe\"`},
	} {
		f.consistentReads = 0
		rec := serve(t, h, "GET", tc.path, "")
		if rec.Code != tc.code || f.consistentReads != tc.barriers || !strings.Contains(rec.Body.String(), tc.bodyMatch) {
			t.Errorf("GET %s: %d %s with %d consistent reads, want %d with %q and %d", tc.path, rec.Code, rec.Body, f.consistentReads, tc.code, tc.bodyMatch, tc.barriers)
		}
		if tc.barriers > 0 && !f.deadline {
			t.Errorf("GET %s: the consistent read had no deadline", tc.path)
		}
	}
	// No stale answer when the leader cannot be reached.
	f.consistentErr = fmt.Errorf("raftstore: consistent read: %w", context.DeadlineExceeded)
	rec := serve(t, h, "GET", "/v1/nodes?consistent=1", "")
	if rec.Code != http.StatusServiceUnavailable || strings.Contains(rec.Body.String(), `"nodes"`) ||
		!strings.Contains(rec.Body.String(), "consistent read needs the leader and a quorum") {
		t.Errorf("failed consistent read: %d %s", rec.Code, rec.Body)
	}
}

func TestResetPasswordOnlyOnUnixSocket(t *testing.T) {
	f := &fakeLocal{}
	h, _ := NewLocalHandler(LocalConfig{Local: f, Workloads: f})
	if rec := serve(t, h, "POST", "/v1/ui/reset-password", ""); rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "unix socket") {
		t.Errorf("reset-password over TCP: %d %s", rec.Code, rec.Body)
	}
}

func TestMalformedBodies(t *testing.T) {
	f := &fakeLocal{}
	h, _ := NewLocalHandler(LocalConfig{Local: f, Workloads: f})
	for _, path := range []string{"/v1/tokens", "/v1/cloud/connect", "/v1/services", "/v1/apps"} {
		if rec := serve(t, h, "POST", path, "{"); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "malformed request") {
			t.Errorf("POST %s with a broken body: %d %s", path, rec.Code, rec.Body)
		}
	}
	if rec := serve(t, h, "POST", "/v1/tokens", `{"ttl":"`+strings.Repeat("x", 1<<16)+`"}`); rec.Code != http.StatusBadRequest {
		t.Errorf("oversized token request: %d", rec.Code)
	}
	for _, path := range []string{"/v1/events?after=x", "/v1/events?wait=-1s"} {
		if rec := serve(t, h, "GET", path, ""); rec.Code != http.StatusBadRequest {
			t.Errorf("GET %s: %d %s", path, rec.Code, rec.Body)
		}
	}
}

type fakeJoiner struct {
	called bool
	err    error
}

func (j *fakeJoiner) Admit(_ context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	j.called = true
	if j.err != nil {
		return nil, j.err
	}
	return &api.JoinResponse{ClusterID: "c", Node: &api.NodeRecord{Name: req.Name}}, nil
}

func TestJoinHandler(t *testing.T) {
	for _, tc := range []struct {
		method, path, body string
		err                error
		code               int
		want               string
		admitted           bool
	}{
		{"GET", "/v1/join", "", nil, 404, `{"error":"not found"}`, false},
		{"POST", "/v1/other", "{}", nil, 404, "not found", false},
		{"POST", "/v1/join", `{"name":"b","extra":1}`, nil, 400, "malformed join request", false},
		{"POST", "/v1/join", `{"token":"` + strings.Repeat("x", MaxJoinBody) + `"}`, nil, 400, "malformed join request", false},
		{"POST", "/v1/join", `{"name":"b"}`, nil, 200, `"cluster_id":"c"`, true},
		{"POST", "/v1/join", `{"name":"b"}`, Classify(errors.New("join token belongs to another cluster"), ErrForbidden), 403, "another cluster", true},
		{"POST", "/v1/join", `{"name":"b"}`, Classify(raftstore.ErrNameTaken, ErrForbidden), 409, "taken", true},
		{"POST", "/v1/join", `{"name":"b"}`, Classify(raftstore.ErrTokenUsed, ErrForbidden), 403, "used", true},
		{"POST", "/v1/join", `{"name":"b"}`, Classify(errors.New("not committed"), ErrUnavailable), 503, "not committed", true},
	} {
		j := &fakeJoiner{err: tc.err}
		h, err := NewJoinHandler(j, JoinLimits{})
		if err != nil {
			t.Fatal(err)
		}
		rec := serve(t, h, tc.method, tc.path, tc.body)
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) || j.called != tc.admitted {
			t.Errorf("%s %s %.40s: %d %s (admitted %v), want %d with %q", tc.method, tc.path, tc.body, rec.Code, rec.Body, j.called, tc.code, tc.want)
		}
	}
}

type fakeNode struct{ err error }

func (n fakeNode) ApplyLocal(_ context.Context, cmd *raftstore.Command) (*raftstore.Result, error) {
	if n.err != nil {
		return nil, n.err
	}
	return &raftstore.Result{Index: 9}, nil
}

func TestNodeHandler(t *testing.T) {
	good, _ := json.Marshal(&raftstore.Command{ID: "x", Time: time.Now(), Op: raftstore.OpEvent})
	for _, tc := range []struct {
		body string
		err  error
		code int
	}{
		{"{", nil, 400},
		{`{"op":"event"}`, nil, 400}, // no id, no time
		{string(good), nil, 200},
		{string(good), raftstore.ErrNotLeader, 421},
		{string(good), errors.New("leadership lost while committing log"), 503},
		{string(good), fmt.Errorf("apply: %w", context.DeadlineExceeded), 503},
	} {
		h, _ := NewNodeHandler(fakeNode{tc.err}, nil)
		if rec := serve(t, h, "POST", "/v1/raft/apply", tc.body); rec.Code != tc.code {
			t.Errorf("%s with %v: %d %s, want %d", tc.body, tc.err, rec.Code, rec.Body, tc.code)
		}
	}
}

// The node client and handler speak the same protocol; a refusal comes
// back as an error naming the leader.
func TestNodeClient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{raftstore.ErrNotLeader, `leader 127.0.0.1: 421 Misdirected Request: not the raft leader`},
	} {
		h, _ := NewNodeHandler(fakeNode{tc.err}, nil)
		srv := httptest.NewTLSServer(h)
		c, err := NewNodeClient(srv.Client(), 1)
		if err != nil {
			t.Fatal(err)
		}
		c.port = portOf(t, srv.URL)
		res, err := c.Apply(context.Background(), "127.0.0.1", &raftstore.Command{ID: "x", Time: time.Now(), Op: raftstore.OpEvent})
		c.Close()
		srv.Close()
		switch {
		case tc.want == "" && (err != nil || res.Index != 9):
			t.Errorf("apply: %v %v", res, err)
		case tc.want != "" && (err == nil || err.Error() != tc.want):
			t.Errorf("apply refused: %v, want %q", err, tc.want)
		}
	}
	if _, err := NewNodeClient(nil, 7948); err == nil {
		t.Error("NewNodeClient without an http.Client")
	}
}

func portOf(t *testing.T, url string) int {
	t.Helper()
	i := strings.LastIndex(url, ":")
	var p int
	if _, err := fmt.Sscan(url[i+1:], &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConstructorsRejectMissingBackends(t *testing.T) {
	f := &fakeLocal{}
	if _, err := NewLocalHandler(LocalConfig{Workloads: f}); err == nil {
		t.Error("NewLocalHandler without Local")
	}
	if _, err := NewLocalHandler(LocalConfig{Local: f}); err == nil {
		t.Error("NewLocalHandler without Workloads")
	}
	if _, err := NewJoinHandler(nil, JoinLimits{}); err == nil {
		t.Error("NewJoinHandler without a Joiner")
	}
	if _, err := NewNodeHandler(nil, nil); err == nil {
		t.Error("NewNodeHandler without a Node")
	}
}

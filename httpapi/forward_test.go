package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runos/runos-agent/raftstore"
)

// scriptedNode is a leader that answers each command by its ID: "fail-*"
// as a node that no longer leads, anything else with a result naming the
// ID. It counts every command it is handed and can hold them until
// released.
type scriptedNode struct {
	hold chan struct{} // nil: answer at once

	mu   sync.Mutex
	seen map[string]int // guarded by mu
}

func newScriptedNode(hold bool) *scriptedNode {
	n := &scriptedNode{seen: map[string]int{}}
	if hold {
		n.hold = make(chan struct{})
	}
	return n
}

func (n *scriptedNode) ApplyLocal(ctx context.Context, cmd *raftstore.Command) (*raftstore.Result, error) {
	n.mu.Lock()
	n.seen[cmd.ID]++
	n.mu.Unlock()
	if n.hold != nil {
		<-n.hold
	}
	if strings.HasPrefix(cmd.ID, "fail-") {
		return nil, raftstore.ErrNotLeader
	}
	id, _ := json.Marshal(cmd.ID)
	return &raftstore.Result{Index: 7, Data: id}, nil
}

func (n *scriptedNode) count(id string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.seen[id]
}

func (n *scriptedNode) total() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.seen)
}

// requestCounter counts the requests h serves, by path.
type requestCounter struct {
	h     http.Handler
	batch atomic.Int64
	one   atomic.Int64
	// refuseBatch answers the batch endpoint 404, as an agent from before
	// batching does.
	refuseBatch bool
}

func (rc *requestCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/raft/apply-batch":
		rc.batch.Add(1)
		if rc.refuseBatch {
			http.NotFound(w, r)
			return
		}
	case "/v1/raft/apply":
		rc.one.Add(1)
	}
	rc.h.ServeHTTP(w, r)
}

// startLeader serves node's API over TLS on loopback and returns a client
// for it (the leader's name is 127.0.0.1).
func startLeader(t *testing.T, node Node, refuseBatch bool) (*NodeClient, *requestCounter) {
	t.Helper()
	h, err := NewNodeHandler(node, nil)
	if err != nil {
		t.Fatal(err)
	}
	rc := &requestCounter{h: h, refuseBatch: refuseBatch}
	srv := httptest.NewTLSServer(rc)
	t.Cleanup(srv.Close)
	c, err := NewNodeClient(srv.Client(), 1)
	if err != nil {
		t.Fatal(err)
	}
	c.port = portOf(t, srv.URL)
	t.Cleanup(func() { c.Close() })
	return c, rc
}

func forwarded(id string) *raftstore.Command {
	return &raftstore.Command{ID: id, Time: time.Now(), Op: raftstore.OpEvent}
}

// pending is how many commands wait in c's queue for leader.
func (c *NodeClient) pending(leader string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q := c.queues[leader]; q != nil {
		return len(q.pending)
	}
	return 0
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second) // a hung test's safety net
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Commands forwarded at once travel together: while the first batches are
// committed, the rest queue and leave as one request. Each caller gets its
// own command's answer, and one that fails fails only its caller.
func TestNodeClientBatchesAndRoutesResults(t *testing.T) {
	node := newScriptedNode(true)
	c, rc := startLeader(t, node, false)

	const callers = 64
	type answer struct {
		res *raftstore.Result
		err error
	}
	answers := make([]answer, callers)
	ids := make([]string, callers)
	var wg sync.WaitGroup
	for i := range callers {
		ids[i] = fmt.Sprintf("res-%d", i)
		if i%8 == 3 {
			ids[i] = fmt.Sprintf("fail-%d", i)
		}
		wg.Go(func() {
			res, err := c.Apply(context.Background(), "127.0.0.1", forwarded(ids[i]))
			answers[i] = answer{res, err}
		})
	}
	// Every command is either held at the leader or queued, and every
	// sender has a batch in flight.
	waitUntil(t, "all commands forwarded or queued", func() bool {
		return node.total()+c.pending("127.0.0.1") == callers && rc.batch.Load() == defaultSenders
	})
	close(node.hold)
	wg.Wait()

	if n := rc.batch.Load(); n > defaultSenders+2 {
		t.Errorf("%d commands took %d batch requests; want at most %d", callers, n, defaultSenders+2)
	}
	if n := rc.one.Load(); n != 0 {
		t.Errorf("%d one-command requests", n)
	}
	for i, a := range answers {
		if got := node.count(ids[i]); got != 1 {
			t.Errorf("%s reached the leader %d times", ids[i], got)
		}
		if strings.HasPrefix(ids[i], "fail-") {
			if a.err == nil || !strings.Contains(a.err.Error(), "421") || !strings.Contains(a.err.Error(), "not the raft leader") {
				t.Errorf("%s: %v %v, want its own 421", ids[i], a.res, a.err)
			}
			continue
		}
		if a.err != nil {
			t.Errorf("%s failed with another command's error: %v", ids[i], a.err)
			continue
		}
		var got string
		if err := json.Unmarshal(a.res.Data, &got); err != nil || got != ids[i] {
			t.Errorf("%s got the result of %q (%v)", ids[i], got, err)
		}
	}
	t.Logf("%d commands in %d batch requests", callers, rc.batch.Load())
}

// A leader from before batching (no batch endpoint) gets one request per
// command, and every command still gets its answer.
func TestNodeClientFallsBackWithoutBatches(t *testing.T) {
	node := newScriptedNode(false)
	c, rc := startLeader(t, node, true)
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			id := fmt.Sprintf("res-%d", i)
			res, err := c.Apply(context.Background(), "127.0.0.1", forwarded(id))
			var got string
			if err == nil {
				err = json.Unmarshal(res.Data, &got)
			}
			if err != nil || got != id {
				t.Errorf("%s: %q %v", id, got, err)
			}
		})
	}
	wg.Wait()
	if rc.one.Load() != 10 {
		t.Errorf("%d one-command requests for 10 commands", rc.one.Load())
	}
	if b := rc.batch.Load(); b == 0 || b > defaultSenders {
		t.Errorf("the batch endpoint was tried %d times", b)
	}
}

// A caller that gives up while its command waits in the queue takes it
// out: the leader never sees it. Close ends the batches in flight, and
// Apply fails once closed.
func TestNodeClientCallerGivesUpAndClose(t *testing.T) {
	node := newScriptedNode(true)
	c, rc := startLeader(t, node, false)
	c.senders = 1

	first := make(chan error, 1)
	go func() {
		_, err := c.Apply(context.Background(), "127.0.0.1", forwarded("res-first"))
		first <- err
	}()
	waitUntil(t, "the first command at the leader", func() bool { return node.count("res-first") == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := c.Apply(ctx, "127.0.0.1", forwarded("res-gave-up"))
		gaveUp <- err
	}()
	waitUntil(t, "the second command queued", func() bool { return c.pending("127.0.0.1") == 1 })
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("a caller that gave up: %v", err)
	}
	close(node.hold)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if _, err := c.Apply(context.Background(), "127.0.0.1", forwarded("res-after")); err != nil {
		t.Fatal(err)
	}
	if node.count("res-gave-up") != 0 {
		t.Error("the leader was sent a command whose caller had given up")
	}
	if n := rc.batch.Load(); n != 2 {
		t.Errorf("%d batch requests, want 2", n)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.Apply(context.Background(), "127.0.0.1", forwarded("res-closed")); err == nil {
		t.Error("Apply after Close succeeded")
	}
}

// Close does not wait for a leader that does not answer: the batch in
// flight ends and its caller hears so.
func TestNodeClientCloseEndsBatchInFlight(t *testing.T) {
	node := newScriptedNode(true)
	defer close(node.hold)
	c, _ := startLeader(t, node, false)
	done := make(chan error, 1)
	go func() {
		_, err := c.Apply(context.Background(), "127.0.0.1", forwarded("res-stuck"))
		done <- err
	}()
	waitUntil(t, "the command at the leader", func() bool { return node.count("res-stuck") == 1 })
	c.Close()
	if err := <-done; err == nil {
		t.Error("a batch cut by Close reported success")
	}
}

// The batch endpoint checks each command as the one-command endpoint does
// and answers each by itself; a batch must hold 1 to maxBatch commands.
func TestApplyBatchHandler(t *testing.T) {
	h, _ := NewNodeHandler(newScriptedNode(false), nil)
	good := func(id string) string {
		b, _ := json.Marshal(forwarded(id))
		return string(b)
	}
	rec := serve(t, h, "POST", "/v1/raft/apply-batch",
		`{"commands":[`+good("res-1")+`,{"op":"event"},`+good("fail-2")+`,"nonsense"]}`)
	if rec.Code != http.StatusOK {
		t.Fatalf("batch: %d %s", rec.Code, rec.Body)
	}
	var out batchResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || len(out.Results) != 4 {
		t.Fatalf("batch answer: %v %s", err, rec.Body)
	}
	if r := out.Results[0]; r.Status != 0 || r.Result == nil || r.Result.Index != 7 {
		t.Errorf("good command: %+v", r)
	}
	if r := out.Results[1]; r.Status != http.StatusBadRequest || !strings.Contains(r.Error, "lacks id or time") {
		t.Errorf("command without id: %+v", r)
	}
	if r := out.Results[2]; r.Status != http.StatusMisdirectedRequest {
		t.Errorf("refused command: %+v", r)
	}
	if r := out.Results[3]; r.Status != http.StatusBadRequest {
		t.Errorf("malformed command: %+v", r)
	}

	many := `{"commands":[` + strings.Repeat(good("res-x")+",", maxBatch) + good("res-x") + `]}`
	for _, body := range []string{`{"commands":[]}`, `{`, many} {
		if rec := serve(t, h, "POST", "/v1/raft/apply-batch", body); rec.Code != http.StatusBadRequest {
			t.Errorf("batch %.30s...: %d, want 400", body, rec.Code)
		}
	}
}

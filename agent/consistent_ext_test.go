package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/agent"
	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
)

// Consistent reads (`nodes --consistent`, GET /v1/nodes?consistent=1) go
// through the leader's read index: they reflect every write acknowledged
// before them, on whichever node, or fail; plain reads answer at once from
// the node's own copy.
func TestConsistentReads(t *testing.T) {
	c := agenttest.Start(t, 4)
	var followers []int
	for i := range c.Len() {
		if !c.Agent(i).Store().IsLeader() {
			followers = append(followers, i)
		}
	}
	if len(followers) != 3 {
		t.Fatalf("%d followers of 4 nodes", len(followers))
	}
	gone, via, reader := followers[0], followers[1], followers[2]
	goneName := c.Agent(gone).Name()
	viaAPI, readerAPI := api.NewClient(c.Dirs()[via]), api.NewClient(c.Dirs()[reader])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// A removal acknowledged through one follower is in the very next
	// consistent read on another, though that one may apply it later.
	c.Stop(gone)
	if err := viaAPI.RemoveNode(ctx, goneName); err != nil {
		t.Fatalf("remove %s through %s: %v", goneName, c.Agent(via).Name(), err)
	}
	nodes, err := readerAPI.Nodes(ctx, api.Consistent)
	if err != nil {
		t.Fatalf("consistent read on %s: %v", c.Agent(reader).Name(), err)
	}
	if len(nodes.Nodes) != 3 || slices.ContainsFunc(nodes.Nodes, func(n api.Node) bool { return n.Name == goneName }) {
		t.Fatalf("consistent read on %s after removing %s: %d nodes %v", c.Agent(reader).Name(), goneName, len(nodes.Nodes), nodes.Nodes)
	}
	c.WaitVoters(3)

	// Every write, at once: the read's index covers it and the reader's
	// copy holds it.
	for i := range 5 {
		detail := fmt.Sprintf("consistent-read-%d", i)
		res, err := c.Agent(via).Store().Apply(ctx, &raftstore.Command{Op: raftstore.OpEvent,
			Event: &raftstore.Event{Kind: "test", Detail: detail}})
		if err == nil {
			err = res.Error()
		}
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		nodes, err := readerAPI.Nodes(ctx, api.Consistent)
		if err != nil {
			t.Fatalf("consistent read %d: %v", i, err)
		}
		if nodes.Index < res.Index {
			t.Fatalf("consistent read %d reflects index %d, before the write's %d", i, nodes.Index, res.Index)
		}
		if !hasEvent(c.Agent(reader), detail) {
			t.Fatalf("consistent read %d: the reader's state lacks the write", i)
		}
	}
	if _, err := readerAPI.Status(ctx, api.Consistent); err != nil {
		t.Fatalf("consistent status: %v", err)
	}

	// Cut off from the quorum, the reader still answers plain reads from
	// its copy, but a consistent read fails rather than pass stale data
	// off as current.
	c.Isolate(reader)
	res, err := c.Leader().Store().Apply(ctx, &raftstore.Command{Op: raftstore.OpEvent,
		Event: &raftstore.Event{Kind: "test", Detail: "behind the partition"}})
	if err != nil || res.Error() != nil {
		t.Fatalf("write on the majority side: %v %v", err, res.Error())
	}
	plain, err := readerAPI.Nodes(ctx)
	if err != nil || len(plain.Nodes) != 3 {
		t.Fatalf("plain read on the isolated node: %v", err)
	}
	if plain.Index >= res.Index {
		t.Fatalf("the isolated node has index %d, the majority's write is %d: not isolated", plain.Index, res.Index)
	}
	for _, path := range []string{"/v1/nodes?consistent=1", "/v1/status?consistent=1"} {
		rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
		rec := httptest.NewRecorder()
		t0 := time.Now()
		c.Agent(reader).LocalAPIHandler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil).WithContext(rctx))
		rcancel()
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "consistent read needs the leader and a quorum") {
			t.Errorf("GET %s on the isolated node: %d %s, want 503 and a clear error", path, rec.Code, rec.Body)
		}
		t.Logf("GET %s on the isolated node: %d after %s: %s", path, rec.Code, time.Since(t0).Round(time.Millisecond), strings.TrimSpace(rec.Body.String()))
	}
}

func hasEvent(a *agent.Agent, detail string) bool {
	return slices.ContainsFunc(a.Events(0).Events, func(e api.Event) bool { return e.Detail == detail })
}

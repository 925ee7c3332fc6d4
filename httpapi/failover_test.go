package httpapi

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/runos/runos-agent/raftstore"
)

type fakeFailoverNode struct {
	fakeNode
	campaignErr error
}

func (fakeFailoverNode) RaftProbe() raftstore.Probe {
	return raftstore.Probe{Reached: true, Answered: true, Term: 4, Leader: true}
}

func (fakeFailoverNode) CheckLeader(_ context.Context, s raftstore.Suspicion) raftstore.Verdict {
	return raftstore.Verdict{Unreachable: s.Leader == "gone", CanCampaign: true, LastTerm: s.Term, LastIndex: 7}
}

func (n fakeFailoverNode) Campaign(raftstore.Suspicion) error { return n.campaignErr }

// The failover routes exist only on a node that can answer them, and the
// client and handler agree on them.
func TestFailoverRoutes(t *testing.T) {
	h, _ := NewNodeHandler(fakeNode{}, nil)
	if rec := serve(t, h, "GET", "/v1/raft/probe", ""); rec.Code != 404 {
		t.Errorf("probe on a node without failover: %d", rec.Code)
	}
	h, _ = NewNodeHandler(fakeFailoverNode{campaignErr: errors.New("not confirmed")}, nil)
	if rec := serve(t, h, "POST", "/v1/raft/check", `{"term":3}`); rec.Code != 400 {
		t.Errorf("check without a leader: %d", rec.Code)
	}
	srv := httptest.NewTLSServer(h)
	defer srv.Close()
	c, err := NewNodeClient(srv.Client(), 1)
	if err != nil {
		t.Fatal(err)
	}
	c.port = portOf(t, srv.URL)
	ctx := context.Background()
	if p, err := c.Probe(ctx, "127.0.0.1"); err != nil || !p.Answered || !p.Leader || p.Term != 4 {
		t.Errorf("probe: %+v %v", p, err)
	}
	if v, err := c.CheckLeader(ctx, "127.0.0.1", raftstore.Suspicion{Leader: "gone", Term: 3}); err != nil || !v.Unreachable || v.LastTerm != 3 || v.LastIndex != 7 {
		t.Errorf("check: %+v %v", v, err)
	}
	if err := c.Campaign(ctx, "127.0.0.1", raftstore.Suspicion{Leader: "gone", Term: 3}); err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "not confirmed") {
		t.Errorf("refused campaign: %v", err)
	}
}

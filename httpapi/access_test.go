package httpapi

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
)

// fakeAccessNode serves wg1 up to index applied.
type fakeAccessNode struct {
	applied atomic.Uint64
}

func (*fakeAccessNode) KubeComponents() *api.KubeNodeComponents          { return nil }
func (*fakeAccessNode) ImportImageHere(context.Context, io.Reader) error { return nil }
func (*fakeAccessNode) AccessStats() ([]api.AccessPeerStats, error)      { return nil, nil }
func (n *fakeAccessNode) AccessApplied(ctx context.Context, index uint64) error {
	for n.applied.Load() < index {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// Another node asks whether wg1 here serves an index: answered at once
// when it does, once it does, and with the reason when it does not in
// time; a malformed index is the asker's error.
func TestAccessAppliedRoute(t *testing.T) {
	n := &fakeAccessNode{}
	n.applied.Store(7)
	h, err := NewNodeHandler(fakeNode{}, n)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"", "?index=", "?index=-1", "?index=x"} {
		if rec := serve(t, h, "GET", "/v1/access/applied"+q, ""); rec.Code != 400 {
			t.Errorf("index %q: %d, want 400", q, rec.Code)
		}
	}
	srv := httptest.NewTLSServer(h)
	defer srv.Close()
	c, err := NewNodeClient(srv.Client(), 1)
	if err != nil {
		t.Fatal(err)
	}
	c.port = portOf(t, srv.URL)
	ctx := context.Background()
	if err := c.AccessApplied(ctx, "127.0.0.1", 7); err != nil {
		t.Errorf("applied index: %v", err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		n.applied.Store(9)
	}()
	if err := c.AccessApplied(ctx, "127.0.0.1", 9); err != nil {
		t.Errorf("index applied while waiting: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := c.AccessApplied(short, "127.0.0.1", 10); err == nil {
		t.Error("an index never applied was confirmed")
	}
	// A request that ends before wg1 catches up gets the reason.
	n2 := &fakeAccessNode{}
	h2, _ := NewNodeHandler(fakeNode{}, n2)
	rctx, rcancel := context.WithCancel(ctx)
	rcancel()
	rec := httptest.NewRecorder()
	h2.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/access/applied?index=1", nil).WithContext(rctx))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "has not applied index 1") {
		t.Errorf("not applied: %d %s", rec.Code, rec.Body)
	}
}

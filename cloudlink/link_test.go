package cloudlink_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloud"
	"github.com/runos/runos-agent/cloudlink"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// fsmHost is the link's seam filled with a real FSM applied in-process: a
// one-node "cluster" whose leadership the test switches.
type fsmHost struct {
	fsm    *raftstore.FSM
	mu     sync.Mutex
	idx    uint64 // guarded by mu
	leader atomic.Bool
}

func (h *fsmHost) IsLeader() bool                    { return h.leader.Load() }
func (h *fsmHost) State() (*raftstore.State, uint64) { return h.fsm.State() }
func (h *fsmHost) Changed() <-chan struct{}          { return h.fsm.Changed() }
func (h *fsmHost) Apply(_ context.Context, cmd *raftstore.Command) (*raftstore.Result, error) {
	if cmd.ID == "" {
		cmd.ID = raftstore.NewCommandID()
	}
	if cmd.Time.IsZero() {
		cmd.Time = time.Now().UTC()
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.idx++
	return h.fsm.Apply(&raft.Log{Index: h.idx, Data: b}).(*raftstore.Result), nil
}
func (h *fsmHost) Nodes() []api.Node {
	st, _ := h.fsm.State()
	var out []api.Node
	for _, n := range st.SortedNodes() {
		out = append(out, api.Node{ID: n.ID, Name: n.Name, MeshIP: n.MeshIP.String(), Health: api.Healthy, LastHeartbeatSeconds: 0.5})
	}
	return out
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

func TestLinkLeaderOnlyBackoffAndResume(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	srv, err := cloud.New(cloud.Config{DataDir: dir, Listen: "127.0.0.1:0"}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	defer func() { srv.Close() }()

	h := &fsmHost{fsm: raftstore.NewFSM()}
	ctx := context.Background()
	if res, _ := h.Apply(ctx, &raftstore.Command{Op: raftstore.OpBootstrap, Bootstrap: &raftstore.BootstrapCmd{
		ClusterID: "c1", Node: raftstore.Node{ID: "n1", Name: "n1", PublicKey: "k", MeshIP: raftstore.FirstMeshIP(), PodCIDR: raftstore.FirstPodCIDR()},
	}}); res.Error() != nil {
		t.Fatal(res.Err)
	}
	key, _ := seal.NewKey()
	tok, _ := srv.CreateToken("x", time.Hour)
	reg, err := cloudlink.Register(ctx, srv.URL(), tok.Token, "c1", key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := cloudlink.New(cloudlink.Config{Host: h, DataKey: key, NodeName: "n1", BackoffMax: 300 * time.Millisecond,
		JoinToken: func(id, secret string) (string, string) { return id + "." + secret, "" }}, log)
	if err != nil {
		t.Fatal(err)
	}
	l.Start(ctx)
	defer l.Close()
	if s := l.Status(); s.State != cloudlink.StateOff {
		t.Fatalf("before registration: %+v", s)
	}
	h.Apply(ctx, &raftstore.Command{Op: raftstore.OpCloudRegister, Cloud: &raftstore.CloudCmd{Register: reg}})
	eventually(t, "standby while not leader", func() error {
		if s := l.Status(); s.State != cloudlink.StateStandby {
			return fmt.Errorf("state %s", s.State)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	if _, ok := srv.ClusterConnected("x"); ok {
		t.Fatal("a follower connected")
	}
	h.leader.Store(true)
	synced := func(what string) {
		t.Helper()
		eventually(t, what, func() error {
			st, _ := h.State()
			last := st.Cloud.Changes[len(st.Cloud.Changes)-1].Index
			m, err := srv.MirrorOf("x")
			if err != nil {
				return err
			}
			if !m.Cluster.Connected || m.Cluster.Cursor < last || l.Status().State != cloudlink.StateConnected {
				return fmt.Errorf("connected=%v cursor %d < %d, link %s", m.Cluster.Connected, m.Cluster.Cursor, last, l.Status().State)
			}
			return nil
		})
	}
	synced("leader connects and syncs")
	for i := range 50 {
		h.Apply(ctx, &raftstore.Command{Op: raftstore.OpEvent, Event: &raftstore.Event{Kind: "test", Detail: fmt.Sprint(i)}})
	}
	synced("changes flow")
	ev, _ := srv.Events("x", 0)
	if n := len(ev.Events); n != 51 {
		t.Fatalf("%d events mirrored, want 51", n)
	}

	h.leader.Store(false)
	eventually(t, "session handed over", func() error {
		if _, ok := srv.ClusterConnected("x"); ok || l.Status().State != cloudlink.StateStandby {
			return errors.New("still connected")
		}
		return nil
	})
	h.leader.Store(true)
	synced("reconnects as leader")

	// The cloud goes away: backoff, honest status, changes queue.
	srv.Close()
	eventually(t, "backoff", func() error {
		s := l.Status()
		if s.State != cloudlink.StateBackoff || s.LastError == "" || s.NextRetry.IsZero() || time.Until(s.NextRetry) > 300*time.Millisecond {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
	for i := range 20 {
		h.Apply(ctx, &raftstore.Command{Op: raftstore.OpEvent, Event: &raftstore.Event{Kind: "offline", Detail: fmt.Sprint(i)}})
	}
	var err2 error
	for range 50 {
		if srv, err2 = cloud.New(cloud.Config{DataDir: dir, Listen: addr}, log); err2 == nil {
			if err2 = srv.Start(ctx); err2 == nil {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err2 != nil {
		t.Fatal(err2)
	}
	synced("resumes after the cloud is back")
	m, _ := srv.MirrorOf("x")
	if m.Cluster.Resyncs != 1 || !strings.Contains(fmt.Sprint(m.Events[len(m.Events)-1].Detail), "19") {
		t.Fatalf("resyncs %d, last event %+v", m.Cluster.Resyncs, m.Events[len(m.Events)-1])
	}
	if st, _ := h.State(); st.Cloud.AckIndex == 0 {
		t.Fatal("ack cursor never persisted")
	}

	// Refusals show in the status with their reason; nothing local waits.
	if err := srv.Revoke("x"); err != nil {
		t.Fatal(err)
	}
	backoffWith := func(want string) {
		t.Helper()
		eventually(t, "backoff: "+want, func() error {
			if s := l.Status(); s.State != cloudlink.StateBackoff && s.State != cloudlink.StateConnecting || !strings.Contains(s.LastError, want) {
				return fmt.Errorf("%+v", s)
			}
			return nil
		})
	}
	backoffWith("revoked")
	if res, err := h.Apply(ctx, &raftstore.Command{Op: raftstore.OpEvent, Event: &raftstore.Event{Kind: "still-works"}}); err != nil || res.Error() != nil {
		t.Fatal("a local write failed while the cloud refuses us")
	}
	// An impostor at the cloud's address (another CA) is not trusted.
	srv.Close()
	for range 50 {
		if srv, err2 = cloud.New(cloud.Config{DataDir: t.TempDir(), Listen: addr}, log); err2 == nil {
			if err2 = srv.Start(ctx); err2 == nil {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err2 != nil {
		t.Fatal(err2)
	}
	backoffWith("fingerprint mismatch")
}

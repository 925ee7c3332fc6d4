package cloudlink_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloud"
	"github.com/runos/runos-agent/cloudlink"
	"github.com/runos/runos-agent/leader"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/raftstore/raftstoretest"
	"github.com/runos/runos-agent/seal"
)

// fsmHost is the link's seam over raftstoretest's in-memory store (the real
// FSM, always the leader of its one-node cluster); every node is healthy.
type fsmHost struct{ *raftstoretest.Store }

// newHost returns a host over a bootstrapped state: cluster c1, node n1.
func newHost(t *testing.T) *fsmHost {
	t.Helper()
	s, err := raftstoretest.NewBootstrapped("c1")
	if err != nil {
		t.Fatal(err)
	}
	return &fsmHost{s}
}

func (h *fsmHost) Nodes() []api.Node {
	st, _ := h.State()
	var out []api.Node
	for _, n := range st.SortedNodes() {
		out = append(out, api.Node{ID: n.ID, Name: n.Name, MeshIP: n.MeshIP.String(), Health: api.Healthy, LastHeartbeatSeconds: 0.5})
	}
	return out
}

// leadership runs a link's session as the agent does: a task of a
// leader.Loop, whose leadership the test switches.
type leadership struct {
	changes chan bool
	leading atomic.Bool
}

// runSessionWhileLeading starts a leader loop for l, leading or not; the
// loop stops at the end of the test, before the link (closed by the
// caller's earlier cleanup or defer).
func runSessionWhileLeading(t *testing.T, l *cloudlink.Link, leading bool) *leadership {
	t.Helper()
	ld := &leadership{changes: make(chan bool, 1)}
	ld.leading.Store(leading)
	loop, err := leader.New(leader.Config{
		Changes:  ld.changes,
		IsLeader: ld.leading.Load,
		Tasks:    []leader.Task{{Name: "cloud-session", Run: l.RunSession}},
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	loop.Start(context.Background())
	t.Cleanup(func() { loop.Close() })
	return ld
}

// set reports a leadership change (the latest value wins, as raft's
// LeaderCh).
func (ld *leadership) set(leading bool) {
	ld.leading.Store(leading)
	select {
	case <-ld.changes:
	default:
	}
	ld.changes <- leading
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

	h := newHost(t)
	ctx := context.Background()
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
	t.Cleanup(func() { l.Close() })
	lead := runSessionWhileLeading(t, l, false)
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
	lead.set(true)
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

	lead.set(false)
	eventually(t, "session handed over", func() error {
		if _, ok := srv.ClusterConnected("x"); ok || l.Status().State != cloudlink.StateStandby {
			return errors.New("still connected")
		}
		return nil
	})
	lead.set(true)
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

// The link reports connecting, connected or backoff exactly while its
// session task runs, standby (or not registered) at once when it returns.
func TestStatusFollowsTheSessionTask(t *testing.T) {
	h := newHost(t)
	key, _ := seal.NewKey()
	l, err := cloudlink.New(cloudlink.Config{Host: h, DataKey: key, NodeName: "n1", BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
		JoinToken: func(id, secret string) (string, string) { return id + "." + secret, "" }}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.RunSession(context.Background()); err == nil {
		t.Fatal("RunSession before Start succeeded")
	}
	l.Start(context.Background())
	t.Cleanup(func() { l.Close() })
	if s := l.Status(); s.State != cloudlink.StateOff {
		t.Fatalf("not registered, no session: %+v", s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.RunSession(ctx) }()
	// A registration whose key does not open: every attempt fails before
	// any traffic, and the session backs off.
	if res, _ := h.Apply(ctx, &raftstore.Command{Op: raftstore.OpCloudRegister, Cloud: &raftstore.CloudCmd{Register: &raftstore.CloudRegistration{
		URL: "https://127.0.0.1:9", CloudClusterID: "x", CAFingerprint: "f", ClientCertPEM: []byte("c"), ClientKeySealed: "not sealed",
	}}}); res.Error() != nil {
		t.Fatal(res.Err)
	}
	eventually(t, "backoff while the session runs", func() error {
		if s := l.Status(); s.State != cloudlink.StateBackoff && s.State != cloudlink.StateConnecting || !strings.Contains(s.LastError, "cloud client key") {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
	if err := l.RunSession(context.Background()); err == nil {
		t.Fatal("a second session ran")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("RunSession: %v", err)
	}
	if s := l.Status(); s.State != cloudlink.StateStandby {
		t.Fatalf("right after the session task returned: %+v", s)
	}
	if res, _ := h.Apply(context.Background(), &raftstore.Command{Op: raftstore.OpCloudDisconnect, Cloud: &raftstore.CloudCmd{}}); res.Error() != nil {
		t.Fatal(res.Err)
	}
	eventually(t, "not registered", func() error {
		if s := l.Status(); s.State != cloudlink.StateOff {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
	// Close ends a running session.
	start := func() { go func() { done <- l.RunSession(context.Background()) }() }
	start()
	over, end := context.WithCancel(context.Background())
	end()
	eventually(t, "session running", func() error {
		select {
		case err := <-done:
			// The probe below ran at that instant and the session task
			// found it running: start the task again.
			if err == nil || !strings.Contains(err.Error(), "already running") {
				return fmt.Errorf("session task: %v", err)
			}
			start()
			return errors.New("session task restarted")
		default:
		}
		// With a context already done, a RunSession that gets to run
		// returns at once.
		if err := l.RunSession(over); err == nil || !strings.Contains(err.Error(), "already running") {
			return fmt.Errorf("second RunSession: %v", err)
		}
		return nil
	})
	l.Close()
	if err := <-done; err != nil {
		t.Fatalf("RunSession after Close: %v", err)
	}
}

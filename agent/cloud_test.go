package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloud"
	"github.com/runos/runos-agent/cloudlink"
	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
)

// testCloud is a real runos-cloud server on 127.0.0.1 that can be stopped
// and started again on the same address and data dir.
type testCloud struct {
	tb   testing.TB
	dir  string
	addr string
	srv  *cloud.Server
}

func startCloud(tb testing.TB) *testCloud {
	tc := &testCloud{tb: tb, dir: tb.TempDir(), addr: "127.0.0.1:0"}
	tc.start()
	tb.Cleanup(tc.stop)
	return tc
}

func (tc *testCloud) start() {
	tc.tb.Helper()
	var err error
	for range 50 { // the old listener's port may take a moment to free
		var s *cloud.Server
		if s, err = cloud.New(cloud.Config{DataDir: tc.dir, Listen: tc.addr}, testLogger(tc.tb)); err == nil {
			if err = s.Start(context.Background()); err == nil {
				tc.srv, tc.addr = s, s.Addr()
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	tc.tb.Fatal(err)
}

func (tc *testCloud) stop() {
	if tc.srv != nil {
		tc.srv.Close()
		tc.srv = nil
	}
}

// connect registers the cluster through agent a (any node).
func connectCloud(tb testing.TB, tc *testCloud, a *Agent, name string) string {
	tb.Helper()
	tok, err := tc.srv.CreateToken(name, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := a.CloudConnect(ctx, api.CloudConnectRequest{URL: tc.srv.URL(), Token: tok.Token}); err != nil {
		tb.Fatal(err)
	}
	return tok.ClusterID
}

// waitMirror waits until the cloud's mirror equals the cluster's state as
// the leader sees it: the same nodes (ID, name, mesh IP), tokens, events,
// services and apps (OSID and status).
func waitMirror(tb testing.TB, c *cluster, tc *testCloud, id string) *cloud.Mirror {
	tb.Helper()
	var m *cloud.Mirror
	eventually(tb, "mirror equals the cluster state", func() error {
		l := c.leader()
		if l == nil {
			return errors.New("no leader")
		}
		st, idx := l.store.State()
		var err error
		if m, err = tc.srv.MirrorOf(id); err != nil {
			return err
		}
		if !m.Cluster.Connected {
			return errors.New("cluster not connected")
		}
		if l.CloudStatus().Pending != 0 {
			return fmt.Errorf("%d changes pending (state index %d, cloud cursor %d)", l.CloudStatus().Pending, idx, m.Cluster.Cursor)
		}
		var want, got []string
		for _, n := range st.SortedNodes() {
			want = append(want, n.ID+"/"+n.Name+"/"+n.MeshIP.String())
		}
		for _, n := range m.Nodes {
			got = append(got, n.ID+"/"+n.Name+"/"+n.MeshIP)
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(want, got) {
			return fmt.Errorf("nodes: mirror %v, cluster %v", got, want)
		}
		want, got = nil, nil
		for id := range st.Tokens {
			want = append(want, id)
		}
		for _, t := range m.Tokens {
			got = append(got, t.ID)
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(want, got) {
			return fmt.Errorf("tokens: mirror %v, cluster %v", got, want)
		}
		want, got = nil, nil
		for _, r := range st.Workloads.Services {
			want = append(want, r.OSID+"/"+r.Status.Phase+"/"+r.Status.Reason)
		}
		for _, r := range st.Workloads.Apps {
			want = append(want, r.OSID+"/"+r.Status.Phase+"/"+r.Status.Reason)
		}
		for _, w := range m.Services {
			got = append(got, w.OSID+"/"+w.Status+"/"+w.Reason)
		}
		for _, w := range m.Apps {
			got = append(got, w.OSID+"/"+w.Status+"/"+w.Reason)
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(want, got) {
			return fmt.Errorf("workloads: mirror %v, cluster %v", got, want)
		}
		mev := map[string]bool{}
		for _, e := range m.Events {
			mev[fmt.Sprintf("%d/%s/%s", e.Seq, e.Kind, e.Node)] = true
		}
		for _, e := range st.Events {
			if !mev[fmt.Sprintf("%d/%s/%s", e.Seq, e.Kind, e.Node)] {
				return fmt.Errorf("event %d %s/%s: not in the mirror", e.Seq, e.Kind, e.Node)
			}
		}
		return nil
	})
	return m
}

func TestCloudRegisterShowsNodesAndHealth(t *testing.T) {
	c := newCluster(t, 3)
	tc := startCloud(t)
	f := c.follower()
	// A token pinned to another CA: refused, nothing stored.
	bad := cloudproto.RegToken{CAFingerprint: strings.Repeat("1", 64), ID: "0123456789ab", Secret: strings.Repeat("2", 32)}
	if _, err := f.CloudConnect(context.Background(), api.CloudConnectRequest{URL: tc.srv.URL(), Token: bad.String()}); err == nil || !strings.Contains(err.Error(), "fingerprint mismatch") {
		t.Fatalf("connect with a wrong fingerprint: %v", err)
	}
	if st, _ := f.store.State(); st.Cloud.Registration != nil {
		t.Fatal("a refused registration was stored")
	}
	t0 := time.Now()
	id := connectCloud(t, tc, f, "lab")
	// Visible within 10 s of registration (the bound).
	deadline := t0.Add(10 * time.Second)
	for {
		n, err := tc.srv.Nodes("lab")
		ok := err == nil && len(n.Nodes) == 3
		for _, x := range n.Nodes {
			ok = ok && x.Health == api.Healthy && x.LastHeartbeatSeconds >= 0
		}
		if ok {
			t.Logf("3 healthy nodes in the cloud %v after connect", time.Since(t0).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes in the cloud after 10 s: %+v (err %v)", n, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitMirror(t, c, tc, id)
	// Only the leader holds the session; the others say so. Leadership
	// may move under a loaded test machine: ask who leads each time.
	eventually(t, "statuses", func() error {
		l := c.leader()
		if l == nil {
			return errors.New("no leader")
		}
		for _, a := range c.running() {
			s, want := a.CloudStatus(), cloudlink.StateStandby
			if a == l {
				want = cloudlink.StateConnected
			}
			if s.State != want || s.Holder != l.Name() || !s.Registered {
				return fmt.Errorf("%s's status (leader %s): %+v", a.Name(), l.Name(), s)
			}
		}
		return nil
	})
	// The client key is in Raft only sealed.
	st, _ := f.store.State()
	if b, _ := json.Marshal(st); strings.Contains(string(b), "PRIVATE KEY") {
		t.Fatal("the cloud client key is stored in plaintext")
	}
	// Connecting twice is refused with a clear error.
	tok, _ := tc.srv.CreateToken("lab", time.Hour)
	if _, err := f.CloudConnect(context.Background(), api.CloudConnectRequest{URL: tc.srv.URL(), Token: tok.Token}); err == nil || !strings.Contains(err.Error(), "already connected") {
		t.Fatalf("second connect: %v", err)
	}
	// The mirror serves the agent's read paths in the agent's shapes.
	ev, err := tc.srv.Events(id, 0)
	if err != nil || len(ev.Events) == 0 || ev.Events[0].Kind != raftstore.EventNodeJoined {
		t.Fatalf("mirror events: %+v %v", ev, err)
	}
	// A cloud that lost its mirror gets a full resync.
	before, _ := tc.srv.MirrorOf(id)
	if err := tc.srv.ResetMirror(id); err != nil {
		t.Fatal(err)
	}
	after := waitMirror(t, c, tc, id)
	if after.Cluster.Resyncs != before.Cluster.Resyncs+1 {
		t.Fatalf("resyncs %d -> %d", before.Cluster.Resyncs, after.Cluster.Resyncs)
	}
	// Disconnect ends the session; the cloud sees it.
	if _, err := f.CloudDisconnect(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "session ends after disconnect", func() error {
		cs, _ := tc.srv.Clusters()
		if len(cs) != 1 || cs[0].Connected {
			return fmt.Errorf("clusters: %+v", cs)
		}
		if s := c.waitLeader().CloudStatus(); s.State != cloudlink.StateOff {
			return fmt.Errorf("leader state %s", s.State)
		}
		return nil
	})
}

// addNode joins a new node to the cluster through member a and starts it.
func (c *cluster) addNode(a *Agent) {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.dc.AddNode(ctx, a); err != nil {
		c.tb.Fatal(err)
	}
	c.agents, c.dirs = c.dc.Agents, c.dc.Dirs
}

func TestCloudDownLosesNothing(t *testing.T) {
	c := newCluster(t, 3)
	tc := startCloud(t)
	id := connectCloud(t, tc, c.agents[0], "lab")
	waitMirror(t, c, tc, id)
	first, _ := tc.srv.MirrorOf(id)

	tc.stop()
	eventually(t, "leader notices the cloud is gone", func() error {
		if s := c.waitLeader().CloudStatus(); s.State != cloudlink.StateBackoff || s.LastError == "" || s.NextRetry.IsZero() {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	// Everything local works meanwhile.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.follower().CreateToken(ctx, api.TokenRequest{TTL: "1h"}); err != nil {
		t.Fatal(err)
	}
	// Services deployed and deleted locally meanwhile reach the mirror
	// too (waitMirror compares them).
	if _, err := c.follower().DeployService(ctx, api.ServiceRequest{Service: "redis"}); err != nil {
		t.Fatal(err)
	}
	gone, err := c.waitLeader().DeployService(ctx, api.ServiceRequest{Service: "postgres"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.waitLeader().DeleteWorkload(ctx, gone.OSID, false); err != nil {
		t.Fatal(err)
	}
	c.addNode(c.follower())
	victim := c.follower().Name()
	if err := c.waitLeader().RemoveNode(ctx, victim); err != nil {
		t.Fatal(err)
	}
	for i, a := range c.agents {
		if a != nil && a.Name() == victim {
			c.stop(i)
		}
	}
	for i, a := range c.agents {
		if a != nil && !a.store.IsLeader() {
			c.stop(i)
			c.start(i)
			break
		}
	}
	c.waitFormed(3)
	if s := c.waitLeader().CloudStatus(); s.Pending == 0 || s.State == cloudlink.StateConnected {
		t.Fatalf("status while the cloud is down: %+v", s)
	}
	// Metrics say the same.
	mh, err := c.waitLeader().metricsHandler()
	if err != nil {
		t.Fatal(err)
	}
	ms := httptest.NewServer(mh)
	defer ms.Close()
	eventually(t, "metrics show the link down with a backlog", func() error {
		s, err := scrapeMetrics(ms.URL + "/metrics")
		if err != nil {
			return err
		}
		if v, _ := s.value("runos_cloud_link_state", "state", "connected"); v != 0 {
			return errors.New("connected = 1")
		}
		if v, _ := s.value("runos_cloud_outbox_pending"); v == 0 {
			return errors.New("nothing pending")
		}
		return nil
	})
	old := c.leader()
	for i, a := range c.agents {
		if a == old {
			c.stop(i)
		}
	}
	if _, err := c.running()[0].CreateToken(ctx, api.TokenRequest{TTL: "1h"}); err != nil {
		t.Fatalf("write after the leader died, cloud down: %v", err)
	}
	if c.leader() == nil || c.leader() == old {
		t.Fatal("no new leader")
	}

	tc.start()
	m := waitMirror(t, c, tc, id)
	// Each change arrived once, resumed from the cursor (no second full
	// resync), and every change the cluster made since is there.
	if m.Cluster.Resyncs != first.Cluster.Resyncs {
		t.Errorf("resyncs %d -> %d: the cursor was not resumed", first.Cluster.Resyncs, m.Cluster.Resyncs)
	}
	st, _ := c.waitLeader().store.State()
	got := map[uint64]bool{}
	for _, i := range m.Changes {
		got[i] = true
	}
	for _, ch := range st.Cloud.Changes {
		if ch.Index > first.Cluster.Cursor && !got[ch.Index] {
			t.Errorf("change %d (%s) missing from the mirror", ch.Index, ch.Op)
		}
	}
	if !slices.IsSorted(m.Changes) || len(slices.Compact(slices.Clone(m.Changes))) != len(m.Changes) {
		t.Errorf("mirror change log not unique: %v", m.Changes)
	}
	t.Logf("cloud caught up: %d changes applied, %d duplicates ignored", m.Cluster.ChangesApplied, m.Cluster.Duplicates)
}

func TestCloudCommandOnceAcrossLeaderChange(t *testing.T) {
	c := newCluster(t, 3)
	tc := startCloud(t)
	id := connectCloud(t, tc, c.agents[0], "lab")
	waitMirror(t, c, tc, id)
	st0, _ := c.waitLeader().store.State()

	// Connected with the default (deploy): join tokens need admin, which
	// only a local caller grants.
	args, _ := json.Marshal(cloudproto.CreateTokenArgs{TTL: "1h"})
	refused, err := tc.srv.SendCommand(id, "create_token", args)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "refusal answered", func() error {
		r, _ := tc.srv.Command(id, refused.ID)
		if r.State != cloud.CmdFailed || !strings.Contains(r.Result.Error, "--allow admin") {
			return fmt.Errorf("%s %+v", r.State, r.Result)
		}
		return nil
	})
	if s := c.agents[1].CloudStatus(); s.Allow != raftstore.CloudAllowDeploy {
		t.Fatalf("status allow %q, want deploy", s.Allow)
	}
	if _, err := c.agents[1].CloudAllow(context.Background(), api.CloudAllowRequest{Allow: "root"}); err == nil {
		t.Fatal("unknown level accepted")
	}
	if s, err := c.agents[1].CloudAllow(context.Background(), api.CloudAllowRequest{Allow: raftstore.CloudAllowAdmin}); err != nil || s.Allow != raftstore.CloudAllowAdmin {
		t.Fatalf("cloud allow admin: %+v %v", s, err)
	}
	rec, err := tc.srv.SendCommand(id, "create_token", args)
	if err != nil {
		t.Fatal(err)
	}
	old, oldIdx := c.leader(), 0
	for i, a := range c.agents {
		if a == old {
			oldIdx = i
			c.stop(i)
		}
	}
	eventually(t, "command answered", func() error {
		r, err := tc.srv.Command(id, rec.ID)
		if err != nil {
			return err
		}
		if r.State == cloud.CmdPending {
			return fmt.Errorf("still pending after %d sends", r.Attempts)
		}
		rec = r
		return nil
	})
	if rec.State != cloud.CmdDone {
		t.Fatalf("command failed: %+v", rec.Result)
	}
	t.Logf("create_token sent %d times across the leader change; answer replayed=%v", rec.Attempts, rec.Result.Replayed)
	var tok api.Token
	if err := json.Unmarshal(rec.Result.Data, &tok); err != nil {
		t.Fatal(err)
	}
	parsed, err := datadir.ParseToken(tok.Token)
	if err != nil {
		t.Fatal(err)
	}
	l := c.leader()
	st, _ := l.store.State()
	if got := st.Tokens[parsed.ID]; got == nil || got.SecretHash != pki.HashSecret(parsed.Secret) {
		t.Fatal("the token the cloud got is not the one stored")
	}
	if len(st.Tokens) != len(st0.Tokens)+1 {
		t.Fatalf("%d tokens, want %d: applied more than once", len(st.Tokens), len(st0.Tokens)+1)
	}

	// A replayed command ID is refused: the recorded outcome, nothing new.
	// The cluster's link moves to the new leader after the change, so the
	// resend waits for it (and is repeated if it went to a closing session).
	replays := rec.Replays
	var sent time.Time
	eventually(t, "replay answered", func() error {
		if r, _ := tc.srv.Command(id, rec.ID); r.Replays > replays {
			return nil
		}
		if time.Since(sent) < time.Second {
			return errors.New("no replay answer yet")
		}
		if err := tc.srv.Resend(id, rec.ID); err != nil {
			return err
		}
		sent = time.Now()
		return errors.New("resent")
	})
	if st2, _ := l.store.State(); len(st2.Tokens) != len(st.Tokens) {
		t.Fatal("a replayed command was applied again")
	}

	// Remove a node through the cloud: once, with its event. (The old
	// leader comes back first, so two of three voters remain.)
	c.start(oldIdx)
	c.waitFormed(3)
	victim := c.follower().Name()
	args, _ = json.Marshal(cloudproto.RemoveNodeArgs{Name: victim})
	rm, err := tc.srv.SendCommand(id, "remove_node", args)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "remove answered", func() error {
		r, _ := tc.srv.Command(id, rm.ID)
		if r.State == cloud.CmdPending {
			return errors.New("pending")
		}
		rm = r
		return nil
	})
	if rm.State != cloud.CmdDone {
		t.Fatalf("remove failed: %+v", rm.Result)
	}
	st, _ = c.waitLeader().store.State()
	if st.NodeByName(victim) != nil {
		t.Fatal("node still there")
	}
	// Unknown kinds and bad args come back as clear errors.
	if _, err := tc.srv.SendCommand(id, "format_disk", nil); err == nil {
		t.Fatal("unknown kind accepted by the cloud")
	}
	bad, _ := tc.srv.SendCommand(id, "remove_node", json.RawMessage(`{"name":"nope"}`))
	eventually(t, "bad remove answered", func() error {
		r, _ := tc.srv.Command(id, bad.ID)
		if r.State != cloud.CmdFailed || !strings.Contains(r.Result.Error, "no such node") {
			return fmt.Errorf("%+v %+v", r.State, r.Result)
		}
		return nil
	})
	waitMirror(t, c, tc, id)
}

// A service deployed from the cloud (sent while the leader goes down) is
// created once, with its status, and
// the mirror lists it as the cluster's local API does; a delete from the
// cloud removes it from the cluster and then from the mirror. (No
// Kubernetes target: pending "no Kubernetes cluster set" is the real
// status then, and a delete is purged at once.)
func TestCloudDeployServiceCommand(t *testing.T) {
	c := newCluster(t, 3)
	tc := startCloud(t)
	id := connectCloud(t, tc, c.agents[0], "lab")
	waitMirror(t, c, tc, id)

	run := func(kind string, args any) *cloud.CommandRecord {
		t.Helper()
		b, _ := json.Marshal(args)
		rec, err := tc.srv.SendCommand(id, kind, b)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, kind+" answered", func() error {
			r, err := tc.srv.Command(id, rec.ID)
			if err != nil {
				return err
			}
			if r.State == cloud.CmdPending {
				return errors.New("pending")
			}
			rec = r
			return nil
		})
		return rec
	}
	// Sent while the leader goes down: applied once, by whichever leader
	// gets it, and the answer names that instance.
	b, _ := json.Marshal(api.ServiceRequest{Service: "postgres", Tier: "lightweight", Set: map[string]string{"storage": "2Gi"}})
	rec, err := tc.srv.SendCommand(id, "deploy_service", b)
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range c.agents {
		if a == c.leader() {
			c.stop(i)
			break
		}
	}
	eventually(t, "deploy answered across the leader change", func() error {
		r, err := tc.srv.Command(id, rec.ID)
		if err != nil {
			return err
		}
		if r.State == cloud.CmdPending {
			return fmt.Errorf("pending after %d sends", r.Attempts)
		}
		rec = r
		return nil
	})
	t.Logf("deploy_service sent %d times across the leader change; answer replayed=%v", rec.Attempts, rec.Result.Replayed)
	if rec.State != cloud.CmdDone {
		t.Fatalf("deploy failed: %+v", rec.Result)
	}
	var svc api.Service
	if err := json.Unmarshal(rec.Result.Data, &svc); err != nil || !strings.HasPrefix(svc.OSID, "postgres-") {
		t.Fatalf("deploy result %s: %v", rec.Result.Data, err)
	}
	// Every node's local API shows the one instance.
	for _, a := range c.agents {
		if a == nil {
			continue
		}
		eventually(t, a.Name()+" lists the instance", func() error {
			list := a.Services("")
			if len(list) != 1 || list[0].OSID != svc.OSID || list[0].Set["storage"] != "2Gi" {
				return fmt.Errorf("%+v", list)
			}
			return nil
		})
	}
	// The mirror lists it with the status the cluster shows.
	local := c.waitLeader().Services("")[0]
	eventually(t, "mirror lists the instance with its status", func() error {
		list, err := tc.srv.Services(id, "")
		if err != nil {
			return err
		}
		if len(list) != 1 || list[0].OSID != svc.OSID || list[0].Status != local.Status || list[0].Reason != local.Reason ||
			!strings.Contains(list[0].Reason, "no Kubernetes cluster set") || list[0].Connection != nil {
			return fmt.Errorf("mirror %+v, cluster %+v", list, local)
		}
		return nil
	})
	// The result can be told again (resend) without a second instance.
	replays := rec.Replays
	if err := tc.srv.Resend(id, rec.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "replay answered", func() error {
		if r, _ := tc.srv.Command(id, rec.ID); r.Replays <= replays {
			return errors.New("no replay answer yet")
		}
		return nil
	})
	if n := len(c.waitLeader().Services("")); n != 1 {
		t.Fatalf("%d instances after a replay", n)
	}
	// A bad deploy is a clear command error.
	if r := run("deploy_service", api.ServiceRequest{Service: "postgres", Set: map[string]string{"colour": "blue"}}); r.State != cloud.CmdFailed || !strings.Contains(r.Result.Error, `unknown setting "colour"`) {
		t.Fatalf("bad --set: %+v", r.Result)
	}

	if r := run("delete_service", cloudproto.DeleteWorkloadArgs{OSID: svc.OSID}); r.State != cloud.CmdDone {
		t.Fatalf("delete failed: %+v", r.Result)
	}
	eventually(t, "gone from the cluster and the mirror", func() error {
		if n := len(c.waitLeader().Services("")); n != 0 {
			return fmt.Errorf("cluster has %d instances", n)
		}
		list, err := tc.srv.Services(id, "")
		if err != nil {
			return err
		}
		if len(list) != 0 {
			return fmt.Errorf("mirror %+v", list)
		}
		return nil
	})
	waitMirror(t, c, tc, id)
}

// A credential re-issue (what a node removal asks for): the leader renews
// the cloud client certificate over its session and reconnects with it;
// a session with the old one (a removed node's copy) is refused and the
// cluster's session stays.
func TestCloudCredentialReissue(t *testing.T) {
	c := newCluster(t, 3)
	tc := startCloud(t)
	id := connectCloud(t, tc, c.agents[0], "lab")
	waitMirror(t, c, tc, id)
	l := c.waitLeader()
	st, _ := l.store.State()
	old := *st.Cloud.Registration
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if res, err := c.agents[1].store.Apply(ctx, &raftstore.Command{Op: raftstore.OpCloudRotate, Cloud: &raftstore.CloudCmd{}}); err != nil || res.Error() != nil {
		t.Fatal(err, res.Error())
	}
	eventually(t, "credential re-issued on every node, session up", func() error {
		for _, a := range c.agents {
			st, _ := a.store.State()
			if st.Cloud.RotateCredential || slices.Equal(st.Cloud.Registration.ClientCertPEM, old.ClientCertPEM) {
				return fmt.Errorf("%s: rotation pending %v", a.Name(), st.Cloud.RotateCredential)
			}
		}
		if s := l.CloudStatus(); s.State != cloudlink.StateConnected {
			return fmt.Errorf("leader's link %s", s.State)
		}
		return nil
	})
	holder, ok := tc.srv.ClusterConnected(id)
	err := oldCertSession(t, tc, &old, l)
	if err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("session with the old certificate: %v, want refused", err)
	}
	if now, ok2 := tc.srv.ClusterConnected(id); !ok || !ok2 || now != holder {
		t.Fatalf("cluster session %q/%v, before %q/%v", now, ok2, holder, ok)
	}
	waitMirror(t, c, tc, id)
}

// oldCertSession tries to open a session with reg's certificate and returns
// the cloud's refusal (nil: upgraded).
func oldCertSession(t *testing.T, tc *testCloud, reg *raftstore.CloudRegistration, a *Agent) error {
	keyPEM, err := a.keys.Open(raftstore.CloudKeyPurpose, reg.ClientKeySealed)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(reg.ClientCertPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := pki.PinnedClientConfig(reg.CAFingerprint)
	cfg.Certificates = []tls.Certificate{cert}
	conn, err := tls.Dial("tcp", tc.srv.Addr(), cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	io.WriteString(conn, "GET "+cloudproto.LinkPath+" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: "+cloudproto.LinkProtocol+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	return nil
}

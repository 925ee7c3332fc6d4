package cloudlink_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/cloud"
	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// The cloud's attacks (issue 12): a cloud that may deploy mints join
// tokens or removes nodes; a cloud that may do everything mints a token
// for a century; a removed node opens the cluster's session with the
// credential it copied and drops the real leader's.

// cloudEvent returns the cloud_command event naming command id.
func cloudEvent(h *fsmHost, id string) *raftstore.Event {
	st, _ := h.State()
	for i := len(st.Events) - 1; i >= 0; i-- {
		if e := st.Events[i]; e.Kind == "cloud_command" && strings.Contains(e.Detail, id) {
			return &e
		}
	}
	return nil
}

func TestAttackDeployLevelCloudCannotMintTokensOrRemoveNodes(t *testing.T) {
	srv, h, _ := linkedCluster(t) // connected with the default: deploy
	st0, _ := h.State()

	tok := runCommand(t, srv, "create_token", cloudproto.CreateTokenArgs{TTL: "1h", Uses: 1})
	if tok.State != cloud.CmdFailed || !strings.Contains(tok.Result.Error, "admin") {
		t.Fatalf("create_token from a deploy-level cloud: %s %+v, want refused (needs admin)", tok.State, tok.Result)
	}
	rm := runCommand(t, srv, "remove_node", cloudproto.RemoveNodeArgs{Name: "n1"})
	if rm.State != cloud.CmdFailed || !strings.Contains(rm.Result.Error, "admin") {
		t.Fatalf("remove_node from a deploy-level cloud: %s %+v, want refused (needs admin)", rm.State, rm.Result)
	}
	st, _ := h.State()
	if len(st.Tokens) != len(st0.Tokens) || st.NodeByName("n1") == nil {
		t.Fatalf("refused commands changed the cluster: %d tokens (was %d), n1 present %v", len(st.Tokens), len(st0.Tokens), st.NodeByName("n1") != nil)
	}
	for _, rec := range []*cloud.CommandRecord{tok, rm} {
		e := cloudEvent(h, rec.ID)
		if e == nil || !strings.Contains(e.Detail, rec.Kind) || !strings.Contains(e.Detail, "refused") {
			t.Errorf("no refusal event for %s %s: %+v", rec.Kind, rec.ID, e)
		}
	}
	// Workloads are what deploy allows: executed, with its event.
	dep := runCommand(t, srv, "delete_service", cloudproto.DeleteWorkloadArgs{OSID: "redis-aaaaa"})
	if e := cloudEvent(h, dep.ID); e == nil || !strings.Contains(e.Detail, "delete_service") {
		t.Errorf("no event for the executed delete_service: %+v (result %+v)", e, dep.Result)
	}
	// The refusal is remembered: a resend gets it again, applies nothing.
	if err := srv.Resend("x", tok.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "resend answered", func() error {
		r, _ := srv.Command("x", tok.ID)
		if r.Replays == 0 {
			return fmt.Errorf("no replay answer yet")
		}
		return nil
	})
	if st, _ := h.State(); len(st.Tokens) != len(st0.Tokens) {
		t.Fatal("a resent refused command minted a token")
	}
}

func TestAttackReadLevelCloudExecutesNothing(t *testing.T) {
	srv, h, _ := linkedClusterAllow(t, "read")
	st0, _ := h.State()
	rec := runCommand(t, srv, "deploy_service", map[string]any{"service": "redis"})
	if rec.State != cloud.CmdFailed || !strings.Contains(rec.Result.Error, "deploy") {
		t.Fatalf("deploy_service from a read-level cloud: %s %+v, want refused", rec.State, rec.Result)
	}
	if st, _ := h.State(); len(st.Workloads.Services) != len(st0.Workloads.Services) {
		t.Fatal("a read-level cloud deployed a service")
	}
	if e := cloudEvent(h, rec.ID); e == nil || !strings.Contains(e.Detail, "refused") {
		t.Errorf("no refusal event: %+v", e)
	}
}

func TestAttackCloudTokenPolicy(t *testing.T) {
	srv, h, _ := linkedClusterAllow(t, "admin")
	st0, _ := h.State()
	for _, a := range []cloudproto.CreateTokenArgs{
		{TTL: "876000h", Uses: 1}, // a century
		{TTL: "1h", Uses: 1000},
		{TTL: "25h"},
		{Uses: 11},
	} {
		rec := runCommand(t, srv, "create_token", a)
		if rec.State != cloud.CmdFailed || !strings.Contains(rec.Result.Error, "token policy") {
			t.Errorf("create_token %+v: %s %+v, want refused by the token policy", a, rec.State, rec.Result)
		}
	}
	if st, _ := h.State(); len(st.Tokens) != len(st0.Tokens) {
		t.Fatalf("%d tokens, want %d: the policy let one through", len(st.Tokens), len(st0.Tokens))
	}
	// Within the policy: created, as asked.
	rec := runCommand(t, srv, "create_token", cloudproto.CreateTokenArgs{TTL: "24h", Uses: 10})
	if rec.State != cloud.CmdDone {
		t.Fatalf("create_token within the policy: %+v", rec.Result)
	}
	st, _ := h.State()
	if len(st.Tokens) != len(st0.Tokens)+1 {
		t.Fatal("token within the policy not created")
	}
	for _, tk := range st.Tokens {
		if tk.UsesLeft > 10 || tk.ExpiresAt.After(rec.CreatedAt.Add(24*time.Hour)) {
			t.Errorf("token beyond the policy: %+v", tk)
		}
	}
	if e := cloudEvent(h, rec.ID); e == nil || !strings.Contains(e.Detail, "create_token") {
		t.Errorf("no event for the executed create_token: %+v", e)
	}
}

// stolenHello opens a session with a copy of the registration and the
// data key, as a removed node that kept them would, and says hello as the
// leader "impostor". It returns the cloud's answer, or its refusal.
func stolenHello(t *testing.T, srv *cloud.Server, reg *raftstore.CloudRegistration, key seal.Key) (*cloudproto.Msg, error) {
	t.Helper()
	keyPEM, err := seal.Open(key, raftstore.CloudKeyPurpose, reg.ClientKeySealed)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(reg.ClientCertPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	tc := pki.PinnedClientConfig(reg.CAFingerprint)
	tc.Certificates = []tls.Certificate{cert}
	conn, err := tls.Dial("tcp", srv.Addr(), tc)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET "+cloudproto.LinkPath+" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: "+cloudproto.LinkProtocol+"\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("refused: %s %s", resp.Status, b)
	}
	if err := cloudproto.WriteFrame(conn, &cloudproto.Msg{Type: cloudproto.MsgHello, Hello: &cloudproto.Hello{
		CloudClusterID: reg.CloudClusterID, ClusterID: "c1", Node: "impostor"}}); err != nil {
		return nil, err
	}
	return cloudproto.ReadFrame(br)
}

func TestAttackOldCloudCredentialAfterRotation(t *testing.T) {
	srv, h, key := linkedCluster(t)
	ctx := context.Background()
	st, _ := h.State()
	stolen := *st.Cloud.Registration // what a node removed now keeps
	stolen.ClientCertPEM = slices.Clone(stolen.ClientCertPEM)

	// The removal asks for a new credential; the leader re-issues it over
	// its session and reconnects with it.
	if res, err := h.Apply(ctx, &raftstore.Command{Op: raftstore.OpCloudRotate, Cloud: &raftstore.CloudCmd{}}); err != nil || res.Error() != nil {
		t.Logf("rotation request: %v %v", err, res.Error())
	}
	deadline := time.Now().Add(15 * time.Second)
	rotated := false
	for time.Now().Before(deadline) && !rotated {
		st, _ := h.State()
		_, connected := srv.ClusterConnected("x")
		rotated = connected && !st.Cloud.RotateCredential && !slices.Equal(st.Cloud.Registration.ClientCertPEM, stolen.ClientCertPEM)
		time.Sleep(20 * time.Millisecond)
	}
	if !rotated {
		t.Error("the leader did not re-issue the cloud credential")
	}

	m, err := stolenHello(t, srv, &stolen, key)
	leader, ok := srv.ClusterConnected("x")
	if err == nil && m.Type == cloudproto.MsgWelcome {
		t.Fatalf("a session with the old certificate was accepted (the cloud's session is now held by %q, connected %v)", leader, ok)
	}
	if err == nil && (m.Type != cloudproto.MsgError || !strings.Contains(m.Error, "replaced")) {
		t.Fatalf("old certificate: answered %+v, want a refusal", m)
	}
	if err != nil && !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("old certificate: %v, want refused as replaced", err)
	}
	if !ok || leader != "n1" {
		t.Fatalf("the real leader's session was dropped: held by %q, connected %v", leader, ok)
	}
	// The new credential keeps working: commands still flow.
	rec := runCommand(t, srv, "delete_service", cloudproto.DeleteWorkloadArgs{OSID: "redis-bbbbb"})
	if rec.Result == nil {
		t.Fatalf("no result after rotation: %+v", rec)
	}
}

package cloudlink_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloud"
	"github.com/runos/runos-agent/cloudlink"
	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// linkedCluster is a one-node FSM cluster registered with a real cloud
// over TLS on 127.0.0.1, its link connected.
func linkedCluster(t *testing.T) (*cloud.Server, *fsmHost, seal.Key) {
	t.Helper()
	return linkedClusterAllow(t, "")
}

// linkedClusterAllow is linkedCluster with the cloud's power chosen at
// connect ("": the default, deploy).
func linkedClusterAllow(t *testing.T, allow string) (*cloud.Server, *fsmHost, seal.Key) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := cloud.New(cloud.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	h := newHost(t)
	ctx := context.Background()
	key, _ := seal.NewKey()
	tok, _ := srv.CreateToken("x", time.Hour)
	reg, err := cloudlink.Register(ctx, srv.URL(), tok.Token, "c1", key)
	if err != nil {
		t.Fatal(err)
	}
	reg.Allow = allow
	h.Apply(ctx, &raftstore.Command{Op: raftstore.OpCloudRegister, Cloud: &raftstore.CloudCmd{Register: reg}})
	l, err := cloudlink.New(cloudlink.Config{Host: h, DataKey: key, NodeName: "n1", BackoffMax: 300 * time.Millisecond,
		JoinToken: func(id, secret string) (string, string) { return id + "." + secret, "" }}, log)
	if err != nil {
		t.Fatal(err)
	}
	l.Start(ctx)
	t.Cleanup(func() { l.Close() })
	runSessionWhileLeading(t, l, true)
	eventually(t, "connected", func() error {
		if _, ok := srv.ClusterConnected("x"); !ok {
			return errors.New("not connected")
		}
		return nil
	})
	return srv, h, key
}

// runCommand sends a command and waits for its recorded outcome.
func runCommand(t *testing.T, srv *cloud.Server, kind string, args any) *cloud.CommandRecord {
	t.Helper()
	b, _ := json.Marshal(args)
	rec, err := srv.SendCommand("x", kind, b)
	if err != nil {
		t.Fatal(err)
	}
	var out *cloud.CommandRecord
	eventually(t, kind+" answered", func() error {
		r, err := srv.Command("x", rec.ID)
		if err != nil {
			return err
		}
		if r.State == cloud.CmdPending {
			return errors.New("pending")
		}
		out = r
		return nil
	})
	return out
}

// mirrorSynced waits until the mirror holds every change of the cluster.
func mirrorSynced(t *testing.T, srv *cloud.Server, h *fsmHost) *cloud.Mirror {
	t.Helper()
	var m *cloud.Mirror
	eventually(t, "mirror synced", func() error {
		st, _ := h.State()
		last := st.Cloud.Changes[len(st.Cloud.Changes)-1].Index
		var err error
		if m, err = srv.MirrorOf("x"); err != nil {
			return err
		}
		if m.Cluster.Cursor < last {
			return fmt.Errorf("cursor %d < %d", m.Cluster.Cursor, last)
		}
		return nil
	})
	return m
}

func TestCloudWorkloadCommands(t *testing.T) {
	srv, h, _ := linkedCluster(t)
	ctx := context.Background()

	// Deploy: the result is the instance; the mirror lists it with the
	// status the cluster gave it, and no credential.
	rec := runCommand(t, srv, "deploy_service", api.ServiceRequest{Service: "postgres", Set: map[string]string{}})
	if rec.State != cloud.CmdDone {
		t.Fatalf("deploy: %+v", rec.Result)
	}
	var svc api.Service
	if err := json.Unmarshal(rec.Result.Data, &svc); err != nil || !strings.HasPrefix(svc.OSID, "postgres-") || svc.Tier != "lightweight" {
		t.Fatalf("deploy result %s: %v", rec.Result.Data, err)
	}
	st, _ := h.State()
	if len(st.Workloads.Services) != 1 || st.Workloads.Services[svc.OSID] == nil {
		t.Fatalf("cluster services %v", st.Workloads.Services)
	}
	eventually(t, "mirror lists the instance", func() error {
		list, err := srv.Services("x", "")
		if err != nil {
			return err
		}
		if len(list) != 1 || list[0].OSID != svc.OSID || list[0].Status != api.StatusPending || !strings.Contains(list[0].Reason, "no Kubernetes cluster set") {
			return fmt.Errorf("mirror services %+v", list)
		}
		return nil
	})
	m, _ := srv.MirrorOf("x")
	if b, _ := json.Marshal(m); strings.Contains(string(b), "credentials") || strings.Contains(string(b), st.Workloads.Services[svc.OSID].Credentials) {
		t.Fatal("the mirror holds credentials")
	}

	// A resend (the result was lost) applies nothing and tells the same
	// instance.
	if err := srv.Resend("x", rec.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "replay answered", func() error {
		r, _ := srv.Command("x", rec.ID)
		if r.Replays != 1 {
			return fmt.Errorf("replays %d", r.Replays)
		}
		return nil
	})
	if st, _ := h.State(); len(st.Workloads.Services) != 1 {
		t.Fatalf("replay applied again: %d services", len(st.Workloads.Services))
	}

	// Bad input comes back as the command's error; nothing applied.
	for _, bad := range []struct {
		kind string
		args any
		want string
	}{
		{"deploy_service", api.ServiceRequest{Service: "nosuch"}, `unknown service "nosuch"`},
		{"deploy_service", api.ServiceRequest{Service: "postgres", Set: map[string]string{"nope": "1"}}, `unknown setting "nope"`},
		{"deploy_service", api.ServiceRequest{Service: "postgres", Tier: "gold"}, `unknown tier "gold"`},
		{"deploy_service", map[string]any{"service": "postgres", "bogus": 1}, "malformed args"},
		{"delete_service", cloudproto.DeleteWorkloadArgs{OSID: "postgres-zzzzz"}, "no such service"},
		{"delete_service", map[string]string{}, "must name the osid"},
		{"deploy_app", api.AppRequest{Name: "web"}, "needs a name and an image"},
		{"deploy_app", api.AppRequest{Name: "web", Image: "nginx", Use: []string{"redis-zzzzz"}}, "no such service instance"},
		{"delete_app", cloudproto.DeleteWorkloadArgs{OSID: svc.OSID}, "no such service or app"},
	} {
		r := runCommand(t, srv, bad.kind, bad.args)
		if r.State != cloud.CmdFailed || !strings.Contains(r.Result.Error, bad.want) {
			t.Errorf("%s %+v: state %s, error %q, want %q", bad.kind, bad.args, r.State, r.Result.Error, bad.want)
		}
	}
	if st, _ := h.State(); len(st.Workloads.Services) != 1 || len(st.Workloads.Apps) != 0 {
		t.Fatalf("bad input changed the state: %d services %d apps", len(st.Workloads.Services), len(st.Workloads.Apps))
	}

	// An app using the instance; the instance cannot go while it does.
	rec = runCommand(t, srv, "deploy_app", api.AppRequest{Name: "web", Image: "nginx:1.27", Port: 80, Use: []string{svc.OSID}})
	if rec.State != cloud.CmdDone {
		t.Fatalf("deploy_app: %+v", rec.Result)
	}
	var app api.App
	json.Unmarshal(rec.Result.Data, &app)
	if !strings.HasPrefix(app.OSID, "web-") {
		t.Fatalf("deploy_app result %s", rec.Result.Data)
	}
	if r := runCommand(t, srv, "deploy_app", api.AppRequest{Name: "web", Image: "nginx"}); r.State != cloud.CmdFailed || !strings.Contains(r.Result.Error, "already taken") {
		t.Fatalf("second app of a name: %+v", r.Result)
	}
	if r := runCommand(t, srv, "delete_service", cloudproto.DeleteWorkloadArgs{OSID: svc.OSID}); r.State != cloud.CmdFailed || !strings.Contains(r.Result.Error, "uses it") {
		t.Fatalf("delete of a used service: %+v", r.Result)
	}
	eventually(t, "mirror lists the app and who uses the instance", func() error {
		apps, _ := srv.Apps("x")
		svcs, _ := srv.Services("x", "postgres")
		if len(apps) != 1 || apps[0].OSID != app.OSID || len(svcs) != 1 || len(svcs[0].UsedBy) != 1 || svcs[0].UsedBy[0] != app.OSID {
			return fmt.Errorf("apps %+v services %+v", apps, svcs)
		}
		return nil
	})

	// Deletes: marked deleting, then gone from the mirror once the
	// cluster purges them (what the reconciler does when the namespace
	// is gone).
	if r := runCommand(t, srv, "delete_app", cloudproto.DeleteWorkloadArgs{OSID: app.OSID}); r.State != cloud.CmdDone {
		t.Fatalf("delete_app: %+v", r.Result)
	}
	if r := runCommand(t, srv, "delete_service", cloudproto.DeleteWorkloadArgs{OSID: svc.OSID}); r.State != cloud.CmdDone {
		t.Fatalf("delete_service: %+v", r.Result)
	}
	eventually(t, "mirror shows deleting", func() error {
		svcs, _ := srv.Services("x", "")
		if len(svcs) != 1 || svcs[0].Status != api.StatusDeleting {
			return fmt.Errorf("%+v", svcs)
		}
		return nil
	})
	h.Apply(ctx, &raftstore.Command{Op: raftstore.OpWorkloadAppPurge, Workload: &raftstore.WorkloadCmd{OSID: app.OSID}})
	h.Apply(ctx, &raftstore.Command{Op: raftstore.OpWorkloadServicePurge, Workload: &raftstore.WorkloadCmd{OSID: svc.OSID}})
	eventually(t, "mirror drops purged workloads", func() error {
		svcs, _ := srv.Services("x", "")
		apps, _ := srv.Apps("x")
		if len(svcs) != 0 || len(apps) != 0 {
			return fmt.Errorf("services %+v apps %+v", svcs, apps)
		}
		return nil
	})

	// A full resync carries the workloads too.
	rec = runCommand(t, srv, "deploy_service", api.ServiceRequest{Service: "redis", Tier: "lightweight"})
	if rec.State != cloud.CmdDone {
		t.Fatalf("deploy redis: %+v", rec.Result)
	}
	mirrorSynced(t, srv, h)
	if err := srv.ResetMirror("x"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "resync lists the instance", func() error {
		m, err := srv.MirrorOf("x")
		if err != nil {
			return err
		}
		if m.Cluster.Resyncs < 2 || len(m.Services) != 1 || !strings.HasPrefix(m.Services[0].OSID, "redis-") {
			return fmt.Errorf("resyncs %d services %+v", m.Cluster.Resyncs, m.Services)
		}
		return nil
	})
}

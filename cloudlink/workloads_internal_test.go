package cloudlink

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// A deploy retried by a new leader (the first leader applied it, the
// result was lost before it was read) prepares the same OSID, and the
// FSM refuses the second apply by command ID: one instance.
func TestDeployPreparedOncePerCommandID(t *testing.T) {
	key, _ := seal.NewKey()
	l, err := New(Config{Host: nopHost{}, DataKey: key, NodeName: "n1", JoinToken: func(a, b string) (string, string) { return "", "" }},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	args, _ := json.Marshal(api.ServiceRequest{Service: "postgres"})
	c := cloudproto.Command{ID: "cmd-1", Kind: "deploy_service", Args: args, CreatedAt: time.Now()}
	a, err := l.prepareService(c)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := l.prepareService(c)
	other, _ := l.prepareService(cloudproto.Command{ID: "cmd-2", Kind: "deploy_service", Args: args})
	if a.Workload.Service.OSID != b.Workload.Service.OSID || a.Workload.Service.OSID == other.Workload.Service.OSID {
		t.Fatalf("OSIDs %s %s %s", a.Workload.Service.OSID, b.Workload.Service.OSID, other.Workload.Service.OSID)
	}
	// The credentials are drawn once per command too (sealed apart).
	open := func(cmd *raftstore.Command) string {
		p, err := seal.Open(key, raftstore.CredentialsPurpose(cmd.Workload.Service.OSID), cmd.Workload.Service.Credentials)
		if err != nil {
			t.Fatal(err)
		}
		return string(p)
	}
	if open(a) != open(b) || open(a) == open(other) {
		t.Fatal("credentials are not drawn once per command ID")
	}
	fsm := raftstore.NewFSM()
	boot, _ := json.Marshal(&raftstore.Command{Op: raftstore.OpBootstrap, Time: time.Now().UTC(), Bootstrap: &raftstore.BootstrapCmd{
		ClusterID: "c1", Node: raftstore.Node{ID: "n1", Name: "n1", PublicKey: "k", MeshIP: raftstore.FirstMeshIP(), PodCIDR: raftstore.FirstPodCIDR()}}})
	if res := fsm.Apply(&raft.Log{Index: 1, Data: boot}).(*raftstore.Result); res.Err != "" {
		t.Fatal(res.Err)
	}
	for i, inner := range []*raftstore.Command{a, b} {
		cmd := &raftstore.Command{ID: raftstore.NewCommandID(), Op: raftstore.OpCloudExec, Time: time.Now().UTC(),
			Cloud: &raftstore.CloudCmd{CommandID: c.ID, Inner: inner}}
		data, _ := json.Marshal(cmd)
		res := fsm.Apply(&raft.Log{Index: uint64(i + 2), Data: data}).(*raftstore.Result)
		if i == 0 && res.Err != "" {
			t.Fatal(res.Err)
		}
		if i == 1 && !errors.Is(res.Error(), raftstore.ErrCloudReplay) && !strings.Contains(res.Err, raftstore.ErrCloudReplay.Error()) {
			t.Fatalf("second apply: %q", res.Err)
		}
	}
	if st, _ := fsm.State(); len(st.Workloads.Services) != 1 {
		t.Fatalf("%d instances", len(st.Workloads.Services))
	}
}

type nopHost struct{}

func (nopHost) State() (*raftstore.State, uint64) { return &raftstore.State{}, 0 }
func (nopHost) Changed() <-chan struct{}          { return nil }
func (nopHost) Apply(context.Context, *raftstore.Command) (*raftstore.Result, error) {
	return nil, errors.New("not here")
}
func (nopHost) Nodes() []api.Node { return nil }

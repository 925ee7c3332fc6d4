package raftstoretest_test

import (
	"context"
	"errors"
	"testing"

	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/raftstore/raftstoretest"
)

// The fake runs the real FSM: writes before a bootstrap are refused, a
// repeated command ID applies once and answers its first result, and
// Changed fires on every change.
func TestStoreAppliesThroughTheFSM(t *testing.T) {
	ctx := context.Background()
	s := raftstoretest.New()
	res, err := s.Apply(ctx, &raftstore.Command{Op: raftstore.OpWorkloadServiceDelete, Workload: &raftstore.WorkloadCmd{OSID: "x"}})
	if err != nil || !errors.Is(res.Error(), raftstore.ErrNotBootstrap) {
		t.Fatalf("before bootstrap: %v, %v", res, err)
	}
	s, err = raftstoretest.NewBootstrapped("c1")
	if err != nil {
		t.Fatal(err)
	}
	st, idx := s.State()
	if st.ClusterID != "c1" || idx != 1 || st.Nodes["n1"] == nil {
		t.Fatalf("bootstrapped state: cluster %q index %d nodes %v", st.ClusterID, idx, st.Nodes)
	}

	changed := s.Changed()
	cmd := &raftstore.Command{Op: raftstore.OpWorkloadServiceCreate, Workload: &raftstore.WorkloadCmd{
		Service: &raftstore.ServiceRecord{OSID: "redis-abcde", Service: "redis", Tier: "lightweight", Credentials: "sealed"}}}
	first, err := s.Apply(ctx, cmd)
	if err != nil || first.Error() != nil {
		t.Fatalf("create: %v, %v", first, err)
	}
	if cmd.ID == "" || cmd.Time.IsZero() {
		t.Fatal("Apply did not fill in the command's ID and time")
	}
	select {
	case <-changed:
	default:
		t.Fatal("Changed did not fire")
	}
	again, err := s.Apply(ctx, cmd)
	if err != nil || again.Index != first.Index {
		t.Fatalf("repeated command ID: index %d, first %d (%v)", again.Index, first.Index, err)
	}
	// A new ID is a new command: the OSID exists already.
	dup := *cmd
	dup.ID = ""
	if res, _ := s.Apply(ctx, &dup); !errors.Is(res.Error(), raftstore.ErrWorkloadExists) {
		t.Fatalf("second create: %v", res.Error())
	}
	if st, _ := s.State(); len(st.Workloads.Services) != 1 || !st.Workloads.Services["redis-abcde"].CreatedAt.Equal(cmd.Time) {
		t.Fatalf("services %v", st.Workloads.Services)
	}
}

// kubeWriter is what a kube reconciler needs: the real store and the fake
// both have it.
type kubeWriter interface {
	EnableKube(ctx context.Context, k *raftstore.KubeState, kubeconfigSealed, server string) error
	DisableKube(ctx context.Context) error
	SetKubeEtcd(ctx context.Context, generation uint64, members []raftstore.EtcdMember) error
}

var (
	_ kubeWriter = (*raftstore.Store)(nil)
	_ kubeWriter = (*raftstoretest.Store)(nil)
)

func TestStoreKubeHelpers(t *testing.T) {
	ctx := context.Background()
	s, err := raftstoretest.NewBootstrapped("c1")
	if err != nil {
		t.Fatal(err)
	}
	kca, err := pki.NewCA("kube")
	if err != nil {
		t.Fatal(err)
	}
	eca, err := pki.NewCA("etcd")
	if err != nil {
		t.Fatal(err)
	}
	k := &raftstore.KubeState{
		Version: raftstore.DefaultKubeVersion, ServiceCIDR: raftstore.DefaultServiceCIDR, ClusterDomain: raftstore.DefaultClusterDomain,
		CACertPEM: kca.CertPEM, CAKeySealed: "a", EtcdCACertPEM: eca.CertPEM, EtcdCAKeySealed: "b", SAKeySealed: "c",
		Etcd: []raftstore.EtcdMember{{NodeID: "n1", Phase: raftstore.EtcdBootstrap}},
	}
	if err := s.EnableKube(ctx, k, "kubeconfig", ""); err != nil {
		t.Fatal(err)
	}
	st, _ := s.State()
	if err := s.SetKubeEtcd(ctx, st.Kube.Generation+1, st.Kube.Etcd); !errors.Is(err, raftstore.ErrStale) {
		t.Fatalf("stale: %v", err)
	}
	if err := s.SetKubeEtcd(ctx, st.Kube.Generation, []raftstore.EtcdMember{{NodeID: "n1", MemberID: 9, Phase: raftstore.EtcdBootstrap}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DisableKube(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.State(); st.Kube != nil || st.Workloads.Kube != nil {
		t.Fatalf("after disable: %+v %+v", st.Kube, st.Workloads.Kube)
	}
}

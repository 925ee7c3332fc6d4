package raftstore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// fuzzSeeds are well-formed commands of every family, for the fuzzer to
// mutate into malformed ones.
func fuzzSeeds() []*Command {
	boot := EtcdMember{NodeID: "n1", MemberID: 7, Phase: EtcdBootstrap}
	node := Node{ID: "n9", Name: "zeta", PublicKey: "k9", MeshIP: netip.MustParseAddr("172.24.0.9"), PodCIDR: netip.MustParsePrefix("172.25.9.0/24"), CertSerial: "s9"}
	return []*Command{
		{ID: "b2", Time: t0, Op: OpBootstrap, Bootstrap: &BootstrapCmd{ClusterID: "c2", Node: node}},
		tokenCmd("t9", t0, time.Hour, 3),
		tokenCmd("t8", t0, 100*365*24*time.Hour, 1000),
		joinCmd("n3", "gamma", "k3", "secret", t0.Add(time.Minute)),
		{ID: "j0", Time: t0, Op: OpJoin, Join: &JoinCmd{TokenID: "t1"}},
		{ID: "r", Time: t0, Op: OpRemoveNode, RemoveNode: &RemoveNodeCmd{Name: "alpha"}},
		{ID: "u", Time: t0, Op: OpUpdateNode, UpdateNode: &UpdateNodeCmd{NodeID: "n1", Endpoints: []string{"0.0.0.0:9"}}},
		{ID: "e", Time: t0, Op: OpEvent, Event: &Event{Kind: "x"}},
		{ID: "p", Time: t0, Op: OpSetTokenPolicy, TokenPolicy: &TokenPolicy{MaxTTL: time.Hour, MaxUses: 2}},
		{ID: "w", Time: t0, Op: OpWorkloadKubeSet, Workload: &WorkloadCmd{Kube: &KubeTarget{Kubeconfig: "x", Server: "https://h"}}},
		{ID: "w2", Time: t0, Op: OpWorkloadServiceCreate, Workload: &WorkloadCmd{}},
		{ID: "c", Time: t0, Op: OpCloudRegister, Cloud: &CloudCmd{}},
		{ID: "c2", Time: t0, Op: OpCloudExec, Cloud: &CloudCmd{}},
		{ID: "ui", Time: t0, Op: OpUISetAdmin, UI: &UICmd{}},
		enableCmd("ke", kubeState()),
		{ID: "ke2", Time: t0, Op: OpKubeEnable, Kube: &KubeCmd{State: &KubeState{Version: "v", Etcd: []EtcdMember{{NodeID: "n2", Phase: EtcdLearner}}}}},
		etcdCmd("kx", kubeFuzzIndex, boot, EtcdMember{NodeID: "n1", Phase: EtcdVoter}),
		etcdCmd("kx2", kubeFuzzIndex, boot),
		kcmd("kd", OpKubeDisable, nil),
		{ID: "aa", Time: t0, Op: OpAccessAdd, Access: &AccessCmd{Name: "laptop", PublicKey: "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=", Via: "alpha",
			ServerKey: "YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI=", ServerKeySealed: "s"}},
		{ID: "am", Time: t0, Op: OpAccessMove, Access: &AccessCmd{Name: "laptop", Via: "beta"}},
		{ID: "ar", Time: t0, Op: OpAccessRemove, Access: &AccessCmd{Name: "laptop"}},
		{ID: "as", Time: t0, Op: OpAccessSeen, Access: &AccessCmd{Name: "laptop"}},
		{ID: "x", Time: t0, Op: "nosuch"},
		{},
	}
}

// FuzzFSMApply feeds arbitrary log entries (random bytes, and mutations of
// real commands) to a fresh FSM and to one holding a cluster: Apply never
// panics, always answers, and the state keeps its invariants.
func FuzzFSMApply(f *testing.F) {
	for _, c := range fuzzSeeds() {
		b, _ := json.Marshal(c)
		f.Add(b)
	}
	f.Add([]byte("{"))
	f.Add([]byte(`{"op":"join","join":null}`))
	f.Add([]byte(`{"op":"create_token","create_token":{"token":{"id":"z","secret_hash":"h","uses_left":-5}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, setup := range []func() *State{NewState, func() *State { return bootstrapped(t) }, func() *State { return kubeEnabled(t) }} {
			fsm := NewFSM()
			fsm.state = setup()
			// A command ID the setup used (a retry) answers as then.
			var cmd Command
			decoded := json.Unmarshal(data, &cmd) == nil
			want := uint64(10)
			if r, ok := fsm.state.Results[cmd.ID]; decoded && cmd.ID != "" && ok {
				want = r.Index
			}
			res, ok := fsm.Apply(&raft.Log{Index: 10, Data: data}).(*Result)
			if !ok || res == nil || res.Index != want {
				t.Fatalf("Apply answered %#v", res)
			}
			checkInvariants(t, fsm.state)
			// A repeated command ID changes nothing.
			if decoded && cmd.ID != "" {
				before, _ := json.Marshal(fsm.state)
				again := fsm.Apply(&raft.Log{Index: 11, Data: data}).(*Result)
				after, _ := json.Marshal(fsm.state)
				if !bytes.Equal(before, after) || again.Err != res.Err {
					t.Fatalf("repeating command %q changed the state or its answer (%q, then %q)", cmd.ID, res.Err, again.Err)
				}
			}
		}
	})
}

// kubeFuzzIndex is where kubeEnabled enables managed Kubernetes: its
// KubeState.Generation.
const kubeFuzzIndex = 5

// kubeEnabled is bootstrapped() with managed Kubernetes on.
func kubeEnabled(t *testing.T) *State {
	s := bootstrapped(t)
	if err := s.apply(kubeFuzzIndex, enableCmd("kube-on", kubeState())).Error(); err != nil {
		t.Fatal(err)
	}
	return s
}

func checkInvariants(t *testing.T, s *State) {
	t.Helper()
	names, keys, ips, pods := map[string]bool{}, map[string]bool{}, map[netip.Addr]bool{}, map[netip.Prefix]bool{}
	for id, n := range s.Nodes {
		if n == nil || n.ID != id {
			t.Fatalf("node %q recorded as %+v", id, n)
		}
		for what, dup := range map[string]bool{
			"name " + n.Name: names[n.Name], "key " + n.PublicKey: keys[n.PublicKey],
			"mesh IP " + n.MeshIP.String(): ips[n.MeshIP], "pod CIDR " + n.PodCIDR.String(): n.PodCIDR.IsValid() && pods[n.PodCIDR],
		} {
			if dup {
				t.Fatalf("two nodes share the %s", what)
			}
		}
		names[n.Name], keys[n.PublicKey], ips[n.MeshIP], pods[n.PodCIDR] = true, true, true, true
	}
	p := s.EffectiveTokenPolicy()
	if err := p.Validate(); err != nil {
		t.Fatalf("policy %+v: %v", p, err)
	}
	for id, tok := range s.Tokens {
		if tok == nil || tok.ID != id || tok.UsesLeft < 0 {
			t.Fatalf("token %q recorded as %+v", id, tok)
		}
		if tok.UsesLeft > MaxTokenMaxUses || tok.ExpiresAt.Sub(tok.CreatedAt) > MaxTokenMaxTTL+tokenClockSlack {
			t.Fatalf("token %q beyond any policy: %+v", id, tok)
		}
	}
	devAddrs, devKeys := map[netip.Addr]bool{}, map[string]bool{}
	for name, d := range s.Access.Devices {
		if d == nil || d.Name != name || !ValidDNSLabel(name) || !UserAccessPrefix.Contains(d.Address) || d.Address == AccessGateway ||
			devAddrs[d.Address] || devKeys[d.PublicKey] || d.PublicKey == s.Access.PublicKey || s.Access.KeySealed == "" {
			t.Fatalf("device %q recorded as %+v (access %+v)", name, d, s.Access.PublicKey)
		}
		devAddrs[d.Address], devKeys[d.PublicKey] = true, true
	}
	if w := s.Workloads.Kube; w != nil && w.Managed && s.Kube == nil {
		t.Fatal("the workloads target a managed cluster that is off")
	}
	if k := s.Kube; k != nil {
		if k.Generation == 0 || k.Version == "" || k.CAKeySealed == "" || k.EtcdCAKeySealed == "" || k.SAKeySealed == "" || len(k.Etcd) == 0 {
			t.Fatalf("kube state %+v", k)
		}
		seen, bootstrap := map[string]bool{}, 0
		for _, m := range k.Etcd {
			if seen[m.NodeID] || (m.Phase != EtcdBootstrap && m.Phase != EtcdLearner && m.Phase != EtcdVoter) {
				t.Fatalf("etcd membership %+v", k.Etcd)
			}
			seen[m.NodeID] = true
			if m.Phase == EtcdBootstrap {
				bootstrap++
			}
		}
		if bootstrap > 1 {
			t.Fatalf("%d bootstrap members", bootstrap)
		}
	}
	if len(s.Events) > eventWindow || len(s.Applied) > appliedWindow || len(s.Results) != len(s.Applied) {
		t.Fatalf("bookkeeping unbounded: %d events, %d applied, %d results", len(s.Events), len(s.Applied), len(s.Results))
	}
	if _, err := json.Marshal(s); err != nil {
		t.Fatal(fmt.Errorf("state does not encode: %w", err))
	}
}

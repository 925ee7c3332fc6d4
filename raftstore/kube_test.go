package raftstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/runos/runos-agent/seal"
)

// testCertPEM makes a self-signed certificate, a CA's or a leaf's.
func testCertPEM(isCA bool) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(24 * time.Hour),
		BasicConstraintsValid: true, IsCA: isCA,
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	if isCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// testCAs are made once: the fuzzer builds a kube state per input.
var testCAs = sync.OnceValue(func() (c struct{ kube, etcd, leaf []byte }) {
	c.kube, c.etcd, c.leaf = testCertPEM(true), testCertPEM(true), testCertPEM(false)
	return c
})

// kubeState is a valid KubeState for enabling on bootstrapped(): its
// bootstrap etcd member is node n1.
func kubeState() *KubeState {
	return &KubeState{
		Version: DefaultKubeVersion, ServiceCIDR: DefaultServiceCIDR, ClusterDomain: DefaultClusterDomain,
		CACertPEM: slices.Clone(testCAs().kube), CAKeySealed: "sealed-kube-ca",
		EtcdCACertPEM: slices.Clone(testCAs().etcd), EtcdCAKeySealed: "sealed-etcd-ca",
		SAKeySealed: "sealed-sa",
		Etcd:        []EtcdMember{{NodeID: "n1", Phase: EtcdBootstrap}},
	}
}

func kcmd(id, op string, c *KubeCmd) *Command {
	return &Command{ID: id, Time: t0.Add(time.Hour), Op: op, Kube: c}
}

func enableCmd(id string, k *KubeState) *Command {
	return kcmd(id, OpKubeEnable, &KubeCmd{State: k, Kubeconfig: "sealed-kubeconfig", Server: "https://127.0.0.1:6444"})
}

func etcdCmd(id string, gen uint64, ms ...EtcdMember) *Command {
	return kcmd(id, OpKubeEtcd, &KubeCmd{Generation: gen, Etcd: ms})
}

// withNodes is a bootstrapped state with nodes alpha (n1), beta (n2) and
// gamma (n3).
func withNodes(t *testing.T) *State {
	t.Helper()
	s := bootstrapped(t)
	s.Tokens["t1"].UsesLeft = 10
	for i, n := range [][2]string{{"n2", "beta"}, {"n3", "gamma"}} {
		if err := s.apply(uint64(3+i), joinCmd(n[0], n[1], "k-"+n[0], "secret", t0)).Error(); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func lastEvent(s *State) Event { return s.Events[len(s.Events)-1] }

func TestKubeEnable(t *testing.T) {
	s := withNodes(t)
	// A target the user set before: enable replaces it, one generation on.
	s.apply(9, wcmd("set", OpWorkloadKubeSet, &WorkloadCmd{Kube: &KubeTarget{Kubeconfig: "users", Server: "https://elsewhere"}}))
	k := kubeState()
	res := s.apply(10, enableCmd("en", k))
	if err := res.Error(); err != nil {
		t.Fatal(err)
	}
	var kr KubeResult
	if err := json.Unmarshal(res.Data, &kr); err != nil || kr.Generation != 10 {
		t.Fatalf("result %s (%v), want generation 10", res.Data, err)
	}
	got := s.Kube
	if got.Generation != 10 || !got.EnabledAt.Equal(t0.Add(time.Hour)) || got.Version != DefaultKubeVersion ||
		got.ServiceCIDR != DefaultServiceCIDR || got.CAKeySealed != "sealed-kube-ca" || len(got.Etcd) != 1 {
		t.Fatalf("kube state = %+v", got)
	}
	w := s.Workloads.Kube
	if w == nil || !w.Managed || w.Kubeconfig != "sealed-kubeconfig" || w.Server != "https://127.0.0.1:6444" || w.Generation != 2 || !w.SetAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("workload target = %+v", w)
	}
	if e := lastEvent(s); e.Kind != EventKubeEnabled || e.Detail != DefaultKubeVersion || e.Seq != 10 {
		t.Fatalf("event = %+v", e)
	}
	// The state holds its own copy of the command's slices.
	k.Etcd[0].NodeID, k.CACertPEM[0] = "zz", 'x'
	if s.Kube.Etcd[0].NodeID != "n1" || s.Kube.CACertPEM[0] != '-' {
		t.Fatal("the state shares the command's slices")
	}
	// A view is a deep copy.
	v := s.View()
	v.Kube.Etcd[0].Phase, v.Kube.EtcdCACertPEM[0], v.Kube.SAKeySealed = "x", 'x', "x"
	if s.Kube.Etcd[0].Phase != EtcdBootstrap || s.Kube.EtcdCACertPEM[0] != '-' || s.Kube.SAKeySealed != "sealed-sa" {
		t.Fatal("a view's changes reached the state")
	}
	if m, ok := s.Kube.Member("n1"); !ok || m.Phase != EtcdBootstrap {
		t.Fatalf("Member(n1) = %+v, %v", m, ok)
	}
	if _, ok := s.Kube.Member("n2"); ok {
		t.Fatal("Member(n2) found a member")
	}

	// The user's kube set cannot mark a target managed.
	s.apply(11, wcmd("set2", OpWorkloadKubeSet, &WorkloadCmd{Kube: &KubeTarget{Kubeconfig: "users2", Managed: true}}))
	if s.Workloads.Kube.Managed {
		t.Fatal("kube_set made a managed target")
	}
}

func TestKubeEnableRejections(t *testing.T) {
	mod := func(f func(k *KubeState)) *KubeState {
		k := kubeState()
		f(k)
		return k
	}
	withTarget := func(s *State) {
		s.apply(20, wcmd("set", OpWorkloadKubeSet, &WorkloadCmd{Kube: &KubeTarget{Kubeconfig: "users"}}))
		s.apply(21, wcmd("svc", OpWorkloadServiceCreate, &WorkloadCmd{Service: svc("postgres-aaaaa")}))
	}
	enabled := func(s *State) {
		if err := s.apply(20, enableCmd("first", kubeState())).Error(); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name  string
		setup func(*State)
		cmd   *Command
		want  error
	}{
		{"no payload", nil, kcmd("x", OpKubeEnable, nil), ErrMalformedCmd},
		{"no state", nil, kcmd("x", OpKubeEnable, &KubeCmd{Kubeconfig: "k"}), ErrMalformedCmd},
		{"already enabled", enabled, enableCmd("x", kubeState()), ErrKubeEnabled},
		{"no version", nil, enableCmd("x", mod(func(k *KubeState) { k.Version = "" })), ErrMalformedCmd},
		{"no cluster domain", nil, enableCmd("x", mod(func(k *KubeState) { k.ClusterDomain = "" })), ErrMalformedCmd},
		{"no service CIDR", nil, enableCmd("x", mod(func(k *KubeState) { k.ServiceCIDR = netip.Prefix{} })), ErrMalformedCmd},
		{"IPv6 service CIDR", nil, enableCmd("x", mod(func(k *KubeState) { k.ServiceCIDR = netip.MustParsePrefix("fd00::/108") })), ErrMalformedCmd},
		{"service CIDR not a network address", nil, enableCmd("x", mod(func(k *KubeState) { k.ServiceCIDR = netip.MustParsePrefix("10.96.0.1/12") })), ErrMalformedCmd},
		{"service CIDR too large", nil, enableCmd("x", mod(func(k *KubeState) { k.ServiceCIDR = netip.MustParsePrefix("10.0.0.0/8") })), ErrMalformedCmd},
		{"service CIDR too small", nil, enableCmd("x", mod(func(k *KubeState) { k.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/30") })), ErrMalformedCmd},
		{"service CIDR on the pods", nil, enableCmd("x", mod(func(k *KubeState) { k.ServiceCIDR = netip.MustParsePrefix("172.25.128.0/20") })), ErrMalformedCmd},
		{"service CIDR on the mesh", nil, enableCmd("x", mod(func(k *KubeState) { k.ServiceCIDR = netip.MustParsePrefix("172.16.0.0/12") })), ErrMalformedCmd},
		{"CA not PEM", nil, enableCmd("x", mod(func(k *KubeState) { k.CACertPEM = []byte("ca") })), ErrMalformedCmd},
		{"CA garbage DER", nil, enableCmd("x", mod(func(k *KubeState) {
			k.CACertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("nope")})
		})), ErrMalformedCmd},
		{"CA is a leaf", nil, enableCmd("x", mod(func(k *KubeState) { k.CACertPEM = testCAs().leaf })), ErrMalformedCmd},
		{"etcd CA missing", nil, enableCmd("x", mod(func(k *KubeState) { k.EtcdCACertPEM = nil })), ErrMalformedCmd},
		{"etcd CA is a leaf", nil, enableCmd("x", mod(func(k *KubeState) { k.EtcdCACertPEM = testCAs().leaf })), ErrMalformedCmd},
		{"no CA key", nil, enableCmd("x", mod(func(k *KubeState) { k.CAKeySealed = "" })), ErrMalformedCmd},
		{"no etcd CA key", nil, enableCmd("x", mod(func(k *KubeState) { k.EtcdCAKeySealed = "" })), ErrMalformedCmd},
		{"no SA key", nil, enableCmd("x", mod(func(k *KubeState) { k.SAKeySealed = "" })), ErrMalformedCmd},
		{"no kubeconfig", nil, kcmd("x", OpKubeEnable, &KubeCmd{State: kubeState()}), ErrMalformedCmd},
		{"no etcd member", nil, enableCmd("x", mod(func(k *KubeState) { k.Etcd = nil })), ErrMalformedCmd},
		{"two etcd members", nil, enableCmd("x", mod(func(k *KubeState) {
			k.Etcd = append(k.Etcd, EtcdMember{NodeID: "n2", Phase: EtcdLearner})
		})), ErrMalformedCmd},
		{"first member a learner", nil, enableCmd("x", mod(func(k *KubeState) { k.Etcd[0].Phase = EtcdLearner })), ErrMalformedCmd},
		{"first member on no node", nil, enableCmd("x", mod(func(k *KubeState) { k.Etcd[0].NodeID = "n9" })), ErrNoSuchNode},
		{"workloads on the user's cluster", withTarget, enableCmd("x", kubeState()), ErrWorkloadsExist},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := withNodes(t)
			if tc.setup != nil {
				tc.setup(s)
			}
			before, _ := json.Marshal(s.View())
			err := s.apply(30, tc.cmd).Error()
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if after, _ := json.Marshal(s.View()); string(before) != string(after) {
				t.Fatal("a refused command changed the state")
			}
		})
	}
}

func TestKubeEnableWithPendingWorkloads(t *testing.T) {
	// Services made before any cluster wait for one: enabling is what
	// they wait for.
	s := withNodes(t)
	s.apply(9, wcmd("svc", OpWorkloadServiceCreate, &WorkloadCmd{Service: svc("postgres-aaaaa")}))
	if err := s.apply(10, enableCmd("en", kubeState())).Error(); err != nil {
		t.Fatal(err)
	}
	if w := s.Workloads.Kube; w == nil || !w.Managed || w.Generation != 1 {
		t.Fatalf("target = %+v", w)
	}
}

func TestKubeDisable(t *testing.T) {
	s := withNodes(t)
	if err := s.apply(9, kcmd("d0", OpKubeDisable, nil)).Error(); !errors.Is(err, ErrKubeNotEnabled) {
		t.Fatalf("disable before enable: %v", err)
	}
	if err := s.apply(10, enableCmd("en", kubeState())).Error(); err != nil {
		t.Fatal(err)
	}
	s.apply(11, wcmd("svc", OpWorkloadServiceCreate, &WorkloadCmd{Service: svc("postgres-aaaaa")}))
	s.apply(12, wcmd("app", OpWorkloadAppCreate, &WorkloadCmd{App: &AppRecord{OSID: "web-bbbbb", Name: "web", Image: "x"}}))
	refused := func(id string) {
		t.Helper()
		if err := s.apply(13, kcmd(id, OpKubeDisable, nil)).Error(); !errors.Is(err, ErrWorkloadsExist) || s.Kube == nil {
			t.Fatalf("disable with workloads: %v", err)
		}
	}
	refused("d1")
	// Deleted but not purged: the namespaces are still on the cluster.
	s.apply(14, wcmd("sd", OpWorkloadServiceDelete, &WorkloadCmd{OSID: "postgres-aaaaa"}))
	s.apply(15, wcmd("sp", OpWorkloadServicePurge, &WorkloadCmd{OSID: "postgres-aaaaa"}))
	s.apply(16, wcmd("ad", OpWorkloadAppDelete, &WorkloadCmd{OSID: "web-bbbbb"}))
	refused("d2")
	s.apply(17, wcmd("ap", OpWorkloadAppPurge, &WorkloadCmd{OSID: "web-bbbbb"}))
	if err := s.apply(18, kcmd("d3", OpKubeDisable, &KubeCmd{})).Error(); err != nil {
		t.Fatal(err)
	}
	if s.Kube != nil || s.Workloads.Kube != nil {
		t.Fatalf("after disable: kube %+v, target %+v", s.Kube, s.Workloads.Kube)
	}
	if e := lastEvent(s); e.Kind != EventKubeDisabled || e.Seq != 18 {
		t.Fatalf("event = %+v", e)
	}

	// Re-enabled, then the user points workloads elsewhere: disabling
	// keeps the user's target.
	if err := s.apply(19, enableCmd("en2", kubeState())).Error(); err != nil {
		t.Fatal(err)
	}
	if s.Kube.Generation != 19 {
		t.Fatalf("generation after re-enable = %d, want 19", s.Kube.Generation)
	}
	s.apply(20, wcmd("set", OpWorkloadKubeSet, &WorkloadCmd{Kube: &KubeTarget{Kubeconfig: "users"}}))
	if err := s.apply(21, kcmd("d4", OpKubeDisable, nil)).Error(); err != nil {
		t.Fatal(err)
	}
	if s.Kube != nil || s.Workloads.Kube == nil || s.Workloads.Kube.Kubeconfig != "users" {
		t.Fatalf("after disable: kube %+v, target %+v", s.Kube, s.Workloads.Kube)
	}
}

func TestKubeEtcd(t *testing.T) {
	s := withNodes(t)
	if err := s.apply(10, enableCmd("en", kubeState())).Error(); err != nil {
		t.Fatal(err)
	}
	boot := EtcdMember{NodeID: "n1", MemberID: 1, Phase: EtcdBootstrap}
	learner := EtcdMember{NodeID: "n2", MemberID: 2, Phase: EtcdLearner, InitialCluster: "alpha=https://172.24.0.1:2380,beta=https://172.24.0.2:2380"}

	res := s.apply(11, etcdCmd("e1", 10, boot, learner))
	if err := res.Error(); err != nil {
		t.Fatal(err)
	}
	var kr KubeResult
	if err := json.Unmarshal(res.Data, &kr); err != nil || kr.Generation != 11 || s.Kube.Generation != 11 {
		t.Fatalf("generation %d, result %s", s.Kube.Generation, res.Data)
	}
	if !reflect.DeepEqual(s.Kube.Etcd, []EtcdMember{boot, learner}) {
		t.Fatalf("etcd = %+v", s.Kube.Etcd)
	}
	if e := lastEvent(s); e.Kind != EventKubeEtcd || e.Detail != "beta added (learner)" {
		t.Fatalf("event = %+v", e)
	}

	// Prepared from the state before: refused, nothing changes.
	if err := s.apply(12, etcdCmd("e2", 10, boot)).Error(); !errors.Is(err, ErrStale) {
		t.Fatalf("stale write: %v", err)
	}
	if len(s.Kube.Etcd) != 2 || s.Kube.Generation != 11 {
		t.Fatalf("a stale write changed the state: %+v", s.Kube)
	}

	// Promotion.
	voter := learner
	voter.Phase, voter.InitialCluster = EtcdVoter, ""
	if err := s.apply(13, etcdCmd("e3", 11, boot, voter)).Error(); err != nil {
		t.Fatal(err)
	}
	if e := lastEvent(s); e.Detail != "beta learner -> voter" {
		t.Fatalf("event = %+v", e)
	}
	// A write that changes no membership records no event.
	events := len(s.Events)
	if err := s.apply(14, etcdCmd("e4", 13, boot, voter)).Error(); err != nil || len(s.Events) != events || s.Kube.Generation != 14 {
		t.Fatalf("same list: %v, %d new events, generation %d", err, len(s.Events)-events, s.Kube.Generation)
	}

	// Removing a node leaves its member until the leader commits the
	// list without it; a list that still names it is refused.
	if err := s.apply(15, &Command{ID: "rm", Time: t0, Op: OpRemoveNode, RemoveNode: &RemoveNodeCmd{Name: "beta"}}).Error(); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Kube.Member("n2"); !ok || s.Kube.Generation != 14 {
		t.Fatal("removing a node changed the etcd membership")
	}
	if err := s.apply(16, etcdCmd("e5", 14, boot, voter)).Error(); !errors.Is(err, ErrNoSuchNode) {
		t.Fatalf("list naming a removed node: %v", err)
	}
	if err := s.apply(17, etcdCmd("e6", 14, boot)).Error(); err != nil {
		t.Fatal(err)
	}
	if e := lastEvent(s); e.Detail != "n2 removed" {
		t.Fatalf("event = %+v", e)
	}
}

func TestKubeEtcdRejections(t *testing.T) {
	boot := EtcdMember{NodeID: "n1", MemberID: 1, Phase: EtcdBootstrap}
	cases := []struct {
		name string
		cmd  *Command
		want error
	}{
		{"no payload", kcmd("x", OpKubeEtcd, nil), ErrMalformedCmd},
		{"stale", etcdCmd("x", 9, boot), ErrStale},
		{"empty", etcdCmd("x", 10), ErrMalformedCmd},
		{"unknown node", etcdCmd("x", 10, boot, EtcdMember{NodeID: "n9", Phase: EtcdLearner}), ErrNoSuchNode},
		{"node twice", etcdCmd("x", 10, boot, EtcdMember{NodeID: "n2", Phase: EtcdLearner}, EtcdMember{NodeID: "n2", Phase: EtcdVoter}), ErrMalformedCmd},
		{"member ID twice", etcdCmd("x", 10, boot, EtcdMember{NodeID: "n2", MemberID: 1, Phase: EtcdLearner}), ErrMalformedCmd},
		{"unknown phase", etcdCmd("x", 10, boot, EtcdMember{NodeID: "n2", Phase: "leader"}), ErrMalformedCmd},
		{"no phase", etcdCmd("x", 10, boot, EtcdMember{NodeID: "n2"}), ErrMalformedCmd},
		{"two bootstrap members", etcdCmd("x", 10, boot, EtcdMember{NodeID: "n2", Phase: EtcdBootstrap}), ErrMalformedCmd},
		{"a new bootstrap member", etcdCmd("x", 10, EtcdMember{NodeID: "n2", Phase: EtcdBootstrap}), ErrMalformedCmd},
		{"unknown kube op", kcmd("x", "kube_magic", &KubeCmd{}), ErrUnknownOp},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := withNodes(t)
			if err := s.apply(10, enableCmd("en", kubeState())).Error(); err != nil {
				t.Fatal(err)
			}
			before, _ := json.Marshal(s.View())
			if err := s.apply(30, tc.cmd).Error(); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if after, _ := json.Marshal(s.View()); string(before) != string(after) {
				t.Fatal("a refused command changed the state")
			}
		})
	}
	t.Run("not enabled", func(t *testing.T) {
		s := withNodes(t)
		if err := s.apply(30, etcdCmd("x", 0, boot)).Error(); !errors.Is(err, ErrKubeNotEnabled) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("prepared before a disable and re-enable", func(t *testing.T) {
		s := withNodes(t)
		s.apply(10, enableCmd("en", kubeState()))
		s.apply(11, etcdCmd("e1", 10, boot))
		gen := s.Kube.Generation
		s.apply(12, kcmd("d", OpKubeDisable, nil))
		s.apply(13, enableCmd("en2", kubeState()))
		s.apply(14, etcdCmd("e2", 13, boot))
		s.apply(15, etcdCmd("e3", 14, boot))
		if s.Kube.Generation <= gen {
			t.Fatalf("generation went from %d to %d", gen, s.Kube.Generation)
		}
		if err := s.apply(30, etcdCmd("x", gen, boot)).Error(); !errors.Is(err, ErrStale) {
			t.Fatalf("err = %v", err)
		}
	})
}

// A rotation re-seals the kube keys under the new data key: they open
// with it alone, and no longer with the old one.
func TestRotationReSealsKube(t *testing.T) {
	oldKey, _ := seal.NewKey()
	newKey, _ := seal.NewKey()
	sealed := func(k seal.Key, purpose, pt string) string {
		v, err := seal.Seal(k, purpose, []byte(pt))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	s := withNodes(t)
	s.CAKeyPEM, s.CAKeySealed = nil, sealed(oldKey, CAKeyPurpose, "cluster ca key")
	k := kubeState()
	plain := map[string]string{KubeCAKeyPurpose: "kube ca key", KubeEtcdCAKeyPurpose: "etcd ca key", KubeSAKeyPurpose: "sa key", KubeconfigPurpose: "kubeconfig"}
	k.CAKeySealed = sealed(oldKey, KubeCAKeyPurpose, plain[KubeCAKeyPurpose])
	k.EtcdCAKeySealed = sealed(oldKey, KubeEtcdCAKeyPurpose, plain[KubeEtcdCAKeyPurpose])
	k.SAKeySealed = sealed(oldKey, KubeSAKeyPurpose, plain[KubeSAKeyPurpose])
	en := kcmd("en", OpKubeEnable, &KubeCmd{State: k, Kubeconfig: sealed(oldKey, KubeconfigPurpose, plain[KubeconfigPurpose])})
	if err := s.apply(10, en).Error(); err != nil {
		t.Fatal(err)
	}
	held := s.Kube // a reader's pointer: replaced, never mutated in place
	heldCA := held.CAKeySealed

	refs := s.SealedValues()
	for _, name := range []string{"kube/ca", "kube/etcd-ca", "kube/sa", "kube"} {
		if _, ok := refs[name]; !ok {
			t.Fatalf("SealedValues lacks %q: %v", name, refs)
		}
	}
	// As the leader prepares it (agent/rotate.go).
	c := &RotateKeysCmd{Epoch: 2, Wrapped: map[string]string{}, Resealed: map[string]Reseal{}}
	for id := range s.Nodes {
		c.Wrapped[id] = "wrap-" + id
	}
	for name, ref := range refs {
		pt, err := seal.Open(oldKey, ref.Purpose, ref.Value)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c.Resealed[name] = Reseal{Old: ref.Value, New: sealed(newKey, ref.Purpose, string(pt))}
	}
	if err := s.apply(11, &Command{ID: "rot", Time: t0, Op: OpRotateKeys, RotateKeys: c}).Error(); err != nil {
		t.Fatal(err)
	}
	v := s.View()
	for purpose, value := range map[string]string{
		KubeCAKeyPurpose: v.Kube.CAKeySealed, KubeEtcdCAKeyPurpose: v.Kube.EtcdCAKeySealed,
		KubeSAKeyPurpose: v.Kube.SAKeySealed, KubeconfigPurpose: v.Workloads.Kube.Kubeconfig,
	} {
		pt, err := seal.Open(newKey, purpose, value)
		if err != nil || string(pt) != plain[purpose] {
			t.Errorf("%s under the new key: %q, %v", purpose, pt, err)
		}
		if _, err := seal.Open(oldKey, purpose, value); !errors.Is(err, seal.ErrOpen) {
			t.Errorf("%s still opens with the old key (%v)", purpose, err)
		}
	}
	if held.CAKeySealed != heldCA || s.Kube == held {
		t.Error("the rotation mutated the KubeState in place")
	}
	// The rotated state's values are the ones the next rotation sees.
	for _, name := range []string{"kube/ca", "kube/etcd-ca", "kube/sa"} {
		if got := s.SealedValues()[name].Value; got != c.Resealed[name].New {
			t.Errorf("%s = %q after rotation", name, got)
		}
	}
	// A rotation prepared before kube was enabled misses its keys: stale.
	s2 := withNodes(t)
	s2.CAKeyPEM, s2.CAKeySealed = nil, "ca"
	early := rotationFor(s2, "early")
	s2.apply(10, enableCmd("en", kubeState()))
	if err := s2.apply(11, early).Error(); !errors.Is(err, ErrRotationStale) {
		t.Fatalf("rotation without the kube keys: %v", err)
	}
}

// The kube state survives a snapshot and its restore (JSON) as it was,
// and a retried enable after the restore answers as the first one did.
func TestKubeSnapshotRoundTrip(t *testing.T) {
	f := NewFSM()
	f.state = withNodes(t)
	for i, c := range []*Command{
		enableCmd("en", kubeState()),
		etcdCmd("e1", 10, EtcdMember{NodeID: "n1", MemberID: 0x8e9e05c52164694d, Phase: EtcdBootstrap},
			EtcdMember{NodeID: "n2", MemberID: 1<<63 + 5, Phase: EtcdLearner, InitialCluster: "alpha=https://172.24.0.1:2380,beta=https://172.24.0.2:2380"}),
	} {
		b, _ := json.Marshal(c)
		if res := f.Apply(&raft.Log{Index: uint64(10 + i), Data: b}).(*Result); res.Error() != nil {
			t.Fatal(res.Error())
		}
	}
	want, _ := f.State()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink bufSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sink.String(), `"kube":{"version":"v1.34.4"`) || !strings.Contains(sink.String(), `"managed":true`) {
		t.Fatalf("snapshot lacks the kube state: %.300s", sink.String())
	}
	restored := NewFSM()
	if err := restored.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	got, _ := restored.State()
	if !reflect.DeepEqual(got.Kube, want.Kube) || !reflect.DeepEqual(got.Workloads.Kube, want.Workloads.Kube) {
		t.Fatalf("restored kube:\n%+v\nwant\n%+v", got.Kube, want.Kube)
	}
	b, _ := json.Marshal(enableCmd("en", kubeState()))
	if res := restored.Apply(&raft.Log{Index: 20, Data: b}).(*Result); res.Error() != nil || res.Index != 10 {
		t.Fatalf("retried enable after restore: index %d, %v", res.Index, res.Error())
	}
}

// The Store helpers go through real Raft (one node on 127.0.0.1, mutual
// TLS), and the errors come back as their sentinels.
func TestStoreKubeHelpers(t *testing.T) {
	p := newTestPKI(t)
	addr := freeLoopback(t)
	dir := t.TempDir()
	if err := Bootstrap(dir, "n1", addr); err != nil {
		t.Fatal(err)
	}
	s := openTestStoreAt(t, p, dir, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := s.Apply(ctx, &Command{Op: OpBootstrap, Bootstrap: &BootstrapCmd{ClusterID: "c1",
		Node: Node{ID: "n1", Name: "alpha", PublicKey: "k1", MeshIP: FirstMeshIP(), PodCIDR: FirstPodCIDR()}}})
	if err != nil || res.Error() != nil {
		t.Fatal(err, res.Error())
	}

	if err := s.DisableKube(ctx); !errors.Is(err, ErrKubeNotEnabled) {
		t.Fatalf("disable: %v", err)
	}
	if err := s.EnableKube(ctx, kubeState(), "sealed-kubeconfig", "https://127.0.0.1:6444"); err != nil {
		t.Fatal(err)
	}
	if err := s.EnableKube(ctx, kubeState(), "sealed-kubeconfig", ""); !errors.Is(err, ErrKubeEnabled) {
		t.Fatalf("second enable: %v", err)
	}
	st, _ := s.State()
	gen := st.Kube.Generation
	boot := st.Kube.Etcd[0]
	boot.MemberID = 42
	if err := s.SetKubeEtcd(ctx, gen, []EtcdMember{boot}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetKubeEtcd(ctx, gen, []EtcdMember{boot}); !errors.Is(err, ErrStale) {
		t.Fatalf("stale SetKubeEtcd: %v", err)
	}
	st, _ = s.State()
	if st.Kube.Generation <= gen || st.Kube.Etcd[0].MemberID != 42 || !st.Workloads.Kube.Managed {
		t.Fatalf("state after SetKubeEtcd: %+v, target %+v", st.Kube, st.Workloads.Kube)
	}
	if err := s.DisableKube(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ = s.State(); st.Kube != nil || st.Workloads.Kube != nil {
		t.Fatalf("after disable: %+v, %+v", st.Kube, st.Workloads.Kube)
	}
}

package raftstore

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Managed Kubernetes (issue 13): the cluster runs its own Kubernetes, the
// control plane on the Raft voters. The state holds what every node needs
// to run its part (version, CAs, the service-account key) and the etcd
// membership as the leader drives it; each node derives the components it
// runs from that. The private keys are sealed with the data key like every
// other secret of the state (keys.go re-seals them on rotation).
//
// Validation that needs more than the state (is the version one the agent
// has binaries for, is the bootstrap member's node a Raft voter: the Raft
// configuration is not part of the FSM's state) is the proposer's job.

// Kube ops (payload Command.Kube).
const (
	// OpKubeEnable turns managed Kubernetes on (KubeCmd.State, all fields
	// but Generation and EnabledAt) and points the workloads at it
	// (KubeCmd.Kubeconfig). Etcd must hold exactly the bootstrap member.
	OpKubeEnable = "kube_enable"
	// OpKubeDisable turns it off; refused while services or apps exist.
	OpKubeDisable = "kube_disable"
	// OpKubeEtcd replaces the etcd membership (KubeCmd.Etcd) if
	// KubeState.Generation still equals KubeCmd.Generation.
	OpKubeEtcd = "kube_etcd"
)

// Etcd member phases.
const (
	// EtcdBootstrap is the first member: it starts with
	// --initial-cluster-state new.
	EtcdBootstrap = "bootstrap"
	// EtcdLearner was added as a learner: it starts with
	// --initial-cluster-state existing and InitialCluster.
	EtcdLearner = "learner"
	// EtcdVoter is a promoted learner.
	EtcdVoter = "voter"
)

// Seal purposes of KubeState's sealed keys.
const (
	KubeCAKeyPurpose     = "kube/ca/key"
	KubeEtcdCAKeyPurpose = "kube/etcd-ca/key"
	KubeSAKeyPurpose     = "kube/sa/key"
)

// Defaults a proposer fills in; the FSM takes them as given.
const (
	DefaultKubeVersion   = "v1.34.4"
	DefaultClusterDomain = "cluster.local"
)

// DefaultServiceCIDR is the services' ClusterIP range.
var DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")

// Event kinds of managed Kubernetes.
const (
	EventKubeEnabled  = "kube_enabled" // Detail: the version
	EventKubeDisabled = "kube_disabled"
	// EventKubeEtcd records a change of the etcd membership. Detail lists
	// the changes: "beta added (learner); beta learner -> voter; gamma removed".
	EventKubeEtcd = "kube_etcd"
)

// Errors of kube ops.
var (
	ErrKubeEnabled    = errors.New("managed Kubernetes is already enabled")
	ErrKubeNotEnabled = errors.New("managed Kubernetes is not enabled")
	ErrWorkloadsExist = errors.New("services or apps exist; delete them first")
	// ErrStale answers a compare-and-set (OpKubeEtcd) prepared from a
	// state that changed before it applied; read the state and retry.
	ErrStale = errors.New("the state changed since it was read")
)

// KubeState is managed Kubernetes (State.Kube; nil: not managed). It is
// replaced, never mutated in place, so a reader holding one sees a
// consistent whole.
type KubeState struct {
	Version string `json:"version"` // "v1.34.4"
	// Generation changes with every write of Etcd (and at enable): it is
	// the Raft index of that write, so it only grows, across a disable
	// and a re-enable too, and a compare-and-set prepared for an earlier
	// cluster never matches a later one.
	Generation    uint64       `json:"generation"`
	EnabledAt     time.Time    `json:"enabled_at"`
	ServiceCIDR   netip.Prefix `json:"service_cidr"`   // 10.96.0.0/12
	ClusterDomain string       `json:"cluster_domain"` // cluster.local
	CACertPEM     []byte       `json:"ca_cert_pem"`
	CAKeySealed   string       `json:"ca_key_sealed"` // purpose KubeCAKeyPurpose
	EtcdCACertPEM []byte       `json:"etcd_ca_cert_pem"`
	// EtcdCAKeySealed: purpose KubeEtcdCAKeyPurpose.
	EtcdCAKeySealed string `json:"etcd_ca_key_sealed"`
	SAKeySealed     string `json:"sa_key_sealed"` // purpose KubeSAKeyPurpose
	// Etcd is the etcd membership as the agents drive it: one entry per
	// member the leader added (or bootstrapped), in order.
	//
	// Removing a node does not touch it: the leader's reconciler removes
	// the node's etcd member from etcd first and then commits the list
	// without it (OpKubeEtcd), so the list may name a node that is gone
	// until then, and a list committed afterwards must not name it.
	Etcd []EtcdMember `json:"etcd"`
}

// EtcdMember is one etcd member, on one node.
type EtcdMember struct {
	NodeID   string `json:"node_id"`
	MemberID uint64 `json:"member_id,omitempty"` // etcd's ID once known
	// Phase is EtcdBootstrap, EtcdLearner or EtcdVoter.
	Phase string `json:"phase"`
	// InitialCluster is --initial-cluster for a learner's first start.
	InitialCluster string `json:"initial_cluster,omitempty"`
}

// Member returns the etcd member on node nodeID, if any.
func (k *KubeState) Member(nodeID string) (EtcdMember, bool) {
	if k == nil {
		return EtcdMember{}, false
	}
	return memberOf(k.Etcd, nodeID)
}

func memberOf(ms []EtcdMember, nodeID string) (EtcdMember, bool) {
	for _, m := range ms {
		if m.NodeID == nodeID {
			return m, true
		}
	}
	return EtcdMember{}, false
}

func (k *KubeState) clone() *KubeState {
	if k == nil {
		return nil
	}
	c := *k
	c.CACertPEM = slices.Clone(k.CACertPEM)
	c.EtcdCACertPEM = slices.Clone(k.EtcdCACertPEM)
	c.Etcd = slices.Clone(k.Etcd)
	return &c
}

// KubeCmd is the payload of kube_* ops; each op uses its part.
type KubeCmd struct {
	// kube_enable: the state to store (Generation and EnabledAt are set
	// by Apply), and the kubeconfig workloads are applied with (sealed,
	// purpose KubeconfigPurpose) with its server URL for display.
	State      *KubeState `json:"state,omitempty"`
	Kubeconfig string     `json:"kubeconfig,omitempty"`
	Server     string     `json:"server,omitempty"`
	// kube_etcd: the whole new list, and the Generation it was prepared
	// from.
	Generation uint64       `json:"generation,omitempty"`
	Etcd       []EtcdMember `json:"etcd,omitempty"`
}

// KubeResult is Result.Data of kube_enable and kube_etcd.
type KubeResult struct {
	Generation uint64 `json:"generation"` // KubeState.Generation after the write
}

func (s *State) applyKube(cmd *Command, res *Result) error {
	c := cmd.Kube
	if c == nil && cmd.Op != OpKubeDisable {
		return ErrMalformedCmd
	}
	switch cmd.Op {
	case OpKubeEnable:
		return s.applyKubeEnable(cmd, res)

	case OpKubeDisable:
		if s.Kube == nil {
			return ErrKubeNotEnabled
		}
		// Deleted records count too: their namespaces are still on the
		// cluster until purged.
		if n := len(s.Workloads.Services) + len(s.Workloads.Apps); n > 0 {
			return fmt.Errorf("%d services and apps: %w", n, ErrWorkloadsExist)
		}
		s.Kube = nil
		if k := s.Workloads.Kube; k != nil && k.Managed {
			s.Workloads.Kube = nil
		}
		s.record(res.Index, cmd.Time, Event{Kind: EventKubeDisabled})
		return nil

	case OpKubeEtcd:
		if s.Kube == nil {
			return ErrKubeNotEnabled
		}
		if c.Generation != s.Kube.Generation {
			return fmt.Errorf("kube generation %d, prepared from %d: %w", s.Kube.Generation, c.Generation, ErrStale)
		}
		if len(c.Etcd) == 0 {
			return fmt.Errorf("an empty etcd membership: %w", ErrMalformedCmd)
		}
		if err := s.checkEtcdMembers(c.Etcd); err != nil {
			return err
		}
		// A bootstrap member starts a new etcd cluster: only the one
		// that did may stay one.
		for _, m := range c.Etcd {
			if m.Phase == EtcdBootstrap {
				if old, ok := s.Kube.Member(m.NodeID); !ok || old.Phase != EtcdBootstrap {
					return fmt.Errorf("node %s: a new bootstrap member: %w", m.NodeID, ErrMalformedCmd)
				}
			}
		}
		k := s.Kube.clone()
		detail := s.etcdChanges(k.Etcd, c.Etcd)
		k.Etcd = slices.Clone(c.Etcd)
		k.Generation = res.Index
		s.Kube = k
		if detail != "" {
			s.record(res.Index, cmd.Time, Event{Kind: EventKubeEtcd, Detail: detail})
		}
		res.Data, _ = json.Marshal(KubeResult{Generation: k.Generation})
		return nil
	}
	return ErrUnknownOp
}

func (s *State) applyKubeEnable(cmd *Command, res *Result) error {
	c := cmd.Kube
	k := c.State
	if k == nil || k.Version == "" || k.ClusterDomain == "" ||
		k.CAKeySealed == "" || k.EtcdCAKeySealed == "" || k.SAKeySealed == "" || c.Kubeconfig == "" {
		return ErrMalformedCmd
	}
	if s.Kube != nil {
		return ErrKubeEnabled
	}
	if err := checkServiceCIDR(k.ServiceCIDR); err != nil {
		return err
	}
	for name, p := range map[string][]byte{"Kubernetes CA": k.CACertPEM, "etcd CA": k.EtcdCACertPEM} {
		if err := checkCACert(p); err != nil {
			return fmt.Errorf("%s: %v: %w", name, err, ErrMalformedCmd)
		}
	}
	if len(k.Etcd) != 1 || k.Etcd[0].Phase != EtcdBootstrap {
		return fmt.Errorf("etcd must start with exactly one bootstrap member: %w", ErrMalformedCmd)
	}
	if err := s.checkEtcdMembers(k.Etcd); err != nil {
		return err
	}
	// Workloads already applied to a cluster the user set would be left
	// behind there if the target changed under them.
	w := &s.Workloads
	if w.Kube != nil && !w.Kube.Managed && len(w.Services)+len(w.Apps) > 0 {
		return fmt.Errorf("they run on the cluster set with kube set: %w", ErrWorkloadsExist)
	}
	n := k.clone()
	n.Generation, n.EnabledAt = res.Index, cmd.Time
	s.Kube = n
	t := &KubeTarget{Kubeconfig: c.Kubeconfig, Server: c.Server, SetAt: cmd.Time, Generation: 1, Managed: true}
	if w.Kube != nil {
		t.Generation = w.Kube.Generation + 1
	}
	w.Kube = t
	s.record(res.Index, cmd.Time, Event{Kind: EventKubeEnabled, Detail: k.Version})
	res.Data, _ = json.Marshal(KubeResult{Generation: n.Generation})
	return nil
}

// checkServiceCIDR accepts an IPv4 prefix in its canonical form that
// kube-apiserver takes (no larger than /12) and that leaves room for
// services, clear of the mesh's and pods' addresses.
func checkServiceCIDR(p netip.Prefix) error {
	switch {
	case !p.IsValid() || !p.Addr().Is4() || p != p.Masked():
		return fmt.Errorf("service CIDR %q is not an IPv4 network address: %w", p, ErrMalformedCmd)
	case p.Bits() < 12 || p.Bits() > 28:
		return fmt.Errorf("service CIDR %s must be /12 to /28: %w", p, ErrMalformedCmd)
	case p.Overlaps(MeshPrefix) || p.Overlaps(PodPrefix):
		return fmt.Errorf("service CIDR %s overlaps the mesh or pod network: %w", p, ErrMalformedCmd)
	}
	return nil
}

// checkCACert accepts PEM whose first block is a CA certificate.
func checkCACert(p []byte) error {
	b, _ := pem.Decode(p)
	if b == nil || b.Type != "CERTIFICATE" {
		return errors.New("no PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return err
	}
	if !c.BasicConstraintsValid || !c.IsCA {
		return errors.New("not a CA certificate")
	}
	return nil
}

// checkEtcdMembers checks a membership list against the state: nodes that
// exist, each once, known phases, distinct etcd IDs, one bootstrap member
// at most.
func (s *State) checkEtcdMembers(ms []EtcdMember) error {
	nodes := map[string]bool{}
	ids := map[uint64]bool{}
	bootstrap := 0
	for _, m := range ms {
		if _, ok := s.Nodes[m.NodeID]; !ok {
			return fmt.Errorf("etcd member on node %q: %w", m.NodeID, ErrNoSuchNode)
		}
		if nodes[m.NodeID] {
			return fmt.Errorf("two etcd members on node %s: %w", m.NodeID, ErrMalformedCmd)
		}
		nodes[m.NodeID] = true
		if m.MemberID != 0 {
			if ids[m.MemberID] {
				return fmt.Errorf("etcd member ID %x twice: %w", m.MemberID, ErrMalformedCmd)
			}
			ids[m.MemberID] = true
		}
		switch m.Phase {
		case EtcdBootstrap:
			bootstrap++
		case EtcdLearner, EtcdVoter:
		default:
			return fmt.Errorf("etcd member on node %s: phase %q: %w", m.NodeID, m.Phase, ErrMalformedCmd)
		}
	}
	if bootstrap > 1 {
		return fmt.Errorf("%d bootstrap members: %w", bootstrap, ErrMalformedCmd)
	}
	return nil
}

// etcdChanges describes how the membership went from old to new, by node
// name ("" when no member came, went or changed phase).
func (s *State) etcdChanges(old, next []EtcdMember) string {
	name := func(id string) string {
		if n, ok := s.Nodes[id]; ok {
			return n.Name
		}
		return id
	}
	var out []string
	for _, m := range next {
		o, ok := memberOf(old, m.NodeID)
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s added (%s)", name(m.NodeID), m.Phase))
		case o.Phase != m.Phase:
			out = append(out, fmt.Sprintf("%s %s -> %s", name(m.NodeID), o.Phase, m.Phase))
		}
	}
	for _, o := range old {
		if _, ok := memberOf(next, o.NodeID); !ok {
			out = append(out, name(o.NodeID)+" removed")
		}
	}
	return strings.Join(out, "; ")
}

// KubeEnableCommand is the command EnableKube proposes.
func KubeEnableCommand(k *KubeState, kubeconfigSealed, server string) *Command {
	return &Command{Op: OpKubeEnable, Kube: &KubeCmd{State: k, Kubeconfig: kubeconfigSealed, Server: server}}
}

// KubeDisableCommand is the command DisableKube proposes.
func KubeDisableCommand() *Command { return &Command{Op: OpKubeDisable, Kube: &KubeCmd{}} }

// KubeEtcdCommand is the command SetKubeEtcd proposes.
func KubeEtcdCommand(generation uint64, members []EtcdMember) *Command {
	return &Command{Op: OpKubeEtcd, Kube: &KubeCmd{Generation: generation, Etcd: members}}
}

// EnableKube turns managed Kubernetes on with k (Generation and EnabledAt
// are set by the FSM) and makes it the workloads' target through
// kubeconfigSealed (sealed, purpose KubeconfigPurpose; server is its URL,
// for display). It fails with ErrKubeEnabled if it is on already.
func (s *Store) EnableKube(ctx context.Context, k *KubeState, kubeconfigSealed, server string) error {
	return s.applyErr(ctx, KubeEnableCommand(k, kubeconfigSealed, server))
}

// DisableKube turns managed Kubernetes off (and drops the workloads'
// target if it was the managed cluster). It fails with ErrWorkloadsExist
// while services or apps exist, ErrKubeNotEnabled if it is off.
func (s *Store) DisableKube(ctx context.Context) error {
	return s.applyErr(ctx, KubeDisableCommand())
}

// SetKubeEtcd replaces the etcd membership with members if the state's
// KubeState.Generation is still generation, and fails with ErrStale if not.
func (s *Store) SetKubeEtcd(ctx context.Context, generation uint64, members []EtcdMember) error {
	return s.applyErr(ctx, KubeEtcdCommand(generation, members))
}

func (s *Store) applyErr(ctx context.Context, cmd *Command) error {
	res, err := s.Apply(ctx, cmd)
	if err != nil {
		return err
	}
	return res.Error()
}

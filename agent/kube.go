package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/kubehost"
	"github.com/runos/runos-agent/kubehost/kpki"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/raftstore"
)

// Managed Kubernetes (issue 13): package kubehost runs this node's
// components; the agent turns the cluster state into its Spec, drives etcd
// membership and Node records while it leads, and serves the local API.

var (
	_ httpapi.ManagedKube = (*Agent)(nil)
	_ httpapi.KubeNode    = (*Agent)(nil)
)

// DefaultKubeBinDir is where a server keeps the Kubernetes binaries the
// agent runs (kubelet, kube-apiserver, ...), unless run --kube-bin-dir says.
const DefaultKubeBinDir = "/usr/local/lib/runos-agent/kube"

// errKubeNeedsKernel: kubelet and CNI configure the host's network, which
// a userspace (netstack) mesh cannot carry.
var errKubeNeedsKernel = errors.New("managed Kubernetes needs kernel mode (run as root with --net kernel); in userspace mode use `kube set --kubeconfig` with a cluster you run")

// kubeEtcdMax bounds the etcd members: the voters, at most five.
const kubeEtcdMax = 5

// kubeState caches what is derived from the sealed Kubernetes material, so
// that a state change does not unseal and parse the CAs again.
type kubeState struct {
	mu sync.Mutex
	// guarded by mu:
	gen         string // the sealed values mat comes from
	mat         *kubeMaterial
	lastSpecErr string
}

// kubeMaterial is the opened Kubernetes material and the agent's own
// credentials issued from it; immutable once built.
type kubeMaterial struct {
	ca, etcdCA *kpki.CA
	saKey      []byte
	admin      *http.Client // cluster-admin through the local balancer
	adminURL   string       // the local balancer
	etcdTLS    *tls.Config  // the agent's etcd client credential
}

// EtcdTLS returns a copy of the agent's etcd client TLS config.
func (m *kubeMaterial) EtcdTLS() *tls.Config { return m.etcdTLS.Clone() }

func (a *Agent) newKubeHost() error {
	if a.mode != mesh.ModeKernel {
		return nil
	}
	bin := a.kubeBinDir
	if bin == "" {
		bin = DefaultKubeBinDir
	}
	cfg := kubehost.Config{Dir: filepath.Join(a.dir, "kube"), BinDir: bin, MountDNS: a.mountClusterDNS, MeshInterface: a.dev.InterfaceName()}
	h, err := kubehost.New(cfg, a.log.With("component", "kube"))
	if err != nil {
		return err
	}
	a.kubeHost = h
	a.closers = append(a.closers, h.Close)
	return nil
}

// kubeLoop keeps the local components equal to the state.
func (a *Agent) kubeLoop(ctx context.Context) {
	if a.kubeHost == nil {
		return
	}
	a.kubeHost.Start(ctx)
	// After a restart the local state can be behind the cluster's: Raft
	// restores the last snapshot and applies the entries after it only
	// once it learns the commit index. A spec from that state could retire
	// an etcd member this node still has (seen: "member count is unequal"
	// after a restart), so nothing is applied before the node has caught
	// up once; components keep running meanwhile (they are not ours to
	// stop until then).
	if !a.awaitCaughtUp(ctx, "managed Kubernetes") {
		return
	}
	for {
		changed := a.store.Changed()
		st, _ := a.store.State()
		spec, err := a.kubeSpec(st)
		if err != nil {
			a.kube.mu.Lock()
			if msg := err.Error(); msg != a.kube.lastSpecErr {
				a.log.Warn("managed Kubernetes", "err", err)
				a.kube.lastSpecErr = msg
			}
			a.kube.mu.Unlock()
		} else {
			a.kubeHost.Apply(spec)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-time.After(10 * time.Second):
		}
	}
}

// awaitCaughtUp returns true once this node's state has caught up with
// the cluster's commit index (a leader answered), false when ctx ends
// first. what names the waiting part in the log.
func (a *Agent) awaitCaughtUp(ctx context.Context, what string) bool {
	for err := a.store.CatchUp(ctx); err != nil; err = a.store.CatchUp(ctx) {
		a.log.Debug("waiting for the state to catch up", "for", what, "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Second):
		}
	}
	return true
}

// kubeMaterial opens the sealed CAs and keys of ks and issues the agent's
// own credentials from them, cached by their sealed text.
func (a *Agent) kubeMaterial(ks *raftstore.KubeState) (*kubeMaterial, error) {
	k := &a.kube
	k.mu.Lock()
	defer k.mu.Unlock()
	gen := ks.CAKeySealed + ks.EtcdCAKeySealed + ks.SAKeySealed
	if gen == k.gen && k.mat != nil {
		return k.mat, nil
	}
	m, err := a.openKubeMaterial(ks)
	if err != nil {
		return nil, err
	}
	k.gen, k.mat = gen, m
	return m, nil
}

func (a *Agent) openKubeMaterial(ks *raftstore.KubeState) (*kubeMaterial, error) {
	caKey, err := a.keys.Open(raftstore.KubeCAKeyPurpose, ks.CAKeySealed)
	if err != nil {
		return nil, fmt.Errorf("opening the Kubernetes CA key: %w", err)
	}
	etcdKey, err := a.keys.Open(raftstore.KubeEtcdCAKeyPurpose, ks.EtcdCAKeySealed)
	if err != nil {
		return nil, fmt.Errorf("opening the etcd CA key: %w", err)
	}
	m := &kubeMaterial{}
	if m.saKey, err = a.keys.Open(raftstore.KubeSAKeyPurpose, ks.SAKeySealed); err != nil {
		return nil, fmt.Errorf("opening the service account key: %w", err)
	}
	if m.ca, err = kpki.ParseCA(ks.CACertPEM, caKey); err != nil {
		return nil, err
	}
	if m.etcdCA, err = kpki.ParseCA(ks.EtcdCACertPEM, etcdKey); err != nil {
		return nil, err
	}

	kc, err := kubehost.AdminKubeconfig(m.ca, "https://"+kubehost.DefaultAPIListen, "runos-agent")
	if err != nil {
		return nil, err
	}
	admin, err := kube.Load(kc)
	if err != nil {
		return nil, err
	}
	m.admin, m.adminURL = admin.HTTPClient(10*time.Second), admin.Server

	certPEM, keyPEM, err := m.etcdCA.Issue(kpki.EtcdAgentClient())
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(m.etcdCA.Cert)
	m.etcdTLS = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}
	return m, nil
}

// kubeSpec is what this node runs for st (nil: nothing).
func (a *Agent) kubeSpec(st *raftstore.State) (*kubehost.Spec, error) {
	ks := st.Kube
	if ks == nil {
		return nil, nil
	}
	self, ok := st.Nodes[a.cfg.NodeID]
	if !ok {
		return nil, nil // removed, or not replicated yet: run nothing
	}
	m, err := a.kubeMaterial(ks)
	if err != nil {
		return nil, err
	}
	spec := &kubehost.Spec{
		ClusterID:     st.ClusterID,
		Version:       ks.Version,
		NodeName:      self.Name,
		MeshIP:        self.MeshIP,
		PodCIDR:       self.PodCIDR,
		PodPrefix:     raftstore.PodPrefix,
		ServiceCIDR:   ks.ServiceCIDR,
		ClusterDomain: ks.ClusterDomain,
		CA:            m.ca,
		EtcdCA:        m.etcdCA,
		SAKeyPEM:      m.saKey,
	}
	for _, m := range ks.Etcd {
		n, ok := st.Nodes[m.NodeID]
		if !ok {
			continue
		}
		voting := m.Phase == raftstore.EtcdBootstrap || m.Phase == raftstore.EtcdVoter
		if voting {
			spec.APIServers = append(spec.APIServers, n.MeshIP)
		}
		if m.NodeID == a.cfg.NodeID {
			spec.Etcd = &kubehost.EtcdRole{Bootstrap: m.Phase == raftstore.EtcdBootstrap, InitialCluster: m.InitialCluster, Voting: voting}
		}
	}
	return spec, nil
}

// EnableKube commits managed Kubernetes: new CAs and service-account key,
// sealed with the data key, and the first etcd member.
func (a *Agent) EnableKube(ctx context.Context, req api.KubeEnableRequest) (*api.KubeStatus, error) {
	if a.kubeHost == nil {
		return nil, httpapi.Classify(errKubeNeedsKernel, httpapi.ErrBadRequest)
	}
	version := req.Version
	if version == "" {
		version = api.DefaultKubeVersion
	}
	st, _ := a.store.State()
	if ks := st.Kube; ks != nil {
		if ks.Version != version {
			return nil, fmt.Errorf("%w at %s; changing the version (to %s) is not supported", raftstore.ErrKubeEnabled, ks.Version, version)
		}
		return a.KubeStatus(ctx)
	}
	if err := a.kubeHost.Check(version, true); err != nil {
		return nil, httpapi.Classify(fmt.Errorf("this node cannot run Kubernetes %s: %w", version, err), httpapi.ErrBadRequest)
	}
	// The first etcd member is this node if it votes in Raft, else the
	// leader: both are voters, which etcd members must be.
	first := a.cfg.NodeID
	if rs := a.store.Status(); !slices.Contains(rs.Voters, first) {
		first = rs.Leader
	}
	firstNode, ok := st.Nodes[first]
	if !ok {
		return nil, httpapi.Classify(errors.New("no leader to start etcd on; try again"), httpapi.ErrUnavailable)
	}
	ks, kubeconfigSealed, err := a.newKubeState(st.ClusterID, version, firstNode)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := a.store.EnableKube(ctx, ks, kubeconfigSealed, "https://"+kubehost.DefaultAPIListen); err != nil {
		return nil, err
	}
	a.log.Info("managed Kubernetes enabled", "version", version, "first_etcd", firstNode.Name)
	return a.KubeStatus(ctx)
}

func (a *Agent) newKubeState(clusterID, version string, first *raftstore.Node) (*raftstore.KubeState, string, error) {
	ca, err := kpki.NewCA("runos-kubernetes-" + clusterID)
	if err != nil {
		return nil, "", err
	}
	etcdCA, err := kpki.NewCA("runos-etcd-" + clusterID)
	if err != nil {
		return nil, "", err
	}
	saKey, _, err := kpki.NewServiceAccountKey()
	if err != nil {
		return nil, "", err
	}
	seal := func(purpose string, b []byte) (string, error) { return a.keys.Seal(purpose, b) }
	ks := &raftstore.KubeState{
		Version:       version,
		EnabledAt:     a.now().UTC(),
		ServiceCIDR:   netip.MustParsePrefix("10.96.0.0/12"),
		ClusterDomain: "cluster.local",
		CACertPEM:     ca.CertPEM,
		EtcdCACertPEM: etcdCA.CertPEM,
		Etcd: []raftstore.EtcdMember{{
			NodeID:         first.ID,
			Phase:          raftstore.EtcdBootstrap,
			InitialCluster: fmt.Sprintf("%s=%s", first.Name, etcdPeerURL(first.MeshIP)),
		}},
	}
	if ks.CAKeySealed, err = seal(raftstore.KubeCAKeyPurpose, ca.KeyPEM); err != nil {
		return nil, "", err
	}
	if ks.EtcdCAKeySealed, err = seal(raftstore.KubeEtcdCAKeyPurpose, etcdCA.KeyPEM); err != nil {
		return nil, "", err
	}
	if ks.SAKeySealed, err = seal(raftstore.KubeSAKeyPurpose, saKey); err != nil {
		return nil, "", err
	}
	// The services reconciler's credential: whichever node leads applies
	// through its own loopback balancer.
	kc, err := kubehost.AdminKubeconfig(ca, "https://"+kubehost.DefaultAPIListen, "runos-agent")
	if err != nil {
		return nil, "", err
	}
	kcSealed, err := seal(raftstore.KubeconfigPurpose, kc)
	if err != nil {
		return nil, "", err
	}
	return ks, kcSealed, nil
}

func etcdPeerURL(ip netip.Addr) string {
	return "https://" + net.JoinHostPort(ip.String(), fmt.Sprint(kubehost.EtcdPeerPort))
}

func etcdClientURL(ip netip.Addr) string {
	return "https://" + net.JoinHostPort(ip.String(), fmt.Sprint(kubehost.EtcdClientPort))
}

// DisableKube turns managed Kubernetes off; every node stops its
// components. Refused while services or apps exist.
func (a *Agent) DisableKube(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return a.store.DisableKube(ctx)
}

// AdminKubeconfig issues a cluster-admin kubeconfig for the local balancer
// (https://127.0.0.1:6444), which every node serves.
func (a *Agent) AdminKubeconfig(ctx context.Context) ([]byte, error) {
	st, _ := a.store.State()
	if st.Kube == nil {
		return nil, httpapi.Classify(errors.New("managed Kubernetes is not enabled (runos-agent kube enable)"), httpapi.ErrNotFound)
	}
	m, err := a.kubeMaterial(st.Kube)
	if err != nil {
		return nil, err
	}
	return kubehost.AdminKubeconfig(m.ca, "https://"+kubehost.DefaultAPIListen, "runos-admin")
}

// KubeComponents reports this node's components (node API).
func (a *Agent) KubeComponents() *api.KubeNodeComponents {
	out := &api.KubeNodeComponents{Components: []api.KubeComponent{}}
	if a.kubeHost == nil {
		out.Error = errKubeNeedsKernel.Error()
		return out
	}
	comps, err := a.kubeHost.Status()
	if err != nil {
		out.Error = err.Error()
	}
	for _, c := range comps {
		out.Components = append(out.Components, api.KubeComponent{
			Name: c.Name, Running: c.Running, PID: c.PID, Version: c.Version,
			Restarts: c.Restarts, LastError: c.LastError, Since: c.Since,
		})
	}
	return out
}

// ImportImageHere loads an image archive into this node's containerd.
func (a *Agent) ImportImageHere(ctx context.Context, archive io.Reader) error {
	if a.kubeHost == nil {
		return httpapi.Classify(errKubeNeedsKernel, httpapi.ErrBadRequest)
	}
	path, err := a.receiveArchive(archive)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	return a.kubeHost.ImportFile(ctx, path)
}

// receiveArchive stores an uploaded image archive in the data dir (not
// /tmp: archives are large, and the data dir is where the space is meant
// to be); the caller removes it.
func (a *Agent) receiveArchive(archive io.Reader) (string, error) {
	f, err := os.CreateTemp(filepath.Join(a.dir, "kube"), "import-*.tar")
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(f, archive); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", httpapi.Classify(fmt.Errorf("receiving the image archive: %w", err), httpapi.ErrBadRequest)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// ImportImage loads an image archive into every node's containerd: here
// first, then each other node in parallel over the node API.
func (a *Agent) ImportImage(ctx context.Context, archive io.Reader) (*api.KubeImportResult, error) {
	if a.kubeHost == nil {
		return nil, httpapi.Classify(errKubeNeedsKernel, httpapi.ErrBadRequest)
	}
	st, _ := a.store.State()
	if st.Kube == nil {
		return nil, httpapi.Classify(errors.New("managed Kubernetes is not enabled (runos-agent kube enable)"), httpapi.ErrBadRequest)
	}
	path, err := a.receiveArchive(archive)
	if err != nil {
		return nil, err
	}
	defer os.Remove(path)
	res := &api.KubeImportResult{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range st.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if n.ID == a.cfg.NodeID {
				err = a.kubeHost.ImportFile(ctx, path)
			} else {
				var body *os.File
				if body, err = os.Open(path); err == nil {
					err = a.nodeClient.ImportImage(ctx, n.Name, body)
					body.Close()
				}
			}
			r := api.KubeImportNode{Name: n.Name}
			if err != nil {
				r.Error = err.Error()
			}
			mu.Lock()
			res.Nodes = append(res.Nodes, r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.SortFunc(res.Nodes, func(x, y api.KubeImportNode) int { return strings.Compare(x.Name, y.Name) })
	return res, nil
}

// KubeStatus asks every node for its components (in parallel, briefly)
// and the API for Node readiness.
func (a *Agent) KubeStatus(ctx context.Context) (*api.KubeStatus, error) {
	st, _ := a.store.State()
	out := &api.KubeStatus{Nodes: []api.KubeNodeStatus{}}
	ks := st.Kube
	if ks == nil {
		return out, nil
	}
	out.Managed, out.Version, out.EnabledAt = true, ks.Version, ks.EnabledAt
	for _, m := range ks.Etcd {
		name := m.NodeID
		if n, ok := st.Nodes[m.NodeID]; ok {
			name = n.Name
		}
		out.Etcd = append(out.Etcd, api.KubeEtcdMember{Node: name, Phase: m.Phase})
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ready, apiErr := a.kubeNodesReady(ctx, ks)
	if apiErr != nil {
		out.APIError = apiErr.Error()
	} else if self, ok := st.Nodes[a.cfg.NodeID]; ok {
		a.kubeReady.set(ready[self.Name], a.now())
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range st.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns := api.KubeNodeStatus{Name: n.Name, Ready: ready[n.Name]}
			var comps *api.KubeNodeComponents
			if n.ID == a.cfg.NodeID {
				comps = a.KubeComponents()
			} else {
				var err error
				if comps, err = a.nodeClient.KubeComponents(ctx, n.Name); err != nil {
					ns.Error = err.Error()
				}
			}
			if comps != nil {
				ns.Components, ns.Error = comps.Components, comps.Error
			}
			if ns.Components == nil {
				ns.Components = []api.KubeComponent{}
			}
			mu.Lock()
			out.Nodes = append(out.Nodes, ns)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.SortFunc(out.Nodes, func(x, y api.KubeNodeStatus) int { return strings.Compare(x.Name, y.Name) })
	return out, nil
}

// kubeNodesReady maps Node names to their Ready condition.
func (a *Agent) kubeNodesReady(ctx context.Context, ks *raftstore.KubeState) (map[string]bool, error) {
	nodes, err := a.kubeNodes(ctx, ks)
	if err != nil {
		return map[string]bool{}, err
	}
	ready := map[string]bool{}
	for _, n := range nodes {
		ready[n.Metadata.Name] = n.ready()
	}
	return ready, nil
}

func (a *Agent) kubeHTTP(ks *raftstore.KubeState) (*http.Client, string, error) {
	m, err := a.kubeMaterial(ks)
	if err != nil {
		return nil, "", err
	}
	return m.admin, m.adminURL, nil
}

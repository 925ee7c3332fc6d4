// Package kubehost runs one node's share of the Kubernetes cluster the
// agents manage: containerd, the kubelet, kube-proxy, the loopback API
// balancer and the cluster DNS server on every node; an etcd member,
// kube-apiserver, kube-controller-manager and kube-scheduler on the voters.
// The agent computes a Spec from the Raft state and hands it over; the Host
// makes the processes match it. Components are separate processes in their
// own sessions (package supervise): the agent never links them, and its
// restart or death does not take running pods down.
package kubehost

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/runos/runos-agent/iptables"
	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/kubehost/apilb"
	"github.com/runos/runos-agent/kubehost/clusterdns"
	"github.com/runos/runos-agent/kubehost/kpki"
	"github.com/runos/runos-agent/kubehost/ociimage"
	"github.com/runos/runos-agent/kubehost/supervise"
)

// Component names, in start order.
const (
	Containerd        = "containerd"
	Etcd              = "etcd"
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
	Kubelet           = "kubelet"
	KubeProxy         = "kube-proxy"
	// The two the agent serves itself.
	APIBalancer = "api-balancer"
	ClusterDNS  = "cluster-dns"
)

var startOrder = []string{Containerd, Etcd, APIServer, ControllerManager, Scheduler, Kubelet, KubeProxy}

// Spec is what this node runs, derived from the cluster state.
type Spec struct {
	ClusterID     string
	Version       string // of the Kubernetes binaries, "v1.34.4"
	NodeName      string
	MeshIP        netip.Addr
	PodCIDR       netip.Prefix // the node's /24
	PodPrefix     netip.Prefix // every node's pods (172.25.0.0/16)
	ServiceCIDR   netip.Prefix
	ClusterDomain string
	CA            *kpki.CA // the Kubernetes CA
	EtcdCA        *kpki.CA
	SAKeyPEM      []byte
	// Etcd is this node's etcd member (nil: none here).
	Etcd *EtcdRole
	// APIServers are the mesh IPs of the nodes running an API server: the
	// balancer's backends.
	APIServers []netip.Addr
}

// EtcdRole is this node's etcd member as the cluster state records it.
type EtcdRole struct {
	// Bootstrap: the first member, started with --initial-cluster-state new.
	Bootstrap      bool
	InitialCluster string
	// Voting: bootstrapped or promoted from learner. Only then does the
	// node run the API server and controllers (an API server on a learner
	// could not read).
	Voting bool
}

// ControlPlane reports whether the node runs the API server, controller
// manager and scheduler.
func (s *Spec) ControlPlane() bool { return s.Etcd != nil && s.Etcd.Voting }

// Config is where the Host keeps its files and finds its binaries.
type Config struct {
	// Dir holds everything (the data dir's kube/). Required.
	Dir string
	// BinDir holds kubelet, kube-apiserver, kube-controller-manager,
	// kube-scheduler and kube-proxy. Required.
	BinDir string
	// Distribution binaries; empty: looked up in PATH (containerd, ctr,
	// etcd) or the Debian locations (/bin/busybox, /usr/lib/cni).
	ContainerdPath, CtrPath, EtcdPath, BusyboxPath, CNIBinDir string
	// APIListen is the loopback address of the API balancer every local
	// component uses (default 127.0.0.1:6444).
	APIListen string
	// MountDNS hands the cluster DNS handler to the node's resolver
	// (required), which owns port 53 on the mesh IP, where kubelet's
	// clusterDNS points, and passes it the names under the cluster
	// domain; h nil unmounts. Called from the Host's loop only.
	MountDNS func(domain string, h *clusterdns.Handler)
	// Backoff overrides the supervisor's restart backoff (tests).
	MinBackoff, MaxBackoff time.Duration
	// Interval is how often the Host re-checks everything without a new
	// Spec (default 5 s).
	Interval time.Duration
	// MeshInterface is the WireGuard interface other nodes' pods arrive
	// on (default "wg0").
	MeshInterface string
	// IPTables runs the host's iptables (zero value: this namespace).
	IPTables iptables.Host
}

// DefaultAPIListen is the API balancer's default address.
const DefaultAPIListen = "127.0.0.1:6444"

// ComponentStatus is one component on this node.
type ComponentStatus struct {
	supervise.Status
	Version string `json:"version,omitempty"`
}

// Host supervises one node's components. Apply, Status and ImportImage may
// be called from any goroutine.
type Host struct {
	cfg Config
	p   paths
	log *slog.Logger

	wake chan struct{}

	mu sync.Mutex
	// spec is the desired state (nil: nothing runs); guarded by mu.
	spec *Spec
	// status of every component as of the last reconcile; guarded by mu.
	status map[string]ComponentStatus
	// preflightErr is the reason nothing can start (missing binary, ...);
	// guarded by mu.
	preflightErr error

	// Owned by the loop goroutine.
	procs  map[string]*running
	lb     *apilb.Balancer
	dns    *clusterdns.Handler
	lookup *clusterdns.KubeLookup
	// lbErr and dnsErr are why the balancer or cluster DNS is not
	// serving (e.g. its address is taken, no API credential yet);
	// retried every round.
	lbErr   error
	dnsErr  error
	pauseOK int // containerd pid the pause image was imported into
	// egressFor is the pod range the iptables chains (chains.go) are
	// installed for, and podRules those chains.
	egressFor netip.Prefix
	podRules  []*iptables.Kept
	// versions caches each binary's reported version by path and mtime.
	versions map[string]binVersion
	// filesKey is the spec the files on disk were last written for, at
	// filesAt; fileSums caches the hash of each config file identity
	// reads, emptied whenever writeFiles runs. Together they keep an idle
	// round (every Interval) from re-reading and re-parsing every
	// certificate and config file.
	filesKey string
	filesAt  time.Time
	fileSums map[string][]byte
	// cgroups prepares the kubelet's cgroup root (prepareCgroups; a
	// seam so unit tests leave the host's cgroups alone).
	cgroups func(root string) error

	startOnce, closeOnce sync.Once
	cancel               context.CancelFunc
	done                 chan struct{}
}

type running struct {
	proc *supervise.Process
	// key is the binary, its arguments and the content of its config
	// files: a change to any of them restarts the component.
	key string
}

type binVersion struct {
	mtime   time.Time
	version string
	err     error
}

// New checks the config; nothing runs before Start and a Spec.
func New(cfg Config, log *slog.Logger) (*Host, error) {
	if cfg.Dir == "" {
		return nil, errors.New("kubehost: Dir is required")
	}
	if cfg.BinDir == "" {
		return nil, errors.New("kubehost: BinDir is required (--kube-bin-dir)")
	}
	if log == nil {
		return nil, errors.New("kubehost: logger is required")
	}
	if cfg.APIListen == "" {
		cfg.APIListen = DefaultAPIListen
	}
	if cfg.MountDNS == nil {
		return nil, errors.New("kubehost: MountDNS is required (the node resolver serves cluster DNS)")
	}
	if cfg.Interval == 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.MeshInterface == "" {
		cfg.MeshInterface = "wg0"
	}
	if cfg.BusyboxPath == "" {
		cfg.BusyboxPath = "/bin/busybox"
	}
	if cfg.CNIBinDir == "" {
		cfg.CNIBinDir = "/usr/lib/cni"
	}
	look := func(p *string, name string) {
		if *p == "" {
			if found, err := exec.LookPath(name); err == nil {
				*p = found
			} else {
				*p = name // reported as missing by preflight
			}
		}
	}
	look(&cfg.ContainerdPath, "containerd")
	look(&cfg.CtrPath, "ctr")
	look(&cfg.EtcdPath, "etcd")
	abs, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	cfg.Dir = abs
	h := &Host{
		cfg:      cfg,
		p:        paths{dir: abs},
		log:      log,
		wake:     make(chan struct{}, 1),
		status:   map[string]ComponentStatus{},
		procs:    map[string]*running{},
		versions: map[string]binVersion{},
		fileSums: map[string][]byte{},
		cgroups:  prepareCgroups,
		done:     make(chan struct{}),
	}
	return h, nil
}

// Start runs the reconcile loop until Close.
func (h *Host) Start(ctx context.Context) {
	h.startOnce.Do(func() {
		ctx, h.cancel = context.WithCancel(context.WithoutCancel(ctx))
		go h.loop(ctx)
	})
}

// Apply sets the desired state (nil: stop everything) and wakes the loop.
func (h *Host) Apply(s *Spec) {
	h.mu.Lock()
	h.spec = s
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// Close stops supervising and waits, leaving the components running (see
// detachAll); Apply(nil) is what stops them. Idempotent.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		h.startOnce.Do(func() { close(h.done) }) // never started
		if h.cancel != nil {
			h.cancel()
		}
		<-h.done
	})
	return nil
}

func (h *Host) loop(ctx context.Context) {
	defer close(h.done)
	defer h.detachAll()
	t := time.NewTicker(h.cfg.Interval)
	defer t.Stop()
	for {
		h.mu.Lock()
		spec := h.spec
		h.mu.Unlock()
		h.reconcile(ctx, spec)
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
		case <-t.C:
		}
	}
}

// detachAll leaves the components running when the agent stops: a
// restart or upgrade of the agent adopts them again, and Kubernetes does
// not notice. (Under systemd, KillMode decides whether stopping the
// service stops them too.)
func (h *Host) detachAll() {
	for name, r := range h.procs {
		if err := r.proc.Detach(); err != nil {
			h.log.Warn("detaching component", "component", name, "err", err)
		}
		delete(h.procs, name)
	}
	h.stopServed()
}

// stopAll stops in reverse start order: kubelet before containerd, the
// API server before etcd.
func (h *Host) stopAll() {
	for _, name := range slices.Backward(startOrder) {
		h.stop(name)
	}
	h.stopServed()
	h.mu.Lock()
	h.status = map[string]ComponentStatus{}
	h.mu.Unlock()
}

func (h *Host) stopServed() {
	h.lbErr, h.dnsErr = nil, nil
	if h.dns != nil {
		h.cfg.MountDNS(h.dns.Domain(), nil)
		h.dns = nil
	}
	if h.lookup != nil {
		h.lookup.Close()
		h.lookup = nil
	}
	if h.lb != nil {
		h.lb.Close()
		h.lb = nil
	}
}

func (h *Host) stop(name string) {
	if r := h.procs[name]; r != nil {
		if err := r.proc.Close(); err != nil {
			h.log.Warn("stopping component", "component", name, "err", err)
		}
		delete(h.procs, name)
	}
}

// reconcile makes the processes match spec. Errors are recorded per
// component (Status) and retried on the next round.
func (h *Host) reconcile(ctx context.Context, spec *Spec) {
	if spec == nil {
		if len(h.procs) > 0 || h.lb != nil || h.egressFor.IsValid() {
			h.log.Info("managed Kubernetes off: stopping components")
			h.stopAll()
			h.removePodRules()
			h.egressFor = netip.Prefix{}
		}
		h.filesKey = ""
		h.setPreflight(nil)
		return
	}
	versions, err := h.preflight(spec)
	h.setPreflight(err)
	if err != nil {
		h.log.Warn("managed Kubernetes cannot start", "err", err)
		return
	}
	if _, err := h.syncFiles(spec); err != nil {
		h.setPreflight(err)
		h.log.Warn("writing Kubernetes files", "err", err)
		return
	}
	h.ensureBalancer(ctx, spec)
	if h.egressFor != spec.PodCIDR {
		keep := []netip.Prefix{spec.PodPrefix, netip.MustParsePrefix("172.24.0.0/16")}
		if err := h.ensurePodRules(ctx, spec, keep); err != nil {
			h.log.Warn("pod egress and forward rules", "err", err)
		} else {
			h.egressFor = spec.PodCIDR
		}
	} else {
		iptables.Recheck(ctx, h.log, h.podRules...) // a reload of the host's firewall takes them
	}

	want := h.wanted(spec)
	for _, name := range slices.Backward(startOrder) {
		if _, ok := want[name]; !ok {
			h.stop(name)
		}
	}
	if spec.Etcd == nil {
		h.retireEtcdData()
	}
	for _, name := range startOrder {
		w, ok := want[name]
		if !ok {
			continue
		}
		if name == Kubelet && !h.pauseImported(ctx) {
			continue // the sandbox image first, or every pod fails
		}
		h.ensure(ctx, name, w)
	}
	h.ensureDNS(ctx, spec)

	st := map[string]ComponentStatus{}
	for name, r := range h.procs {
		st[name] = ComponentStatus{Status: r.proc.Status(), Version: versions[name]}
	}
	st[APIBalancer] = h.servedStatus(APIBalancer, h.lb != nil, h.lbErr)
	st[ClusterDNS] = h.servedStatus(ClusterDNS, h.dns != nil, h.dnsErr)
	h.mu.Lock()
	h.status = st
	h.mu.Unlock()
}

func (h *Host) servedStatus(name string, up bool, err error) ComponentStatus {
	s := ComponentStatus{Status: supervise.Status{Name: name, Running: up}}
	if err != nil {
		s.LastError = err.Error()
	}
	return s
}

type want struct {
	path  string
	args  []string
	files []string // config files whose content is part of the identity
}

func (h *Host) wanted(s *Spec) map[string]want {
	p := h.p
	w := map[string]want{
		Containerd: {h.cfg.ContainerdPath, containerdArgs(p), []string{p.etc("containerd.toml")}},
		Kubelet: {h.bin(Kubelet), kubeletArgs(p, s), []string{p.etc("kubelet.json"), p.kubeconfig("kubelet"),
			p.pki("kubelet-serving.crt")}},
		KubeProxy: {h.bin(KubeProxy), kubeProxyArgs(p), []string{p.etc("kube-proxy.json"), p.kubeconfig("kube-proxy")}},
	}
	if s.Etcd != nil {
		w[Etcd] = want{h.cfg.EtcdPath, etcdArgs(p, s), []string{p.pki("etcd-server.crt"), p.pki("etcd-peer.crt")}}
	}
	if s.ControlPlane() {
		w[APIServer] = want{h.bin(APIServer), apiServerArgs(p, s), []string{p.pki("apiserver.crt"), p.pki("sa.key")}}
		w[ControllerManager] = want{h.bin(ControllerManager), controllerManagerArgs(p, s), []string{p.kubeconfig("controller-manager"), p.pki("sa.key")}}
		w[Scheduler] = want{h.bin(Scheduler), schedulerArgs(p), []string{p.kubeconfig("scheduler")}}
	}
	return w
}

func (h *Host) bin(name string) string { return filepath.Join(h.cfg.BinDir, name) }

func (h *Host) ensure(ctx context.Context, name string, w want) {
	key, err := h.identity(w)
	if err != nil {
		h.log.Warn("component config", "component", name, "err", err)
		return
	}
	if r := h.procs[name]; r != nil {
		if r.key == key {
			return
		}
		h.log.Info("configuration changed: restarting", "component", name)
		h.stop(name)
	}
	proc, err := supervise.New(supervise.Config{
		Name:       name,
		Path:       w.path,
		Args:       w.args,
		Dir:        h.p.log(),
		MinBackoff: h.cfg.MinBackoff,
		MaxBackoff: h.cfg.MaxBackoff,
	}, h.log.With("component", name))
	if err != nil {
		h.log.Warn("component", "component", name, "err", err)
		return
	}
	if err := proc.Start(ctx); err != nil {
		h.log.Warn("starting component", "component", name, "err", err)
		proc.Close()
		return
	}
	h.procs[name] = &running{proc: proc, key: key}
}

// retireEtcdData moves the data of an etcd member this node no longer has
// aside: the cluster removed the member, and a member started later on
// this node (as a new learner) must not find the old member's identity.
// One generation is kept, for disaster recovery by hand.
func (h *Host) retireEtcdData() {
	dir := h.p.etcdData()
	if _, err := os.Stat(dir); err != nil {
		return
	}
	old := dir + ".removed"
	os.RemoveAll(old)
	if err := os.Rename(dir, old); err != nil {
		h.log.Warn("retiring the data of a removed etcd member", "err", err)
		return
	}
	h.log.Info("etcd member removed from this node; its data moved aside", "path", old)
}

// identity hashes what a component is: binary, arguments, config files.
// A file's hash is cached until writeFiles runs again.
func (h *Host) identity(w want) (string, error) {
	sum := sha256.New()
	fmt.Fprintf(sum, "%s\x00%s\x00", w.path, strings.Join(w.args, "\x00"))
	for _, f := range w.files {
		fs, ok := h.fileSums[f]
		if !ok {
			b, err := os.ReadFile(f)
			if err != nil {
				return "", err
			}
			s := sha256.Sum256(b)
			fs = s[:]
			h.fileSums[f] = fs
		}
		sum.Write(fs)
	}
	return hex.EncodeToString(sum.Sum(nil)), nil
}

// pauseImported imports the sandbox image into containerd once per
// containerd process (an import is cheap and idempotent; doing it per
// process covers a wiped containerd root).
func (h *Host) pauseImported(ctx context.Context) bool {
	r := h.procs[Containerd]
	if r == nil {
		return false
	}
	st := r.proc.Status()
	if !st.Running {
		return false
	}
	if h.pauseOK == st.PID {
		return true
	}
	img, err := ociimage.Pause(ociimage.PauseRef, h.cfg.BusyboxPath)
	if err != nil {
		h.log.Warn("sandbox image", "err", err)
		return false
	}
	// Written straight to the file ctr imports, not through a buffer.
	if err := h.importWritten(ctx, "pause.tar", func(w io.Writer) error { return ociimage.Write(w, img) }); err != nil {
		h.log.Debug("importing the sandbox image (containerd still starting?)", "err", err)
		return false
	}
	h.pauseOK = st.PID
	return true
}

// importWritten imports the archive write writes, through a temporary
// file named after name.
func (h *Host) importWritten(ctx context.Context, name string, write func(io.Writer) error) error {
	if err := os.MkdirAll(h.p.imports(), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(h.p.imports(), name+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	bw := bufio.NewWriterSize(f, 64<<10)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return h.ImportFile(ctx, f.Name())
}

// ImportFile loads an image archive (docker-archive or OCI tar) into this
// node's containerd, where the kubelet finds it.
func (h *Host) ImportFile(ctx context.Context, path string) error {
	if _, err := os.Stat(h.p.containerdSock()); err != nil {
		return errors.New("containerd is not running on this node (is managed Kubernetes enabled?)")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, h.cfg.CtrPath, "--address", h.p.containerdSock(), "--namespace", "k8s.io",
		"images", "import", "--no-unpack=false", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (h *Host) ensureBalancer(ctx context.Context, s *Spec) {
	backends := make([]string, 0, len(s.APIServers))
	for _, ip := range s.APIServers {
		backends = append(backends, net.JoinHostPort(ip.String(), fmt.Sprint(APIServerPort)))
	}
	if h.lb == nil {
		lb, err := apilb.New(apilb.Config{Listen: h.cfg.APIListen, Backends: backends}, h.log.With("component", APIBalancer))
		if err == nil {
			if err = lb.Start(ctx); err != nil {
				lb.Close()
			}
		}
		if err != nil {
			// Retried every round: log a new reason only.
			if h.lbErr == nil || h.lbErr.Error() != err.Error() {
				h.log.Warn("API balancer", "err", err)
			}
			h.lbErr = err
			return
		}
		h.lb, h.lbErr = lb, nil
		return
	}
	h.lb.SetBackends(backends)
}

// ensureDNS mounts cluster DNS in the node resolver, answering from the
// API (as kube-proxy, whose role may read Services and EndpointSlices).
func (h *Host) ensureDNS(ctx context.Context, s *Spec) {
	if h.dns != nil {
		return
	}
	kc, err := os.ReadFile(h.p.kubeconfig("kube-proxy"))
	if err != nil {
		h.dnsErr = err
		return
	}
	k, err := kube.Load(kc)
	if err != nil {
		h.dnsErr = err
		return
	}
	lookup, err := clusterdns.NewKubeLookup(k, h.log.With("component", ClusterDNS))
	if err != nil {
		h.dnsErr = err
		return
	}
	srv, err := clusterdns.New(clusterdns.Config{Domain: s.ClusterDomain, Lookup: lookup})
	if err == nil {
		err = lookup.Start(ctx)
	}
	if err != nil {
		lookup.Close()
		h.dnsErr = fmt.Errorf("cluster DNS: %w", err)
		return
	}
	h.dns, h.lookup, h.dnsErr = srv, lookup, nil
	h.cfg.MountDNS(srv.Domain(), srv)
}

// Status reports every component (empty when Kubernetes is not managed
// here) and the reason nothing runs, if any.
func (h *Host) Status() ([]ComponentStatus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]ComponentStatus, 0, len(h.status))
	for _, s := range h.status {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b ComponentStatus) int { return strings.Compare(a.Name, b.Name) })
	return out, h.preflightErr
}

func (h *Host) setPreflight(err error) {
	h.mu.Lock()
	h.preflightErr = err
	h.mu.Unlock()
}

// Package agent is the composition root of runos-agent: it builds every
// component from the data dir, starts them in order, owns their lifecycles,
// and gives package httpapi's local API, node API and join endpoint their
// listeners and backends. No other package imports it.
package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/runos/runos-agent/cloudlink"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/gossip"
	"github.com/runos/runos-agent/health"
	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/kubehost"
	"github.com/runos/runos-agent/leader"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/meshdns"
	"github.com/runos/runos-agent/metrics"
	"github.com/runos/runos-agent/nat"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
	"github.com/runos/runos-agent/workload"
)

// Version is the agent's version, set at build time with -ldflags.
var Version = "dev"

// Ports on the mesh IP.
const (
	GossipPort  = 7946
	RaftPort    = raftstore.DefaultPort
	NodeAPIPort = 7948
)

// writeTimeout is how long a write from the CLI, UI or a joiner may wait:
// long enough to ride out even Raft's own election timer (up to 24 s with
// production timing, see raftstore.TimingFor), which failover on demand
// usually spares it (about 1 s, raftstore/failover.go).
const writeTimeout = 40 * time.Second

// Config is how the daemon is run; everything about the node itself comes
// from the data dir.
type Config struct {
	DataDir string
	// Net overrides the data dir's network mode (auto|kernel|userspace).
	Net string
	// UIListen is where the local web UI listens ("" disables it). If the
	// address is taken (another agent on this machine), a free port on the
	// same host is used instead; UIURL reports it.
	UIListen string
	// MetricsListen is where Prometheus metrics are served ("" : off).
	MetricsListen string
	// PprofListen serves Go's profiler on a listener of its own ("" : off,
	// the default). It must be loopback (a port, or a loopback address
	// and port): the profiler has no authentication.
	PprofListen string
	// KubeBinDir holds the Kubernetes binaries managed Kubernetes runs
	// (kubelet, kube-apiserver, ...; "" : DefaultKubeBinDir).
	KubeBinDir string
	// DNS is the node resolver (dns.go).
	DNS DNSConfig
	// AccessPort is the UDP port wg1 listens on when devices enter here
	// (0: raftstore.AccessPort). In-process test clusters give each node
	// its own.
	AccessPort int
	// Tuning shortens timers for tests; zero values keep production defaults.
	Tuning Tuning
}

// Deps are what a node takes from its surroundings rather than from its data
// dir: the logger, and the seams tests replace. Log is required; a zero
// field elsewhere means production behaviour.
type Deps struct {
	Log *slog.Logger
	// Underlay is the node's UDP socket as a conn.Bind whose endpoints are
	// plain addresses (nil: a real UDP socket on the node's listen port).
	// Start hands it to the node's nat.Bind, which owns it from then on:
	// Close closes it. Tests give a natlab host's Bind, so a partition is a
	// drop rule rather than a firewall.
	Underlay conn.Bind
	// Now is the clock the agent reads for decisions and reported ages
	// (token expiry, command times, heartbeat ages, how long a removed peer
	// lingers); nil: time.Now. Durations measured for logs and pings, and
	// WireGuard handshake ages (wireguard-go's clock), stay on the real one.
	Now func() time.Time
	// NewKubeExecutor builds the Kubernetes client for a kubeconfig (nil:
	// kube.New).
	NewKubeExecutor func(kubeconfig []byte) (*kube.Executor, error)
	// AfterWorkloadApply, when set, runs after the reconciler applied an
	// instance's objects and before it writes the status: tests kill a
	// leader exactly there.
	AfterWorkloadApply func(ctx context.Context, osid string)
}

// Tuning holds the timers tests shorten; zero values keep production defaults.
type Tuning struct {
	RaftHeartbeat     time.Duration
	RaftElection      time.Duration
	HeartbeatInterval time.Duration
	HealthyWithin     time.Duration
	OfflineAfter      time.Duration
	HealthDwell       time.Duration
	DeadVoterGrace    time.Duration
	ReconcileInterval time.Duration
	GossipFast        bool // memberlist with short probe and suspicion timers

	// CloudBackoffMax caps the cloud link's reconnect backoff (default 60s).
	CloudBackoffMax time.Duration

	// WorkloadInterval is how often the workload reconciler re-reads
	// status from Kubernetes (default 10 s).
	WorkloadInterval time.Duration
}

// FastTuning shortens every timer that decides how fast a cluster forms and
// reacts (Raft elections, heartbeats, health thresholds, reconcilers), so a
// crash goes degraded then offline in seconds: in-process test clusters
// (agent/agenttest and this package's own tests) and demos.
func FastTuning() Tuning {
	return Tuning{
		RaftHeartbeat:     300 * time.Millisecond,
		RaftElection:      300 * time.Millisecond,
		DeadVoterGrace:    2 * time.Second,
		ReconcileInterval: 200 * time.Millisecond,
		GossipFast:        true,
		HeartbeatInterval: 200 * time.Millisecond,
		HealthyWithin:     time.Second,
		OfflineAfter:      4 * time.Second,
		HealthDwell:       300 * time.Millisecond,
		CloudBackoffMax:   2 * time.Second,
		WorkloadInterval:  time.Second,
	}
}

// Agent is one running node.
type Agent struct {
	dir        string
	accessPort int // Config.AccessPort
	cfg        *datadir.NodeConfig
	log        *slog.Logger
	tuning     Tuning
	mode       mesh.Mode
	// underlay is Deps.Underlay until Start gives it to the nat.Bind.
	underlay conn.Bind
	// kubeExec and afterApply are Deps.NewKubeExecutor and
	// Deps.AfterWorkloadApply, handed to the workload reconciler.
	kubeExec   func(kubeconfig []byte) (*kube.Executor, error)
	afterApply func(ctx context.Context, osid string)
	now        func() time.Time

	wgKey    mesh.Key
	nodeCert []byte
	nodeKey  []byte
	caCert   *x509.Certificate
	// keys is the cluster data keyring: seals secrets kept in the Raft
	// state. A rotation adds an epoch in place (rotate.go), so every
	// component handed it follows without restart.
	keys *seal.Keyring
	// adoptMu serialises adoptKeys (the key loop, Admit, RemoveNode).
	adoptMu sync.Mutex
	// certFingerprint is pki.Fingerprint of nodeCert, as the node's record
	// in the state should hold it.
	certFingerprint string

	cloud *cloudlink.Link // the cloud link (cloud.go)

	bind       *nat.Bind // owned by dev, which closes it
	dev        *mesh.Device
	transport  *gossip.Transport
	ml         *memberlist.Memberlist
	store      *raftstore.Store
	mtlsServer *tls.Config
	mtlsClient *tls.Config
	// gossipKeys is memberlist's keyring (rekeyGossip).
	gossipKeys *memberlist.Keyring
	// certStore is store for allowPeerCert, which Raft's handshakes call
	// from inside raftstore.New, before store is set.
	certStore atomic.Pointer[raftstore.Store]
	forwarder *http.Client
	// nodeAPIListener counts connections refused for their source.
	nodeAPIListener *mesh.SourceListener
	nodeClient      *httpapi.NodeClient // forwards writes to the leader, through forwarder

	servers  []*http.Server
	localAPI http.Handler
	uiListen string
	uiURL    string

	metricsListen string
	metricsURL    string
	pprofListen   string // checked loopback by New
	pprofURL      string

	startOnce sync.Once
	closeOnce sync.Once
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closers   []func() error // in reverse start order

	// peers keeps WireGuard's peers equal to the cluster (peers.go).
	peers *mesh.Reconciler

	pathEvents chan nat.PathEvent
	// candidateHint asks selfLoop to republish candidates now.
	candidateHint chan struct{}
	candsMu       sync.Mutex
	cands         []string // guarded by candsMu; own candidates, for heartbeats

	startedAt time.Time
	health    *health.Monitor
	// workloads serves services and apps to the local API; reconciler
	// applies them while this node leads (workloads.go).
	workloads  *workload.Ops
	reconciler *workload.Reconciler

	// Managed Kubernetes (kube.go): kubeHost runs this node's components
	// (nil in userspace mode, where it cannot).
	kubeBinDir string
	kubeHost   *kubehost.Host
	kube       kubeState
	acc        accessState    // wg1 (access.go)
	kubeReady  kubeReadyCache // this node's Node readiness for /metrics

	// The node resolver (dns.go); it exists when DNSConfig.Off too.
	dnsCfg       DNSConfig
	dns          *meshdns.Server
	dnsMu        sync.Mutex
	dnsExtra     []netip.Addr // guarded by dnsMu; wg1 and other own addresses
	dnsListenErr error        // guarded by dnsMu; addresses not bound
	dnsMounted   []string     // guarded by dnsMu; mounted domains
}

// New loads the data dir. It fails on a dir that init or join did not
// prepare, or whose keys are missing or unreadable, and without deps.Log.
func New(cfg Config, deps Deps) (*Agent, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("agent: DataDir is required")
	}
	if deps.Log == nil {
		return nil, errors.New("agent: Deps.Log is required")
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	nc, err := datadir.Load(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if cfg.Net != "" {
		nc.Net = cfg.Net
	}
	mode, err := resolveMode(nc.Net)
	if err != nil {
		return nil, err
	}
	var pprofListen string
	if cfg.PprofListen != "" {
		if pprofListen, err = metrics.PprofAddr(cfg.PprofListen); err != nil {
			return nil, err
		}
	}
	a := &Agent{
		dir:      cfg.DataDir,
		cfg:      nc,
		log:      deps.Log.With("node", nc.Name),
		tuning:   cfg.Tuning,
		mode:     mode,
		underlay: deps.Underlay,
		now:      deps.Now,

		kubeExec:   deps.NewKubeExecutor,
		afterApply: deps.AfterWorkloadApply,
		uiListen:   cfg.UIListen,
		kubeBinDir: cfg.KubeBinDir,
		dnsCfg:     cfg.DNS,
		accessPort: cfg.AccessPort,

		metricsListen: cfg.MetricsListen,
		pprofListen:   pprofListen,
		pathEvents:    make(chan nat.PathEvent, 64),
		candidateHint: make(chan struct{}, 1),
	}
	keys, err := datadir.LoadKeys(a.dir, nc)
	if err != nil {
		return nil, err
	}
	a.wgKey, a.nodeCert, a.nodeKey, a.caCert, a.keys = keys.WG, keys.NodeCert, keys.NodeKey, keys.CACert, keys.DataKeys
	if a.certFingerprint, err = pki.FingerprintPEM(a.nodeCert); err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	return a, nil
}

// resolveMode picks the overlay flavour: kernel needs CAP_NET_ADMIN and a
// TUN device; auto falls back to userspace without them.
func resolveMode(net string) (mesh.Mode, error) {
	switch net {
	case "kernel":
		return mesh.ModeKernel, nil
	case "userspace":
		return mesh.ModeUserspace, nil
	case "auto", "":
		if os.Geteuid() == 0 {
			if f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0); err == nil {
				f.Close()
				return mesh.ModeKernel, nil
			}
		}
		return mesh.ModeUserspace, nil
	}
	return "", fmt.Errorf("invalid net mode %q: want auto, kernel or userspace", net)
}

// raftTiming is production Raft timing, or the tests' short timers.
func (a *Agent) raftTiming() raftstore.Timing {
	return raftstore.TimingFor(a.tuning.RaftHeartbeat, a.tuning.RaftElection, a.heartbeatInterval())
}

// Name is the node's name.
func (a *Agent) Name() string { return a.cfg.Name }

// NodeConfig returns the node's identity from its data dir.
func (a *Agent) NodeConfig() datadir.NodeConfig { return *a.cfg }

// Net is the overlay this node dials and listens on.
func (a *Agent) Net() mesh.Net { return a.dev.Net() }

// Store is the node's Raft replica.
func (a *Agent) Store() *raftstore.Store { return a.store }

// Start brings the node up: WireGuard with the last known peers, gossip,
// Raft, the node API on the mesh, the join endpoint and the local API. It
// returns once all are listening; the node then converges in the background
// and runs until Close (ctx only carries values, its cancel bounds nothing
// after Start returns).
func (a *Agent) Start(ctx context.Context) (err error) {
	err = errors.New("agent: already started")
	a.startOnce.Do(func() {
		ctx, a.cancel = context.WithCancel(context.WithoutCancel(ctx))
		err = a.start(ctx)
		if err != nil {
			a.Close()
		}
	})
	return err
}

func (a *Agent) start(ctx context.Context) error {
	a.startedAt = a.now()
	a.candidateHint <- struct{}{}
	a.log.Info("starting", "cluster", a.cfg.ClusterID, "mesh_ip", a.cfg.MeshIP, "net", a.mode, "listen_port", a.cfg.ListenPort, "version", Version)
	bind, err := nat.New(nat.Config{
		PrivateKey:   a.wgKey,
		Underlay:     a.underlay,
		Relay:        nat.OffersRelay(a.cfg.Relay, nat.ParseEndpoints(a.cfg.Endpoints), netip.AddrPort{}),
		OnPathChange: a.onPathChange,
	}, a.log.With("component", "nat"))
	if err != nil {
		return fmt.Errorf("underlay: %w", err)
	}
	dev, err := mesh.New(mesh.Config{
		Mode:       a.mode,
		PrivateKey: a.wgKey,
		ListenPort: a.cfg.ListenPort,
		Address:    a.cfg.MeshIP,
		Prefix:     raftstore.MeshPrefix,
		Bind:       bind,
		// Kernel mode: pods and user devices reach the mesh IP through
		// their own interfaces; the LAN does not.
		Guard:  true,
		Inside: []netip.Prefix{raftstore.PodPrefix, raftstore.UserAccessPrefix},
	}, a.log)
	if err != nil {
		bind.Close()
		return fmt.Errorf("wireguard: %w", err)
	}
	a.bind, a.dev = bind, dev
	a.closers = append(a.closers, dev.Close)
	if a.peers, err = a.newPeers(); err != nil {
		return err
	}
	if saved, err := datadir.LoadPeers(a.dir); err != nil {
		a.log.Warn("ignoring saved peers", "err", err)
	} else if err := a.peers.Apply(a.members(saved)); err != nil {
		return err
	}

	mtlsServer, mtlsClient, err := pki.MutualConfig(a.nodeCert, a.nodeKey, a.caCert, a.allowPeerCert)
	if err != nil {
		return err
	}
	// Raft dials members by mesh address, which node certificates do not
	// carry: allowPeerCert is the identity check there.
	raftServer, raftClient, err := pki.AddressedConfig(a.nodeCert, a.nodeKey, a.caCert, a.allowPeerCert)
	if err != nil {
		return err
	}
	a.mtlsServer, a.mtlsClient = mtlsServer, mtlsClient
	a.forwarder = &http.Client{Transport: &http.Transport{
		DialContext:         a.dialNode,
		TLSClientConfig:     mtlsClient,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     30 * time.Second,
	}, Timeout: 15 * time.Second}
	a.closers = append(a.closers, func() error { a.forwarder.CloseIdleConnections(); return nil })
	if a.nodeClient, err = httpapi.NewNodeClient(a.forwarder, NodeAPIPort); err != nil {
		return err
	}
	a.closers = append(a.closers, a.nodeClient.Close)

	timing := a.raftTiming()
	store, err := raftstore.New(raftstore.Config{
		Dir:               filepath.Join(a.dir, datadir.DirRaft),
		NodeID:            a.cfg.NodeID,
		Addr:              netip.AddrPortFrom(a.cfg.MeshIP, RaftPort),
		Net:               a.dev.Net(),
		ServerTLS:         raftServer,
		ClientTLS:         raftClient,
		Sources:           raftstore.MemberSources(),
		Forward:           a.forward,
		Peers:             failoverPeers{a},
		Alive:             a.nodeUp,
		DeadVoterGrace:    a.tuning.DeadVoterGrace,
		ReconcileInterval: a.tuning.ReconcileInterval,
		HeartbeatTimeout:  timing.HeartbeatTimeout,
		ElectionTimeout:   timing.ElectionTimeout,
		CommitTimeout:     timing.CommitTimeout,
		QuietFresh:        timing.QuietFresh,

		SoloHeartbeatTimeout: timing.SoloHeartbeatTimeout,
	}, a.log)
	if err != nil {
		return err
	}
	a.store = store
	a.certStore.Store(store)
	a.closers = append(a.closers, store.Close)
	if st, _ := store.State(); st.ClusterID != "" && st.ClusterID != a.cfg.ClusterID {
		return fmt.Errorf("data dir holds state of cluster %s but belongs to cluster %s", st.ClusterID, a.cfg.ClusterID)
	}
	if a.health, err = a.newHealth(); err != nil {
		return err
	}
	// Before the local API: it serves the workload operations.
	if err := a.newWorkloads(a.log); err != nil {
		return err
	}
	// Before the kube host, which mounts cluster DNS in it.
	if err := a.newDNS(); err != nil {
		return err
	}
	if err := a.newKubeHost(); err != nil {
		return err
	}

	if err := a.startGossip(); err != nil {
		return err
	}
	if err := a.startNodeAPI(); err != nil {
		return err
	}
	if err := a.startJoinEndpoint(); err != nil {
		return err
	}
	if err := a.startLocalAPI(); err != nil {
		return err
	}
	if err := a.startPingEcho(); err != nil {
		return err
	}
	if err := a.startUI(ctx); err != nil {
		return err
	}
	if err := a.startMetrics(); err != nil {
		return err
	}
	if err := a.startPprof(); err != nil {
		return err
	}
	store.Start(ctx)
	a.startDNS(ctx)
	if err := a.startCloudLink(ctx); err != nil {
		return err
	}
	a.goLoop(ctx, a.peers.Run)
	a.goLoop(ctx, a.selfLoop)
	a.goLoop(ctx, a.gossipRejoinLoop)
	a.goLoop(ctx, a.pathEventLoop)
	a.goLoop(ctx, a.keyLoop)
	a.goLoop(ctx, a.kubeLoop)
	a.goLoop(ctx, a.accessLoop)
	a.health.Start(ctx)
	a.closers = append(a.closers, a.health.Close)
	lead, err := leader.New(leader.Config{
		Changes:  store.LeadershipChanges(),
		IsLeader: store.IsLeader,
		CatchUp:  store.CatchUp,
		Tasks: []leader.Task{
			{Name: "bootstrap", Run: a.bootstrap},
			{Name: "voters", Run: store.ManageVoters},
			{Name: "keys", Run: a.rotateKeys},
			{Name: "health-events", Run: a.health.RunEvents},
			{Name: "workloads", Run: a.reconciler.Run},
			{Name: "cloud-session", Run: a.cloud.RunSession},
			{Name: "kube", Run: a.manageKube},
		},
	}, a.log)
	if err != nil {
		return err
	}
	lead.Start(ctx)
	a.closers = append(a.closers, lead.Close)
	return nil
}

func (a *Agent) goLoop(ctx context.Context, f func(context.Context)) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f(ctx)
	}()
}

// handOverWait bounds the leadership handover of a planned stop: a
// handover takes a few round trips; a leader cut off from the others (a
// test's crash) must not hold its stop up for Raft's election timeout.
const handOverWait = 2 * time.Second

// Close stops every component in reverse start order and waits for them.
// A leader first hands leadership over, while everything still runs, so a
// planned stop (SIGTERM, a reboot) costs the cluster no election timeout.
// It is idempotent.
func (a *Agent) Close() error {
	var errs []error
	a.closeOnce.Do(func() {
		if a.store != nil {
			a.store.HandOverLeadership(handOverWait)
		}
		if a.cancel != nil {
			a.cancel()
		}
		for _, s := range a.servers {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := s.Shutdown(ctx); err != nil {
				s.Close()
			}
			cancel()
		}
		t0 := time.Now()
		a.wg.Wait()
		a.log.Debug("loops and servers stopped", "took", time.Since(t0))
		for i := len(a.closers) - 1; i >= 0; i-- {
			t0 := time.Now()
			if err := a.closers[i](); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
			a.log.Debug("closed component", "i", i, "took", time.Since(t0))
		}
		a.log.Info("stopped")
	})
	return errors.Join(errs...)
}

// allowPeerCert accepts a node certificate (on Raft and the node API, as
// client and as server) only if it is the very certificate recorded for the
// node it names: its fingerprint, not its serial, since whoever holds the CA
// key (every raft.db has it) can sign a certificate with any serial. A
// record from before fingerprints were recorded falls back to its serial
// until its node backfills the fingerprint (selfLoop). A removed node has no
// record and is refused everywhere. Before this replica has any state (a
// fresh joiner catching up), any certificate the cluster CA signed passes.
func (a *Agent) allowPeerCert(leaf *x509.Certificate) error {
	store := a.certStore.Load()
	if store == nil {
		return errors.New("this node's cluster state is not open yet")
	}
	st, _ := store.State()
	return memberCert(st, leaf)
}

// memberCert is allowPeerCert's rule on a given state.
func memberCert(st *raftstore.State, leaf *x509.Certificate) error {
	if st.ClusterID == "" {
		return nil
	}
	name := leaf.Subject.CommonName
	n := st.NodeByName(name)
	if n == nil {
		return fmt.Errorf("certificate names %q, no node of this cluster", name)
	}
	if n.CertFingerprint != "" {
		if pki.Fingerprint(leaf) != n.CertFingerprint {
			return fmt.Errorf("certificate %s is not the one recorded for node %s", pki.Fingerprint(leaf), name)
		}
		return nil
	}
	if pki.SerialOf(leaf) != n.CertSerial {
		return fmt.Errorf("certificate %s belongs to no node of this cluster", pki.SerialOf(leaf))
	}
	return nil
}

// dialNode dials a node by name ("name:port") on the mesh. Node API URLs
// carry node names so TLS checks the peer certificate against the name the
// cluster CA signed into it.
func (a *Agent) dialNode(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	for _, n := range a.knownNodes() {
		if n.Name == host {
			return a.dev.Net().DialContext(ctx, network, net.JoinHostPort(n.MeshIP.String(), port))
		}
	}
	return nil, fmt.Errorf("no node named %q in the cluster state", host)
}

// WaitReady blocks until this node is part of an initialised cluster state
// (the first node: its bootstrap applied; a joiner: its own record
// replicated), so writes through it can succeed.
func (a *Agent) WaitReady(ctx context.Context) error {
	for {
		changed := a.store.Changed()
		st, _ := a.store.State()
		if _, ok := st.Nodes[a.cfg.NodeID]; ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node not ready: %w", ctx.Err())
		case <-changed:
		case <-time.After(time.Second):
		}
	}
}

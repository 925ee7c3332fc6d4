// Package metrics is a node's Prometheus exposition on the opt-in metrics
// listener, and Go's profiler on a listener of its own (--pprof, loopback
// only). It owns the metric names, labels and help
// texts (documented in README.md). Every gauge is read from the node's
// components at scrape time, through the small interfaces below; only the
// Raft commit latency histogram is fed as writes happen. Each node has a
// registry of its own, never the process-wide default: tests run many
// nodes in one process.
package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/health"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/meshdns"
	"github.com/runos/runos-agent/procmem"
	"github.com/runos/runos-agent/raftstore"
)

// Store is the node's Raft replica as metrics reads it.
type Store interface {
	Status() raftstore.Status
	State() (*raftstore.State, uint64)
	// QuietStats counts idle appends answered locally and sent.
	QuietStats() (answered, sent uint64)
	// FailoverStats counts checks of an unreachable leader.
	FailoverStats() raftstore.FailoverStats
	// ObserveApply hands the store the commit latency observer.
	ObserveApply(func(time.Duration))
}

// Health is the node's view of the others: gossip and heartbeats.
type Health interface {
	MemberState(name string) (memberlist.NodeStateType, bool)
	Of(n *raftstore.Node) health.Status
}

// Device is the node's WireGuard device.
type Device interface {
	Stats() ([]mesh.PeerStats, error)
}

var (
	_ Store  = (*raftstore.Store)(nil)
	_ Health = (*health.Monitor)(nil)
	_ Device = (*mesh.Device)(nil)
)

// Config is what the metrics of one node are read from.
type Config struct {
	Node, Cluster, Version string // runos_agent_info's labels

	Store  Store  // required
	Health Health // required
	Device Device // required
	// Cloud reports the cloud link at scrape time; nil, or a nil result
	// (the link is not up yet), leaves the cloud metrics out.
	Cloud func() *api.CloudStatus
	// Kube reports managed Kubernetes on this node at scrape time; nil, or
	// a nil result (Kubernetes is not managed here), leaves the
	// runos_kube_* metrics out.
	Kube func() *KubeNode
	// DNS reports the node resolver's counters at scrape time; nil, or a
	// nil result (no resolver here), leaves the runos_dns_* metrics out.
	DNS func() *meshdns.Stats
}

// KubeNode is this node's share of managed Kubernetes.
type KubeNode struct {
	// Components are the processes (and agent-served parts) the node runs.
	Components []api.KubeComponent
	// Ready is the Ready condition of this node's Kubernetes Node, as last
	// read (false when it could not be read).
	Ready bool
}

// NewHandler serves GET /metrics from a registry of the node's own. Scrape
// errors go to log. The profiler is not here: a metrics listener is often
// opened to a scraper on the network, and profiles and traces can be
// requested without any credential (see PprofHandler).
func NewHandler(cfg Config, log *slog.Logger) (http.Handler, error) {
	if cfg.Store == nil || cfg.Health == nil || cfg.Device == nil {
		return nil, errors.New("metrics: Store, Health and Device are required")
	}
	if log == nil {
		return nil, errors.New("metrics: a logger is required")
	}
	reg := prometheus.NewRegistry()
	commit := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "runos_raft_commit_seconds",
		Help: "Time from submitting a write on the leader until it is committed and applied (observed on the leader only).",
		// 1 ms .. ~8 s
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	cfg.Store.ObserveApply(func(d time.Duration) { commit.Observe(d.Seconds()) })
	reg.MustRegister(
		commit,
		&collector{cfg: cfg},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		memoryCollector{statusPath: procmem.SelfStatus},
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPromLogger{log}}))
	return mux, nil
}

// PprofHandler serves Go's profiler under /debug/pprof/: how the footprint
// numbers in the README were investigated, and what an operator sends us.
// It has no authentication (a heap profile holds whatever the heap holds,
// keys included), so serve it only on an address PprofAddr accepted.
func PprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// PprofAddr turns a --pprof value into the address to listen on: a port
// ("6060", meaning 127.0.0.1:6060) or a loopback IP and port
// ("127.0.0.1:6060", "[::1]:6060", "localhost:6060"). Anything else,
// including a missing host (":6060" is every interface), is refused: only
// local users should reach the profiler, and with the UI's rules they
// already can read far less.
func PprofAddr(v string) (string, error) {
	if p, err := strconv.ParseUint(v, 10, 16); err == nil {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(p)).String(), nil
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return "", fmt.Errorf("--pprof %q: want a port or a loopback address and port, such as 127.0.0.1:6060", v)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("--pprof %q: bad port %q", v, port)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().IsLoopback() || ip.Zone() != "" {
		return "", fmt.Errorf("--pprof %q: the profiler has no authentication and listens on loopback only (127.0.0.1 or ::1), not %q", v, host)
	}
	return net.JoinHostPort(ip.Unmap().String(), port), nil
}

type slogPromLogger struct{ log *slog.Logger }

func (l slogPromLogger) Println(v ...any) { l.log.Warn("metrics", "err", fmt.Sprint(v...)) }

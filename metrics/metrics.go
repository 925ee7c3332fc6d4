// Package metrics is a node's Prometheus exposition and Go's profiler on
// the opt-in metrics listener. It owns the metric names, labels and help
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
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/health"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/raftstore"
)

// Store is the node's Raft replica as metrics reads it.
type Store interface {
	Status() raftstore.Status
	State() (*raftstore.State, uint64)
	// QuietStats counts idle appends answered locally and sent.
	QuietStats() (answered, sent uint64)
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
}

// NewHandler serves GET /metrics from a registry of the node's own, and
// Go's profiler under /debug/pprof/: how the footprint numbers in the
// README were investigated, and what an operator sends us. Scrape errors
// go to log.
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
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPromLogger{log}}))
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux, nil
}

type slogPromLogger struct{ log *slog.Logger }

func (l slogPromLogger) Println(v ...any) { l.log.Warn("metrics", "err", fmt.Sprint(v...)) }

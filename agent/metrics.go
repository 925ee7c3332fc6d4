package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/meshdns"
	"github.com/runos/runos-agent/metrics"
	"github.com/runos/runos-agent/raftstore"
)

// startMetrics serves Prometheus metrics at /metrics when MetricsListen is
// set. Off by default: it exposes cluster topology.
func (a *Agent) startMetrics() error {
	if a.metricsListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.metricsListen)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	h, err := a.metricsHandler()
	if err != nil {
		ln.Close()
		return err
	}
	a.metricsURL = "http://" + ln.Addr().String() + "/metrics"
	a.serve(ln, h, "metrics")
	a.log.Info("metrics listening", "url", a.metricsURL)
	return nil
}

// metricsHandler serves /metrics from the node's components.
func (a *Agent) metricsHandler() (http.Handler, error) {
	return metrics.NewHandler(metrics.Config{
		Node: a.cfg.Name, Cluster: a.cfg.ClusterID, Version: Version,
		Store: a.store, Health: a.health, Device: a.dev,
		// The cloud link starts after the metrics listener.
		Cloud: func() *api.CloudStatus {
			if a.cloud == nil {
				return nil
			}
			return a.CloudStatus()
		},
		Kube: a.kubeMetrics,
		DNS: func() *meshdns.Stats {
			st := a.dns.Stats()
			return &st
		},
	}, a.log)
}

// kubeReadyEvery bounds how often a scrape reads this node's Node from the
// API: Prometheus may scrape every second, kubelet updates it every 10 s.
const kubeReadyEvery = 10 * time.Second

// kubeReadyCache is this node's Node readiness for /metrics.
type kubeReadyCache struct {
	// mu is held while the Node is read, so concurrent scrapes wait for
	// one read instead of each sending their own.
	mu    sync.Mutex
	at    time.Time // guarded by mu; when ready was learnt (zero: never)
	ready bool      // guarded by mu
}

func (c *kubeReadyCache) set(ready bool, at time.Time) {
	if !c.mu.TryLock() {
		return // a scrape is reading the Node: its answer is as fresh
	}
	c.ready, c.at = ready, at
	c.mu.Unlock()
}

// kubeMetrics is managed Kubernetes on this node for /metrics (nil where
// it does not run).
func (a *Agent) kubeMetrics() *metrics.KubeNode {
	if a.kubeHost == nil {
		return nil
	}
	st, _ := a.store.State()
	self, ok := st.Nodes[a.cfg.NodeID]
	if st.Kube == nil || !ok {
		return nil
	}
	return &metrics.KubeNode{Components: a.KubeComponents().Components, Ready: a.kubeNodeReady(st.Kube, self.Name)}
}

// kubeNodeReady reports whether the Node name is Ready, from the cache
// while it is younger than kubeReadyEvery (KubeStatus refreshes it too);
// a failed read counts as not Ready until the next one.
func (a *Agent) kubeNodeReady(ks *raftstore.KubeState, name string) bool {
	c := &a.kubeReady
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && a.now().Sub(c.at) < kubeReadyEvery {
		return c.ready
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c.ready, c.at = false, a.now()
	hc, host, err := a.kubeHTTP(ks)
	if err != nil {
		return false
	}
	var n kubeNode
	if err := kubeDo(ctx, hc, http.MethodGet, host+"/api/v1/nodes/"+url.PathEscape(name), "", nil, &n); err != nil {
		a.log.Debug("reading this node's Kubernetes Node for metrics", "err", err)
		return false
	}
	c.ready = n.ready()
	return c.ready
}

// MetricsURL is where metrics are served, or "" when off.
func (a *Agent) MetricsURL() string { return a.metricsURL }

// startPprof serves Go's profiler when PprofListen is set, on its own
// loopback listener (New refused any other address): it has no
// authentication, so it is never on the metrics listener.
func (a *Agent) startPprof() error {
	if a.pprofListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.pprofListen)
	if err != nil {
		return fmt.Errorf("pprof: %w", err)
	}
	if ip, ok := ln.Addr().(*net.TCPAddr); !ok || !ip.IP.IsLoopback() {
		ln.Close()
		return fmt.Errorf("pprof: listening on %s, which is not loopback", ln.Addr())
	}
	a.pprofURL = "http://" + ln.Addr().String() + "/debug/pprof/"
	a.serve(ln, metrics.PprofHandler(), "pprof")
	a.log.Info("profiler listening (loopback only)", "url", a.pprofURL)
	return nil
}

// PprofURL is where the profiler is served, or "" when off.
func (a *Agent) PprofURL() string { return a.pprofURL }

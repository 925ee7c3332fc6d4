package agent

import (
	"fmt"
	"net"
	"net/http"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/metrics"
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
	}, a.log)
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

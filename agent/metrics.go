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

// metricsHandler serves /metrics (and the profiler) from the node's
// components.
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

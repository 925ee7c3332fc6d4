package agent

import (
	"fmt"
	"net"
	"net/http"
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
	a.metricsURL = "http://" + ln.Addr().String() + "/metrics"
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.metricsHandler())
	a.serve(ln, mux, "metrics")
	return nil
}

// MetricsURL is where metrics are served, or "" when off.
func (a *Agent) MetricsURL() string { return a.metricsURL }

func (a *Agent) metricsHandler() http.Handler {
	return http.NotFoundHandler()
}

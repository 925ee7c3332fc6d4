package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/runos/runos-agent/api"
)

// scrape is one parsed /metrics page.
type scrape map[string]*dto.MetricFamily

func scrapeMetrics(url string) (scrape, error) {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", url, err)
	}
	return mfs, nil
}

// value is the sample of family name whose labels include all of labels
// ("k", "v" pairs); ok is false if there is none.
func (s scrape) value(name string, labels ...string) (float64, bool) {
	mf, ok := s[name]
	if !ok {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == kv[i] && l.GetValue() == kv[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func (s scrape) want(name string, want float64, labels ...string) error {
	got, ok := s.value(name, labels...)
	if !ok {
		return fmt.Errorf("no %s%v", name, labels)
	}
	if got != want {
		return fmt.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
	return nil
}

func TestMetricsEndpointScrapedAndParsed(t *testing.T) {
	c := newCluster(t, 3)
	// Every node serves /metrics (restarted one by one, so the cluster
	// keeps quorum throughout).
	for i := range c.agents {
		c.restartWith(i, func(cfg *Config) { cfg.MetricsListen = "127.0.0.1:0" })
		c.waitFormed(3)
	}
	if _, err := scrapeMetrics(c.agents[0].MetricsURL()); err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, a := range c.agents {
		names[a.Name()] = true
		if a.MetricsURL() == "" {
			t.Fatalf("%s serves no metrics", a.Name())
		}
	}
	// One write through a follower, so the leader has timed a commit.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.follower().CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatal(err)
	}

	eventually(t, "every node's metrics show a formed, healthy cluster", func() error {
		leaders := 0.0
		var errs []error
		for _, a := range c.agents {
			s, err := scrapeMetrics(a.MetricsURL())
			if err != nil {
				return err
			}
			l, _ := s.value("runos_raft_state", "state", "leader")
			leaders += l
			errs = append(errs,
				s.want("runos_nodes", 3, "health", api.Healthy),
				s.want("runos_nodes", 0, "health", api.Offline),
				s.want("runos_gossip_members", 3, "state", "alive"),
				s.want("runos_wireguard_peers", 2, "path", "direct"),
				s.want("runos_raft_servers", 3, "suffrage", "voter"),
				s.want("runos_agent_info", 1, "node", a.Name(), "version", Version),
			)
			for peer := range names {
				if peer == a.Name() {
					continue
				}
				for _, m := range []string{"runos_wireguard_peer_receive_bytes_total", "runos_wireguard_peer_transmit_bytes_total"} {
					if v, ok := s.value(m, "peer", peer); !ok || v <= 0 {
						errs = append(errs, fmt.Errorf("%s: %s{peer=%q} = %v (present %v), want > 0", a.Name(), m, peer, v, ok))
					}
				}
				if v, ok := s.value("runos_node_heartbeat_age_seconds", "node", peer); !ok || v < 0 || v > 5 {
					errs = append(errs, fmt.Errorf("%s: heartbeat age of %s = %v (present %v)", a.Name(), peer, v, ok))
				}
			}
			term, _ := s.value("runos_raft_term")
			applied, _ := s.value("runos_raft_applied_index")
			commit, _ := s.value("runos_raft_commit_index")
			if term < 1 || applied < 1 || commit < applied {
				errs = append(errs, fmt.Errorf("%s: term %v applied %v commit %v", a.Name(), term, applied, commit))
			}
			for _, o := range []string{"answered_locally", "sent"} {
				if _, ok := s.value("runos_raft_idle_appends_total", "outcome", o); !ok {
					errs = append(errs, fmt.Errorf("%s: runos_raft_idle_appends_total{outcome=%q} missing", a.Name(), o))
				}
			}
			if v, _ := s.value("runos_events_total", "kind", "node_joined"); v < 2 {
				errs = append(errs, fmt.Errorf("%s: %v node_joined events, want >= 2", a.Name(), v))
			}
			if a.store.IsLeader() {
				if n, ok := s.value("runos_raft_commit_seconds"); !ok || n < 1 {
					errs = append(errs, fmt.Errorf("leader %s: %v commits timed", a.Name(), n))
				}
			}
			if _, ok := s.value("process_resident_memory_bytes"); !ok {
				errs = append(errs, errors.New("no process metrics"))
			}
			// Userspace mode: managed Kubernetes cannot run here.
			for _, k := range []string{"runos_kube_component_up", "runos_kube_component_restarts_total", "runos_kube_node_ready"} {
				if _, ok := s[k]; ok {
					errs = append(errs, fmt.Errorf("%s: %s without managed Kubernetes", a.Name(), k))
				}
			}
		}
		if leaders != 1 {
			errs = append(errs, fmt.Errorf("%v nodes report raft state leader", leaders))
		}
		return errors.Join(errs...)
	})

	// Crash a follower: the others count it offline and its peer dead.
	victim := c.follower()
	var events float64
	for i, a := range c.agents {
		if a == victim {
			c.crash(i)
		}
	}
	eventually(t, "survivors' metrics count the crashed node offline", func() error {
		var errs []error
		for _, a := range c.running() {
			s, err := scrapeMetrics(a.MetricsURL())
			if err != nil {
				return err
			}
			errs = append(errs,
				s.want("runos_nodes", 1, "health", api.Offline),
				s.want("runos_nodes", 2, "health", api.Healthy),
				s.want("runos_node_health", 1, "node", victim.Name(), "health", api.Offline),
				s.want("runos_gossip_members", 1, "state", "dead"),
			)
			events, _ = s.value("runos_events_total", "kind", "health_changed")
			if events < 2 {
				errs = append(errs, fmt.Errorf("%s: %v health_changed events, want >= 2 (degraded, offline)", a.Name(), events))
			}
		}
		return errors.Join(errs...)
	})
}

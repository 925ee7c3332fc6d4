package metrics

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudlink"
	"github.com/runos/runos-agent/health"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/raftstore"
)

type fakeStore struct {
	st      *raftstore.State
	observe func(time.Duration)
}

func (f *fakeStore) Status() raftstore.Status {
	return raftstore.Status{State: "Leader", Term: 3, AppliedIndex: 10, CommitIndex: 11, Voters: []string{"a", "b"}, NonVoters: []string{"c"}}
}
func (f *fakeStore) State() (*raftstore.State, uint64) { return f.st, 10 }
func (f *fakeStore) QuietStats() (uint64, uint64)      { return 7, 2 }
func (f *fakeStore) FailoverStats() raftstore.FailoverStats {
	return raftstore.FailoverStats{Rounds: 4, Alive: 2, Unconfirmed: 1, Elections: 1}
}
func (f *fakeStore) ObserveApply(o func(time.Duration)) { f.observe = o }

type fakeHealth map[string]health.Status

func (f fakeHealth) MemberState(name string) (memberlist.NodeStateType, bool) {
	if name == "c" {
		return 0, false
	}
	return memberlist.StateAlive, true
}
func (f fakeHealth) Of(n *raftstore.Node) health.Status { return f[n.Name] }

type fakeDevice []mesh.PeerStats

func (f fakeDevice) Stats() ([]mesh.PeerStats, error) { return f, nil }

func key(t *testing.T) mesh.Key {
	k, err := mesh.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Accept", "text/plain")
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", rec.Code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// value is the sample of name with all of labels ("k", "v" pairs).
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

func TestMetricsFromComponents(t *testing.T) {
	kb, kc := key(t), key(t)
	st := &raftstore.State{Nodes: map[string]*raftstore.Node{
		"a": {ID: "a", Name: "a", PublicKey: key(t).String()},
		"b": {ID: "b", Name: "b", PublicKey: kb.String()},
		"c": {ID: "c", Name: "c", PublicKey: kc.String()},
	}, Events: []raftstore.Event{{Seq: 1, Kind: raftstore.EventNodeJoined}, {Seq: 2, Kind: raftstore.EventNodeJoined}}}
	store := &fakeStore{st: st}
	var cloud *api.CloudStatus
	var kube *KubeNode
	h, err := NewHandler(Config{
		Node: "a", Cluster: "cl", Version: "v1",
		Store: store,
		Health: fakeHealth{
			"a": {Health: api.Healthy, Seen: true},
			"b": {Health: api.Healthy, Seen: true, Age: 2 * time.Second},
			"c": {Health: api.Offline},
		},
		Device: fakeDevice{
			{PublicKey: kb, LastHandshake: time.Now().Add(-time.Second), RxBytes: 100, TxBytes: 200},
			{PublicKey: kc},
		},
		Cloud: func() *api.CloudStatus { return cloud },
		Kube:  func() *KubeNode { return kube },
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	store.observe(20 * time.Millisecond)

	s := scrape(t, h)
	for _, w := range []struct {
		name   string
		want   float64
		labels []string
	}{
		{"runos_agent_info", 1, []string{"node", "a", "cluster", "cl", "version", "v1"}},
		{"runos_raft_state", 1, []string{"state", "leader"}},
		{"runos_raft_state", 0, []string{"state", "follower"}},
		{"runos_raft_term", 3, nil},
		{"runos_raft_commit_index", 11, nil},
		{"runos_raft_servers", 2, []string{"suffrage", "voter"}},
		{"runos_raft_servers", 1, []string{"suffrage", "nonvoter"}},
		{"runos_raft_idle_appends_total", 7, []string{"outcome", "answered_locally"}},
		{"runos_raft_leader_checks_total", 2, []string{"outcome", "alive"}},
		{"runos_raft_leader_checks_total", 1, []string{"outcome", "election"}},
		{"runos_raft_commit_seconds", 1, nil},
		{"runos_gossip_members", 2, []string{"state", "alive"}},
		{"runos_gossip_members", 1, []string{"state", "dead"}},
		{"runos_nodes", 2, []string{"health", api.Healthy}},
		{"runos_nodes", 1, []string{"health", api.Offline}},
		{"runos_node_health", 1, []string{"node", "c", "health", api.Offline}},
		{"runos_node_heartbeat_age_seconds", 2, []string{"node", "b"}},
		{"runos_wireguard_peers", 1, []string{"path", "direct"}},
		{"runos_wireguard_peers", 1, []string{"path", "none"}},
		{"runos_wireguard_peer_receive_bytes_total", 100, []string{"peer", "b"}},
		{"runos_wireguard_peer_transmit_bytes_total", 200, []string{"peer", "b"}},
		{"runos_events_total", 2, []string{"kind", raftstore.EventNodeJoined}},
		{"runos_events_total", 0, []string{"kind", raftstore.EventNodeRemoved}},
	} {
		if got, ok := value(s, w.name, w.labels...); !ok || got != w.want {
			t.Errorf("%s%v = %v (present %v), want %v", w.name, w.labels, got, ok, w.want)
		}
	}
	if _, ok := value(s, "runos_node_heartbeat_age_seconds", "node", "c"); ok {
		t.Error("heartbeat age of a node never heard from")
	}
	if _, ok := s["runos_cloud_link_state"]; ok {
		t.Error("cloud metrics without a cloud link")
	}
	if _, ok := s["process_resident_memory_bytes"]; !ok {
		t.Error("no process metrics")
	}
	for _, name := range []string{"runos_kube_component_up", "runos_kube_component_restarts_total", "runos_kube_node_ready"} {
		if _, ok := s[name]; ok {
			t.Errorf("%s where Kubernetes is not managed", name)
		}
	}
	if runtime.GOOS == "linux" {
		// This test process has a heap and runs a binary.
		for _, kind := range []string{"anon", "file"} {
			if v, ok := value(s, "runos_process_memory_bytes", "kind", kind); !ok || v <= 0 {
				t.Errorf("runos_process_memory_bytes{kind=%q} = %v (present %v), want > 0", kind, v, ok)
			}
		}
		if _, ok := value(s, "runos_process_memory_bytes", "kind", "shmem"); !ok {
			t.Error("runos_process_memory_bytes{kind=\"shmem\"} missing")
		}
	}

	// Events count once each; the cloud link shows up once it exists.
	st.Events = append(st.Events, raftstore.Event{Seq: 3, Kind: raftstore.EventNodeJoined})
	cloud = &api.CloudStatus{State: cloudlink.StateBackoff, Pending: 4, BytesSent: 9}
	// Managed Kubernetes starts on the node: one component crash-looping.
	kube = &KubeNode{Ready: true, Components: []api.KubeComponent{
		{Name: "containerd", Running: true, PID: 10},
		{Name: "kubelet", Running: false, Restarts: 5, LastError: "exit status 1: bad flag"},
		{Name: "cluster-dns", Running: true},
	}}
	s = scrape(t, h)
	for _, w := range []struct {
		name   string
		want   float64
		labels []string
	}{
		{"runos_events_total", 3, []string{"kind", raftstore.EventNodeJoined}},
		{"runos_cloud_link_state", 1, []string{"state", cloudlink.StateBackoff}},
		{"runos_cloud_link_state", 0, []string{"state", cloudlink.StateConnected}},
		{"runos_cloud_outbox_pending", 4, nil},
		{"runos_cloud_link_bytes_total", 9, []string{"direction", "sent"}},
		{"runos_kube_component_up", 1, []string{"component", "containerd"}},
		{"runos_kube_component_up", 0, []string{"component", "kubelet"}},
		{"runos_kube_component_up", 1, []string{"component", "cluster-dns"}},
		{"runos_kube_component_restarts_total", 5, []string{"component", "kubelet"}},
		{"runos_kube_component_restarts_total", 0, []string{"component", "containerd"}},
		{"runos_kube_node_ready", 1, nil},
	} {
		if got, ok := value(s, w.name, w.labels...); !ok || got != w.want {
			t.Errorf("%s%v = %v (present %v), want %v", w.name, w.labels, got, ok, w.want)
		}
	}
	for name, typ := range map[string]dto.MetricType{
		"runos_kube_component_up":             dto.MetricType_GAUGE,
		"runos_kube_component_restarts_total": dto.MetricType_COUNTER,
		"runos_kube_node_ready":               dto.MetricType_GAUGE,
	} {
		if mf := s[name]; mf.GetType() != typ {
			t.Errorf("%s is a %v, want a %v", name, mf.GetType(), typ)
		}
	}
	if n := len(s["runos_kube_component_up"].GetMetric()); n != 3 {
		t.Errorf("%d runos_kube_component_up series for 3 components", n)
	}
	for _, m := range s["runos_kube_component_up"].GetMetric() {
		if len(m.GetLabel()) != 1 || m.GetLabel()[0].GetName() != "component" {
			t.Errorf("runos_kube_component_up labels %v, want only component", m.GetLabel())
		}
	}

	// The Node is no longer Ready; Kubernetes turned off drops the metrics.
	kube.Ready = false
	if got, ok := value(scrape(t, h), "runos_kube_node_ready"); !ok || got != 0 {
		t.Errorf("runos_kube_node_ready = %v (present %v) for a NotReady Node", got, ok)
	}
	kube = nil
	if _, ok := scrape(t, h)["runos_kube_component_up"]; ok {
		t.Error("runos_kube_component_up after managed Kubernetes stopped")
	}
}

func TestNewHandlerRequiresComponents(t *testing.T) {
	if _, err := NewHandler(Config{}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("accepted a config without components")
	}
}

package raftstore

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func wcmd(id, op string, c *WorkloadCmd) *Command {
	return &Command{ID: id, Time: t0.Add(time.Minute), Op: op, Workload: c}
}

func svc(osid string) *ServiceRecord {
	return &ServiceRecord{OSID: osid, Service: "postgres", Tier: "lightweight", Set: map[string]string{"storage": "1Gi"}, Credentials: "sealed"}
}

func changed(t *testing.T, r *Result) bool {
	t.Helper()
	if err := r.Error(); err != nil {
		t.Fatal(err)
	}
	var wr WorkloadResult
	if err := json.Unmarshal(r.Data, &wr); err != nil {
		t.Fatal(err)
	}
	return wr.Changed
}

func TestWorkloadCommands(t *testing.T) {
	s := bootstrapped(t)
	idx := uint64(10)
	apply := func(c *Command) *Result { idx++; return s.apply(idx, c) }

	if !changed(t, apply(wcmd("k1", OpWorkloadKubeSet, &WorkloadCmd{Kube: &KubeTarget{Kubeconfig: "sealed", Server: "https://127.0.0.1:6443"}}))) {
		t.Fatal("kube set did not change")
	}
	apply(wcmd("k2", OpWorkloadKubeSet, &WorkloadCmd{Kube: &KubeTarget{Kubeconfig: "sealed2"}}))
	if g := s.Workloads.Kube.Generation; g != 2 {
		t.Errorf("kube generation = %d, want 2", g)
	}
	if !changed(t, apply(wcmd("c1", OpWorkloadServiceCreate, &WorkloadCmd{Service: svc("postgres-aaaaa")}))) {
		t.Fatal("create did not change")
	}
	r := s.Workloads.Services["postgres-aaaaa"]
	if r.Desired != DesiredPresent || r.Generation != 1 || r.Status.Phase != PhasePending || !r.CreatedAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("created record = %+v", r)
	}

	// A status for the current generation is stored once; repeating it
	// (a new leader finishing the job) changes nothing and logs no event.
	st := &Observed{Phase: PhaseApplying, Ready: 0, Total: 1, Generation: 1, Reason: "0/1 ready"}
	events := len(s.Events)
	if !changed(t, apply(wcmd("s1", OpWorkloadStatus, &WorkloadCmd{OSID: "postgres-aaaaa", Status: st}))) {
		t.Fatal("first status did not change")
	}
	if changed(t, apply(wcmd("s2", OpWorkloadStatus, &WorkloadCmd{OSID: "postgres-aaaaa", Status: st}))) {
		t.Error("identical status changed the state")
	}
	if got := len(s.Events) - events; got != 1 {
		t.Errorf("%d status events, want 1", got)
	}
	if e := s.Events[len(s.Events)-1]; e.Kind != EventWorkloadStatus || e.Detail != "postgres-aaaaa applying" {
		t.Errorf("event = %+v", e)
	}
	// A stale generation is ignored.
	if changed(t, apply(wcmd("s3", OpWorkloadStatus, &WorkloadCmd{OSID: "postgres-aaaaa", Status: &Observed{Phase: PhaseReady, Generation: 0}}))) {
		t.Error("stale status changed the state")
	}

	// Apps: --use must name a present service; names are unique.
	app := &AppRecord{OSID: "web-bbbbb", Name: "web", Image: "nginx", Uses: []string{"postgres-aaaaa"}, Env: map[string]string{"A": "1"}}
	if !changed(t, apply(wcmd("a1", OpWorkloadAppCreate, &WorkloadCmd{App: app}))) {
		t.Fatal("app create did not change")
	}
	app.Env["A"] = "mutated"
	if s.Workloads.Apps["web-bbbbb"].Env["A"] != "1" {
		t.Error("state shares the command's map")
	}
	// The service is in use: delete refused.
	if err := apply(wcmd("d0", OpWorkloadServiceDelete, &WorkloadCmd{OSID: "postgres-aaaaa"})).Error(); !errors.Is(err, ErrWorkloadInUse) {
		t.Errorf("delete used service: %v", err)
	}
	if !changed(t, apply(wcmd("ad", OpWorkloadAppDelete, &WorkloadCmd{OSID: "web-bbbbb"}))) {
		t.Fatal("app delete did not change")
	}
	if changed(t, apply(wcmd("ad2", OpWorkloadAppDelete, &WorkloadCmd{OSID: "web-bbbbb"}))) {
		t.Error("second app delete changed")
	}
	if !changed(t, apply(wcmd("ap", OpWorkloadAppPurge, &WorkloadCmd{OSID: "web-bbbbb"}))) {
		t.Error("app purge did not change")
	}
	if _, ok := s.Workloads.Apps["web-bbbbb"]; ok {
		t.Error("app not purged")
	}
	// A new leader may purge again: a no-op, not an error.
	if changed(t, apply(wcmd("ap2", OpWorkloadAppPurge, &WorkloadCmd{OSID: "web-bbbbb"}))) {
		t.Error("second app purge changed")
	}

	if !changed(t, apply(wcmd("d1", OpWorkloadServiceDelete, &WorkloadCmd{OSID: "postgres-aaaaa"}))) {
		t.Fatal("delete did not change")
	}
	r = s.Workloads.Services["postgres-aaaaa"]
	if r.Desired != DesiredDeleted || r.Generation != 2 || r.Status.Phase != PhaseDeleting {
		t.Errorf("deleted record = %+v", r)
	}
	// The objects stay until the namespace goes: the counts and the
	// generation they were observed for are kept.
	if r.Status.Ready != 0 || r.Status.Total != 1 || r.Status.Generation != 1 {
		t.Errorf("deleting status = %+v, want the last counts kept", r.Status)
	}
	// A status made before the delete was seen is stale now.
	if changed(t, apply(wcmd("s4", OpWorkloadStatus, &WorkloadCmd{OSID: "postgres-aaaaa", Status: &Observed{Phase: PhaseReady, Generation: 1}}))) {
		t.Error("status for the old generation changed a deleting record")
	}
	if !changed(t, apply(wcmd("p1", OpWorkloadServicePurge, &WorkloadCmd{OSID: "postgres-aaaaa"}))) {
		t.Error("service purge did not change")
	}
	if len(s.Workloads.Services) != 0 {
		t.Error("service not purged")
	}
	// Status after purge: no-op, not an error (a late write).
	if changed(t, apply(wcmd("s5", OpWorkloadStatus, &WorkloadCmd{OSID: "postgres-aaaaa", Status: st}))) {
		t.Error("status of a purged record changed")
	}
}

func TestWorkloadRejections(t *testing.T) {
	s := bootstrapped(t)
	s.apply(10, wcmd("c1", OpWorkloadServiceCreate, &WorkloadCmd{Service: svc("postgres-aaaaa")}))
	s.apply(11, wcmd("c2", OpWorkloadAppCreate, &WorkloadCmd{App: &AppRecord{OSID: "web-ddddd", Name: "web", Image: "x"}}))
	cases := []struct {
		name string
		cmd  *Command
		want error
	}{
		{"no payload", &Command{ID: "x1", Time: t0, Op: OpWorkloadServiceCreate}, ErrMalformedCmd},
		{"duplicate osid", wcmd("x2", OpWorkloadServiceCreate, &WorkloadCmd{Service: svc("postgres-aaaaa")}), ErrWorkloadExists},
		{"no credentials", wcmd("x3", OpWorkloadServiceCreate, &WorkloadCmd{Service: &ServiceRecord{OSID: "a-bbbbb", Service: "redis", Tier: "ha"}}), ErrMalformedCmd},
		{"delete unknown", wcmd("x4", OpWorkloadServiceDelete, &WorkloadCmd{OSID: "nope-aaaaa"}), ErrNoSuchWorkload},
		{"app uses missing", wcmd("x5", OpWorkloadAppCreate, &WorkloadCmd{App: &AppRecord{OSID: "w-ccccc", Name: "w", Image: "x", Uses: []string{"redis-zzzzz"}}}), ErrNoSuchWorkload},
		{"app osid taken by service", wcmd("x6", OpWorkloadAppCreate, &WorkloadCmd{App: &AppRecord{OSID: "postgres-aaaaa", Name: "w", Image: "x"}}), ErrWorkloadExists},
		{"app name taken", wcmd("x11", OpWorkloadAppCreate, &WorkloadCmd{App: &AppRecord{OSID: "web-eeeee", Name: "web", Image: "x"}}), ErrAppNameTaken},
		{"purge present", wcmd("x7", OpWorkloadServicePurge, &WorkloadCmd{OSID: "postgres-aaaaa"}), ErrMalformedCmd},
		{"app delete unknown", wcmd("x10", OpWorkloadAppDelete, &WorkloadCmd{OSID: "nope-aaaaa"}), ErrNoSuchWorkload},
		{"kube without config", wcmd("x8", OpWorkloadKubeSet, &WorkloadCmd{Kube: &KubeTarget{}}), ErrMalformedCmd},
		{"unknown op", wcmd("x9", "workload_magic", &WorkloadCmd{}), ErrUnknownOp},
	}
	for _, tc := range cases {
		before, _ := json.Marshal(s.Workloads)
		err := s.apply(20, tc.cmd).Error()
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
		after, _ := json.Marshal(s.Workloads)
		if string(before) != string(after) {
			t.Errorf("%s: a refused command changed the state", tc.name)
		}
	}
}

func TestWorkloadsCloneIsDeep(t *testing.T) {
	s := bootstrapped(t)
	s.apply(10, wcmd("k", OpWorkloadKubeSet, &WorkloadCmd{Kube: &KubeTarget{Kubeconfig: "sealed"}}))
	s.apply(11, wcmd("c1", OpWorkloadServiceCreate, &WorkloadCmd{Service: svc("postgres-aaaaa")}))
	s.apply(12, wcmd("a1", OpWorkloadAppCreate, &WorkloadCmd{App: &AppRecord{OSID: "w-bbbbb", Name: "w", Image: "x", Uses: []string{"postgres-aaaaa"}, Env: map[string]string{"A": "1"}}}))
	s.apply(13, wcmd("s1", OpWorkloadStatus, &WorkloadCmd{OSID: "postgres-aaaaa", Status: &Observed{Phase: PhaseApplying, Generation: 1, Conditions: []string{"x"}}}))
	v := s.View()
	v.Workloads.Kube.Kubeconfig = "changed"
	v.Workloads.Services["postgres-aaaaa"].Set["storage"] = "9Gi"
	v.Workloads.Services["postgres-aaaaa"].Status.Conditions[0] = "y"
	v.Workloads.Apps["w-bbbbb"].Env["A"] = "2"
	v.Workloads.Apps["w-bbbbb"].Uses[0] = "z"
	delete(v.Workloads.Services, "postgres-aaaaa")
	w := s.Workloads
	if w.Kube.Kubeconfig != "sealed" || w.Services["postgres-aaaaa"].Set["storage"] != "1Gi" ||
		w.Services["postgres-aaaaa"].Status.Conditions[0] != "x" || w.Apps["w-bbbbb"].Env["A"] != "1" || w.Apps["w-bbbbb"].Uses[0] != "postgres-aaaaa" {
		t.Errorf("a view's changes reached the state: %+v", w)
	}
	// Snapshots round-trip the workloads.
	b, _ := json.Marshal(s.Clone())
	var back State
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Workloads.Services["postgres-aaaaa"].Credentials != "sealed" || back.Workloads.Apps["w-bbbbb"].Uses[0] != "postgres-aaaaa" {
		t.Errorf("snapshot lost workloads: %+v", back.Workloads)
	}
}

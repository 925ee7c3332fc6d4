package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/runos/runos-agent/templates/kapi"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/kube/kubetest"
	"github.com/runos/runos-agent/raftstore"
)

// kubeEnv is an in-process cluster wired to a real API server.
type kubeEnv struct {
	c    *cluster
	srv  *kubetest.Server
	exec *kube.Executor
}

func newKubeEnv(t testing.TB, nodes int) *kubeEnv {
	t.Helper()
	e := newKubeEnvUnset(t, nodes)
	if _, err := e.client(0).SetKube(context.Background(), e.srv.Kubeconfig); err != nil {
		t.Fatal(err)
	}
	return e
}

// newKubeEnvUnset is newKubeEnv before `kube set`.
func newKubeEnvUnset(t testing.TB, nodes int) *kubeEnv {
	t.Helper()
	kubetest.Require(t)
	srv := kubetest.Start(t)
	exec, err := kube.New(kube.Config{Kubeconfig: srv.Kubeconfig}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Close() })
	c := newCluster(t, nodes)
	return &kubeEnv{c: c, srv: srv, exec: exec}
}

func (e *kubeEnv) client(i int) *api.Client { return api.NewClient(e.c.dirs[i]) }

func (e *kubeEnv) running() *api.Client {
	for i, a := range e.c.agents {
		if a != nil {
			return e.client(i)
		}
	}
	e.c.tb.Fatal("no agent running")
	return nil
}

// waitService waits until the instance's record (as any running node sees
// it) satisfies cond.
func (e *kubeEnv) waitService(what, osid string, cond func(*api.Service) error) *api.Service {
	e.c.tb.Helper()
	var got *api.Service
	eventually(e.c.tb, what, func() error {
		s, err := e.running().ServiceInfo(context.Background(), osid, false)
		if err != nil {
			return err
		}
		got = s
		return cond(s)
	})
	return got
}

func applied(s *api.Service) error {
	if s.Status != api.StatusApplying && s.Status != api.StatusReady {
		return fmt.Errorf("status %s: %s", s.Status, s.Reason)
	}
	return nil
}

func (e *kubeEnv) get(apiVersion, kind, ns, name string) *unstructured.Unstructured {
	e.c.tb.Helper()
	meta := map[string]any{"name": name}
	if ns != "" {
		meta["namespace"] = ns
	}
	got, err := e.exec.Get(context.Background(), kapi.Object{"apiVersion": apiVersion, "kind": kind, "metadata": meta})
	if err != nil {
		e.c.tb.Fatal(err)
	}
	if got == nil {
		return nil
	}
	return &unstructured.Unstructured{Object: got}
}

// The leader dies after applying and before writing the status: the next
// leader applies again (server-side apply: nothing is re-created, one
// field manager) and the status trail records the deploy once.
func TestServiceLeaderKilledMidDeploy(t *testing.T) {
	e := newKubeEnv(t, 3)
	ctx := context.Background()
	hit := make(chan string, 1)
	var armed atomic.Bool
	armed.Store(true)
	arm := func(ctx context.Context, osid string) {
		if armed.CompareAndSwap(true, false) {
			hit <- osid
			<-ctx.Done() // the agent is being closed
		}
	}
	e.c.afterApply.Store(&arm)
	leader := slices.Index(e.c.agents, e.c.leader())
	s, err := e.client(leader).DeployService(ctx, api.ServiceRequest{Service: "postgres"})
	if err != nil {
		t.Fatal(err)
	}
	var osid string
	select {
	case osid = <-hit:
	case <-time.After(60 * time.Second):
		t.Fatal("the leader never applied")
	}
	if osid != s.OSID {
		t.Fatalf("applied %s, deployed %s", osid, s.OSID)
	}
	ns := e.get("v1", "Namespace", "", osid)
	sts := e.get("apps/v1", "StatefulSet", osid, "postgres")
	if ns == nil || sts == nil {
		t.Fatal("objects not applied before the kill")
	}
	e.c.stop(leader)
	got := e.waitService("applied by the next leader", osid, applied)
	if got.Status == api.StatusPending {
		t.Fatal("unreachable")
	}
	ns2 := e.get("v1", "Namespace", "", osid)
	sts2 := e.get("apps/v1", "StatefulSet", osid, "postgres")
	if ns2.GetUID() != ns.GetUID() || sts2.GetUID() != sts.GetUID() {
		t.Error("objects were re-created")
	}
	if sts2.GetGeneration() != sts.GetGeneration() {
		t.Errorf("StatefulSet generation %d -> %d: the second apply changed it", sts.GetGeneration(), sts2.GetGeneration())
	}
	if mf := sts2.GetManagedFields(); len(mf) != 1 || mf[0].Manager != kube.FieldManager {
		t.Errorf("managed fields: %+v", mf)
	}
	// One status trail: created, then a single transition to applying.
	time.Sleep(2 * time.Second) // a duplicate write would land by now
	var a *Agent
	for _, x := range e.c.running() {
		a = x
	}
	st, _ := a.store.State()
	var trail []string
	for _, ev := range st.Events {
		if ev.Kind == raftstore.EventWorkloadStatus && strings.HasPrefix(ev.Detail, osid+" ") {
			trail = append(trail, strings.TrimPrefix(ev.Detail, osid+" "))
		}
	}
	if !slices.Equal(trail, []string{"pending", "applying"}) {
		t.Errorf("status trail = %v, want [pending applying]", trail)
	}

	// A deploy through a follower is forwarded to the new leader.
	f := slices.Index(e.c.agents, e.c.follower())
	s2, err := e.client(f).DeployService(ctx, api.ServiceRequest{Service: "redis"})
	if err != nil {
		t.Fatal(err)
	}
	e.waitService("deployed through a follower", s2.OSID, applied)
}

// BenchmarkServiceDeployLatency: command accepted (the local API answered)
// → all objects applied (status written back), over 50 deploys of a
// lightweight Redis, on a one-node cluster against a real API server.
func BenchmarkServiceDeployLatency(b *testing.B) {
	if kubetest.Available() != nil {
		b.Skip("no real Kubernetes API server:", kubetest.Available())
	}
	e := newKubeEnv(b, 1)
	ctx := context.Background()
	cl := e.client(0)
	a := e.c.agents[0]
	const n = 50
	var lat, acc []time.Duration
	for range b.N {
		lat, acc = lat[:0], acc[:0]
		for range n {
			t00 := time.Now()
			s, err := cl.DeployService(ctx, api.ServiceRequest{Service: "redis"})
			if err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			acc = append(acc, t0.Sub(t00))
			for {
				changed := a.store.Changed()
				st, _ := a.store.State()
				if r := st.Workloads.Services[s.OSID]; r != nil && r.Status.Generation == r.Generation &&
					(r.Status.Phase == raftstore.PhaseApplying || r.Status.Phase == raftstore.PhaseReady) {
					break
				}
				select {
				case <-changed:
				case <-time.After(60 * time.Second):
					b.Fatalf("%s not applied", s.OSID)
				}
			}
			lat = append(lat, time.Since(t0))
		}
	}
	pct := func(d []time.Duration, p float64) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(lat, 0.50), "p50-ms")
	b.ReportMetric(pct(lat, 0.99), "p99-ms")
	b.ReportMetric(pct(acc, 0.50), "accept-p50-ms")
	b.ReportMetric(0, "ns/op")
	b.Logf("over %d deploys: accepted -> applied p50 %.1f ms, p99 %.1f ms; the deploy request itself p50 %.1f ms, p99 %.1f ms",
		n, pct(lat, 0.5), pct(lat, 0.99), pct(acc, 0.5), pct(acc, 0.99))
}

// The local API maps package workload's errors to status codes: a refused
// request is 400, an unknown OSID 404, a clash with what exists 409.
// No Kubernetes is needed: deploys wait for `kube set`.
func TestWorkloadRoutesStatusCodes(t *testing.T) {
	c := newCluster(t, 1)
	h := c.agents[0].LocalAPIHandler()
	do := func(method, path string, body any) *httptest.ResponseRecorder {
		t.Helper()
		var r io.Reader = http.NoBody
		switch b := body.(type) {
		case nil:
		case string:
			r = strings.NewReader(b)
		default:
			j, _ := json.Marshal(b)
			r = bytes.NewReader(j)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, r))
		return rec
	}
	res := do("POST", "/v1/services", api.ServiceRequest{Service: "postgres"})
	var pg api.Service
	if res.Code != http.StatusOK || json.Unmarshal(res.Body.Bytes(), &pg) != nil || pg.Status != api.StatusPending {
		t.Fatalf("deploy: %d %s", res.Code, res.Body)
	}
	res = do("POST", "/v1/apps", api.AppRequest{Name: "web", Image: "nginx:1.27", Use: []string{pg.OSID}})
	var web api.App
	if res.Code != http.StatusOK || json.Unmarshal(res.Body.Bytes(), &web) != nil {
		t.Fatalf("deploy app: %d %s", res.Code, res.Body)
	}
	for _, tc := range []struct {
		method, path string
		body         any
		code         int
		want         string
	}{
		{"GET", "/v1/kube", nil, http.StatusOK, `"configured":false`},
		{"GET", "/v1/catalog", nil, http.StatusOK, `"postgres"`},
		{"GET", "/v1/services?type=postgres", nil, http.StatusOK, pg.OSID},
		{"GET", "/v1/services/" + pg.OSID, nil, http.StatusOK, `"connection"`},
		{"GET", "/v1/apps/" + web.OSID, nil, http.StatusOK, "DATABASE_URL"},
		{"POST", "/v1/services", "{", http.StatusBadRequest, "malformed request"},
		{"POST", "/v1/services", api.ServiceRequest{Service: "nosuch"}, http.StatusBadRequest, "unknown service"},
		{"POST", "/v1/services", api.ServiceRequest{Service: "postgres", Tier: "gold"}, http.StatusBadRequest, "tier"},
		{"PUT", "/v1/kube", api.KubeSetRequest{Kubeconfig: "garbage: ["}, http.StatusBadRequest, "kubeconfig"},
		{"POST", "/v1/apps", api.AppRequest{Name: "x"}, http.StatusBadRequest, "needs a name and an image"},
		{"POST", "/v1/apps", api.AppRequest{Name: "x", Image: "nginx", Use: []string{"redis-zzzzz"}}, http.StatusBadRequest, "no such service instance"},
		{"GET", "/v1/services/postgres-zzzzz", nil, http.StatusNotFound, "no such"},
		{"DELETE", "/v1/services/postgres-zzzzz", nil, http.StatusNotFound, "no such"},
		{"GET", "/v1/apps/web-zzzzz", nil, http.StatusNotFound, "no such"},
		{"DELETE", "/v1/apps/web-zzzzz", nil, http.StatusNotFound, "no such"},
		{"POST", "/v1/apps", api.AppRequest{Name: "web", Image: "nginx"}, http.StatusConflict, web.OSID},
		{"DELETE", "/v1/services/" + pg.OSID, nil, http.StatusConflict, "uses it"},
		{"DELETE", "/v1/apps/" + web.OSID, nil, http.StatusNoContent, ""},
		{"DELETE", "/v1/services/" + pg.OSID, nil, http.StatusNoContent, ""},
	} {
		res := do(tc.method, tc.path, tc.body)
		if res.Code != tc.code || !strings.Contains(res.Body.String(), tc.want) {
			t.Errorf("%s %s: %d %s, want %d with %q", tc.method, tc.path, res.Code, res.Body, tc.code, tc.want)
		}
	}
}

package workload_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/runos/runos-agent/templates/kapi"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/kube/kubetest"
	"github.com/runos/runos-agent/templates"
	"github.com/runos/runos-agent/workload"
)

// Against a real kube-apiserver (kube/kubetest; skipped without its
// binaries unless RUNOS_KUBE_REQUIRED=1): the operations and the
// reconciler over a one-node state in memory, the reconciler running as
// it does while its node leads.

// kubeEnv is a workload host wired to a real API server.
type kubeEnv struct {
	*host
	srv  *kubetest.Server
	exec *kube.Executor
}

func newKubeEnv(t testing.TB) *kubeEnv {
	t.Helper()
	e := newKubeEnvUnset(t)
	if _, err := e.ops.SetKube(context.Background(), e.srv.Kubeconfig); err != nil {
		t.Fatal(err)
	}
	return e
}

// newKubeEnvUnset is newKubeEnv before `kube set`.
func newKubeEnvUnset(t testing.TB) *kubeEnv {
	t.Helper()
	kubetest.Require(t)
	srv := kubetest.Start(t)
	exec, err := kube.New(kube.Config{Kubeconfig: srv.Kubeconfig}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Close() })
	return &kubeEnv{host: newHost(t), srv: srv, exec: exec}
}

// waitService waits until the instance's record satisfies cond.
func (e *kubeEnv) waitService(what, osid string, cond func(*api.Service) error) *api.Service {
	e.t.Helper()
	var got *api.Service
	eventually(e.t, what, func() error {
		s, err := e.ops.ServiceInfo(osid, false)
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
	e.t.Helper()
	meta := map[string]any{"name": name}
	if ns != "" {
		meta["namespace"] = ns
	}
	got, err := e.exec.Get(context.Background(), kapi.Object{"apiVersion": apiVersion, "kind": kind, "metadata": meta})
	if err != nil {
		e.t.Fatal(err)
	}
	if got == nil {
		return nil
	}
	return &unstructured.Unstructured{Object: got}
}

func (e *kubeEnv) namespaceGone(ns string) error {
	if e.get("v1", "Namespace", "", ns) != nil {
		return fmt.Errorf("namespace %s still exists", ns)
	}
	return nil
}

// markReady sets every StatefulSet and Deployment in ns ready through the
// status subresource, as kubelets and controllers would.
func (e *kubeEnv) markReady(ns string) {
	e.t.Helper()
	rc, err := clientcmd.RESTConfigFromKubeConfig(e.srv.Kubeconfig)
	if err != nil {
		e.t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx := context.Background()
	for _, res := range []string{"statefulsets", "deployments"} {
		ri := dyn.Resource(schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: res}).Namespace(ns)
		list, err := ri.List(ctx, metav1.ListOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		for _, o := range list.Items {
			n, found, _ := unstructured.NestedInt64(o.Object, "spec", "replicas")
			if !found {
				n = 1
			}
			for _, f := range []string{"replicas", "readyReplicas", "availableReplicas", "updatedReplicas", "currentReplicas"} {
				unstructured.SetNestedField(o.Object, n, "status", f)
			}
			unstructured.SetNestedField(o.Object, o.GetGeneration(), "status", "observedGeneration")
			if _, err := ri.UpdateStatus(ctx, &o, metav1.UpdateOptions{}); err != nil {
				e.t.Fatal(err)
			}
		}
	}
}

func TestServicesDeployUseDelete(t *testing.T) {
	e := newKubeEnv(t)
	ctx := context.Background()

	if k := e.ops.Kube(); !k.Configured || k.Server != e.srv.URL {
		t.Fatalf("kube = %+v", k)
	}
	pg, err := e.ops.DeployService(ctx, api.ServiceRequest{Service: "postgres"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pg.OSID, "postgres-") || pg.Tier != "lightweight" || pg.Status != api.StatusPending {
		t.Fatalf("deployed = %+v", pg)
	}
	rd, err := e.ops.DeployService(ctx, api.ServiceRequest{Service: "redis", Tier: "lightweight"})
	if err != nil {
		t.Fatal(err)
	}
	pgs := e.waitService("postgres applied", pg.OSID, applied)
	if pgs.Total < 1 || pgs.Ready != 0 {
		t.Errorf("postgres replicas %d/%d, want 0/N (no kubelet)", pgs.Ready, pgs.Total)
	}
	e.waitService("redis applied", rd.OSID, applied)
	// The state records the address clients use (the client Service's
	// ClusterIP, allocated by the API server): the nodes' resolvers answer
	// OSID.<zone> with it.
	redisSvc := e.get("v1", "Service", rd.OSID, "redis")
	if redisSvc == nil {
		t.Fatal("no redis Service")
	}
	clusterIP, _, _ := unstructured.NestedString(redisSvc.Object, "spec", "clusterIP")
	eventually(t, "redis address in the state", func() error {
		st, _ := e.store.State()
		if got := st.Workloads.Services[rd.OSID].Status.Addrs; len(got) != 1 || got[0].String() != clusterIP {
			return fmt.Errorf("addrs %v, want [%s]", got, clusterIP)
		}
		return nil
	})

	// The objects exist, labelled, with the credentials Secret.
	ns := e.get("v1", "Namespace", "", pg.OSID)
	if ns == nil || ns.GetLabels()["runos.io/osid"] != pg.OSID {
		t.Fatalf("namespace %s: %v", pg.OSID, ns)
	}
	if e.get("v1", "Secret", pg.OSID, "credentials") == nil {
		t.Error("no credentials Secret")
	}
	sts := e.get("apps/v1", "StatefulSet", pg.OSID, "postgres")
	if sts == nil {
		t.Fatal("no postgres StatefulSet")
	}
	if mf := sts.GetManagedFields(); len(mf) != 1 || mf[0].Manager != kube.FieldManager {
		t.Errorf("managed fields: %+v", mf)
	}

	// Show: connection details, password only with reveal.
	hidden, err := e.ops.ServiceInfo(pg.OSID, false)
	if err != nil {
		t.Fatal(err)
	}
	shown, err := e.ops.ServiceInfo(pg.OSID, true)
	if err != nil {
		t.Fatal(err)
	}
	if hidden.Connection == nil || hidden.Connection.Password != "" || shown.Connection.Password == "" ||
		strings.Contains(hidden.Connection.URL, shown.Connection.Password) || !strings.Contains(shown.Connection.URL, shown.Connection.Password) {
		t.Errorf("reveal: hidden %+v shown %+v", hidden.Connection, shown.Connection)
	}
	if want := "." + pg.OSID + ".svc.cluster.local"; !strings.HasSuffix(shown.Connection.Host, want) {
		t.Errorf("host %s, want *%s", shown.Connection.Host, want)
	}
	// Without a kubelet nothing becomes ready; play the kubelet's part in
	// the status subresource and the instance turns ready.
	e.markReady(rd.OSID)
	if got := e.waitService("redis ready", rd.OSID, func(s *api.Service) error {
		if s.Status != api.StatusReady {
			return fmt.Errorf("status %s (%d/%d): %s", s.Status, s.Ready, s.Total, s.Reason)
		}
		return nil
	}); got.Ready != got.Total || got.Total < 1 {
		t.Errorf("ready %d/%d", got.Ready, got.Total)
	}
	if list := e.ops.Services("redis"); len(list) != 1 || list[0].OSID != rd.OSID {
		t.Errorf("services --type redis = %+v", list)
	}

	// --use of a missing instance is refused; of real ones injects
	// Secret references, never the password itself.
	if _, err := e.ops.DeployApp(ctx, api.AppRequest{Name: "web", Image: "nginx:1.27", Use: []string{"postgres-zzzzz"}}); err == nil || !strings.Contains(err.Error(), "postgres-zzzzz") {
		t.Errorf("--use of a missing instance: %v", err)
	}
	gf, err := e.ops.DeployService(ctx, api.ServiceRequest{Service: "grafana"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.ops.DeployApp(ctx, api.AppRequest{Name: "web", Image: "nginx:1.27", Use: []string{gf.OSID}}); err == nil || !strings.Contains(err.Error(), "provides nothing") {
		t.Errorf("--use of an incompatible instance: %v", err)
	}
	app, err := e.ops.DeployApp(ctx, api.AppRequest{Name: "web", Image: "nginx:1.27", Port: 8080, Env: map[string]string{"MODE": "prod"}, Use: []string{pg.OSID, rd.OSID}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(app.InjectedEnv, "DATABASE_URL") || !slices.Contains(app.InjectedEnv, "REDIS_URL") || slices.Contains(app.InjectedEnv, "MODE") {
		t.Errorf("injected env = %v", app.InjectedEnv)
	}
	// A second app of the same name is a conflict (409), not a server error.
	if _, err := e.ops.DeployApp(ctx, api.AppRequest{Name: "web", Image: "nginx:1.27"}); !errors.Is(err, workload.ErrConflict) ||
		!strings.Contains(err.Error(), app.OSID) {
		t.Errorf("second app named web: %v", err)
	}
	eventually(t, "app applied", func() error {
		a, err := e.ops.AppInfo(app.OSID)
		if err != nil {
			return err
		}
		if a.Status != api.StatusApplying && a.Status != api.StatusReady {
			return fmt.Errorf("app %s: %s", a.Status, a.Reason)
		}
		return nil
	})
	dep := e.get("apps/v1", "Deployment", app.OSID, "web")
	if dep == nil {
		t.Fatal("no app Deployment")
	}
	containers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	envs, _, _ := unstructured.NestedSlice(containers[0].(map[string]any), "env")
	refs := map[string]string{}
	for _, x := range envs {
		m := x.(map[string]any)
		name := m["name"].(string)
		if v, ok := m["value"].(string); ok && strings.Contains(v, shown.Connection.Password) {
			t.Errorf("env %s carries the password in plain text", name)
		}
		if ref, ok, _ := unstructured.NestedString(m, "valueFrom", "secretKeyRef", "name"); ok {
			refs[name] = ref
		}
	}
	if refs["DATABASE_URL"] != pg.OSID || refs["REDIS_URL"] != rd.OSID {
		t.Errorf("secretKeyRefs = %v", refs)
	}
	if e.get("v1", "Secret", app.OSID, pg.OSID) == nil {
		t.Error("the app namespace has no copy of the postgres connection Secret")
	}

	// A used instance cannot be deleted; the app can, then the instance.
	if err := e.ops.DeleteService(ctx, pg.OSID); err == nil || !strings.Contains(err.Error(), "web") {
		t.Errorf("delete of a used instance: %v", err)
	}
	if err := e.ops.DeleteApp(ctx, app.OSID); err != nil {
		t.Fatal(err)
	}
	if err := e.ops.DeleteService(ctx, pg.OSID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "postgres deleted", func() error {
		if _, err := e.ops.ServiceInfo(pg.OSID, false); err == nil {
			return errors.New("record still there")
		}
		if err := e.namespaceGone(pg.OSID); err != nil {
			return err
		}
		return e.namespaceGone(app.OSID)
	})
	if apps := e.ops.Apps(); len(apps) != 0 {
		t.Errorf("apps after delete: %+v", apps)
	}
	if err := e.ops.DeleteService(ctx, pg.OSID); err == nil || !strings.Contains(err.Error(), "no such") {
		t.Errorf("delete of a deleted instance: %v", err)
	}
	if _, err := e.ops.DeployService(ctx, api.ServiceRequest{Service: "nosuchdb"}); err == nil || !strings.Contains(err.Error(), "unknown service") {
		t.Errorf("unknown service: %v", err)
	}
	if _, err := e.ops.DeployService(ctx, api.ServiceRequest{Service: "postgres", Tier: "gold"}); err == nil || !strings.Contains(err.Error(), "tier") {
		t.Errorf("unknown tier: %v", err)
	}
}

func TestServicesWhileAPIDown(t *testing.T) {
	e := newKubeEnv(t)
	ctx := context.Background()
	e.srv.StopAPI()
	s, err := e.ops.DeployService(ctx, api.ServiceRequest{Service: "redis"})
	if err != nil {
		t.Fatalf("deploy with the API down was not accepted: %v", err)
	}
	e.waitService("pending with the reason", s.OSID, func(s *api.Service) error {
		if s.Status != api.StatusPending || !strings.Contains(s.Reason, "unreachable") {
			return fmt.Errorf("status %s: %s", s.Status, s.Reason)
		}
		return nil
	})
	if k := e.ops.Kube(); !strings.Contains(k.Error, "unreachable") {
		t.Errorf("kube show error = %q", k.Error)
	}
	e.srv.StartAPI()
	e.waitService("applied once the API is back", s.OSID, applied)
	if e.get("apps/v1", "StatefulSet", s.OSID, "redis") == nil {
		t.Error("no redis StatefulSet")
	}
	// Down again: an applied instance keeps its phase, marked stale.
	e.srv.StopAPI()
	e.waitService("status marked stale", s.OSID, func(s *api.Service) error {
		if s.Status != api.StatusApplying || !strings.Contains(s.Reason, "status not current") {
			return fmt.Errorf("status %s: %s", s.Status, s.Reason)
		}
		return nil
	})
}

// A deploy before any `kube set` is accepted and waits; a bad kubeconfig is
// refused with the reason; setting the real one applies the waiting deploy.
func TestServicesBeforeKubeSet(t *testing.T) {
	e := newKubeEnvUnset(t)
	ctx := context.Background()
	if k := e.ops.Kube(); k.Configured {
		t.Fatalf("kube before set = %+v", k)
	}
	s, err := e.ops.DeployService(ctx, api.ServiceRequest{Service: "memcached"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != api.StatusPending || !strings.Contains(s.Reason, "kube set") {
		t.Errorf("deploy without a cluster: %s: %s", s.Status, s.Reason)
	}
	// Deleted before any cluster was set: nothing to undo, the record goes.
	gone, err := e.ops.DeployService(ctx, api.ServiceRequest{Service: "memcached"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ops.DeleteService(ctx, gone.OSID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "record purged", func() error {
		if _, err := e.ops.ServiceInfo(gone.OSID, false); err == nil {
			return errors.New("still listed")
		}
		return nil
	})
	for _, bad := range []string{"", "garbage: [", "apiVersion: v1\nkind: Config\n"} {
		if _, err := e.ops.SetKube(ctx, []byte(bad)); err == nil || !strings.Contains(err.Error(), "kubeconfig") {
			t.Errorf("kube set %q: %v", bad, err)
		}
	}
	if k := e.ops.Kube(); k.Configured {
		t.Error("a refused kubeconfig was stored")
	}
	if _, err := e.ops.SetKube(ctx, e.srv.Kubeconfig); err != nil {
		t.Fatal(err)
	}
	e.waitService("applied after kube set", s.OSID, applied)
	// The state holds the kubeconfig sealed, not in plain text.
	st, _ := e.store.State()
	if strings.Contains(st.Workloads.Kube.Kubeconfig, "certificate-authority-data") || st.Workloads.Kube.Server != e.srv.URL {
		t.Errorf("kube target in the state: server %q, kubeconfig not sealed", st.Workloads.Kube.Server)
	}
	if strings.Contains(st.Workloads.Services[s.OSID].Credentials, "password") {
		t.Error("credentials not sealed")
	}
}

// Every catalog service deploys for real (lightweight) through Ops:
// each rendered object exists afterwards; applying everything again (a new
// kube target generation makes the reconciler re-apply all) is accepted;
// deleting all removes their namespaces and records.
func TestEveryServiceDeploys(t *testing.T) {
	e := newKubeEnv(t)
	ctx := context.Background()
	cat := templates.APICatalog()
	var osids []string
	for _, svc := range cat {
		s, err := e.ops.DeployService(ctx, api.ServiceRequest{Service: svc.Name})
		if err != nil {
			t.Fatalf("%s: %v", svc.Name, err)
		}
		osids = append(osids, s.OSID)
	}
	check := func(what string) {
		t.Helper()
		for _, osid := range osids {
			e.waitService(what+" "+osid, osid, applied)
		}
	}
	check("applied")
	st, _ := e.store.State()
	for _, osid := range osids {
		inst, err := workload.OpenInstance(e.key, st.Workloads.Services[osid])
		if err != nil {
			t.Fatal(err)
		}
		objs, err := templates.Render(inst)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			got, err := e.exec.Get(ctx, o)
			if err != nil || got == nil {
				t.Errorf("%s: %s %s not there (%v)", osid, o.Kind(), o.Name(), err)
			}
		}
	}
	// Same target again: a new generation, so everything is applied anew.
	if _, err := e.ops.SetKube(ctx, e.srv.Kubeconfig); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	for _, s := range e.ops.Services("") {
		if s.Status != api.StatusApplying && s.Status != api.StatusReady {
			t.Errorf("%s after re-apply: %s: %s", s.OSID, s.Status, s.Reason)
		}
	}
	for _, osid := range osids {
		if err := e.ops.DeleteService(ctx, osid); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "all deleted", func() error {
		if list := e.ops.Services(""); len(list) > 0 {
			return fmt.Errorf("%d left, e.g. %s %s: %s", len(list), list[0].OSID, list[0].Status, list[0].Reason)
		}
		return nil
	})
	for _, osid := range osids {
		if err := e.namespaceGone(osid); err != nil {
			t.Error(err)
		}
	}
}

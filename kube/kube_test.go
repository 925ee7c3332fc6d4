package kube_test

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runos/runos-agent/templates/kapi"

	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/kube/kubetest"
)

func logger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func obj(apiVersion, kind, ns, name string, spec map[string]any) kapi.Object {
	meta := map[string]any{"name": name, "labels": map[string]any{"runos.io/osid": "t-abcde"}}
	if ns != "" {
		meta["namespace"] = ns
	}
	u := kapi.Object{"apiVersion": apiVersion, "kind": kind, "metadata": meta}
	for k, v := range spec {
		u[k] = v
	}
	return u
}

func deployment(ns, name string, replicas int64) kapi.Object {
	return obj("apps/v1", "Deployment", ns, name, map[string]any{"spec": map[string]any{
		"replicas": replicas,
		"selector": map[string]any{"matchLabels": map[string]any{"app": name}},
		"template": map[string]any{
			"metadata": map[string]any{"labels": map[string]any{"app": name}},
			"spec":     map[string]any{"containers": []any{map[string]any{"name": "c", "image": "busybox:1.36"}}},
		},
	}})
}

func TestExecutorAgainstRealAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	e, err := kube.New(kube.Config{Kubeconfig: srv.Kubeconfig}, logger())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := kubetest.Context(t, 2*time.Minute)
	if err := e.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	objs := []kapi.Object{
		obj("v1", "Namespace", "", "t-abcde", nil),
		obj("v1", "ConfigMap", "t-abcde", "conf", map[string]any{"data": map[string]any{"a": "1"}}),
		deployment("t-abcde", "web", 2),
	}

	// Dry run: the namespace must exist for namespaced objects to pass.
	if _, err := e.Apply(ctx, objs[:1], kube.ApplyOptions{DryRun: true}); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.Get(ctx, objs[0]); got != nil {
		t.Fatal("a dry run created the namespace")
	}
	applied, err := e.Apply(ctx, objs, kube.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != 3 || applied[2].UID == "" {
		t.Fatalf("applied = %+v", applied)
	}
	// Applying again is a no-op: same UIDs, one field manager.
	again, err := e.Apply(ctx, objs, kube.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range again {
		if again[i].UID != applied[i].UID {
			t.Errorf("%s re-created by a second apply", again[i].Name)
		}
		mf := again[i].Object.Slice("metadata", "managedFields")
		first := kapi.Object{}
		if len(mf) == 1 {
			first, _ = mf[0].(map[string]any)
		}
		if m, _ := first.String("manager"); m != kube.FieldManager || first["operation"] != "Apply" {
			t.Errorf("%s managed fields = %+v", again[i].Name, mf)
		}
	}
	st, err := e.Status(ctx, objs)
	if err != nil {
		t.Fatal(err)
	}
	if st.Total != 2 || st.Ready != 0 || len(st.Missing) != 0 || st.AllReady() {
		t.Errorf("status = %+v", st)
	}
	// A bad object is refused by the server with its reason.
	bad := deployment("t-abcde", "Bad_Name", 1)
	if _, err := e.Apply(ctx, []kapi.Object{bad}, kube.ApplyOptions{DryRun: true}); err == nil || !strings.Contains(err.Error(), "Bad_Name") {
		t.Errorf("bad name: %v", err)
	}
	// Unknown kinds say so.
	crd := obj("monitoring.coreos.com/v1", "ServiceMonitor", "t-abcde", "m", nil)
	if _, err := e.Apply(ctx, []kapi.Object{crd}, kube.ApplyOptions{}); err == nil || !strings.Contains(err.Error(), "does not serve") {
		t.Errorf("unknown kind: %v", err)
	}
	typo := obj("apps/v1", "Deploymnet", "t-abcde", "m", nil)
	if _, err := e.Apply(ctx, []kapi.Object{typo}, kube.ApplyOptions{}); err == nil || !strings.Contains(err.Error(), "serves apps/v1 but no kind Deploymnet") {
		t.Errorf("unknown kind in a served group version: %v", err)
	}

	// Deleting the namespace removes everything (the namespace controller
	// of kube-controller-manager finalizes it).
	deadline := time.Now().Add(90 * time.Second)
	for {
		gone, err := e.DeleteNamespace(ctx, "t-abcde")
		if err != nil {
			t.Fatal(err)
		}
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("namespace not gone")
		}
		time.Sleep(200 * time.Millisecond)
	}
	st, err = e.Status(ctx, objs)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Missing) != 3 {
		t.Errorf("after delete: %+v", st)
	}

	// API server down: a clear, typed error.
	srv.StopAPI()
	_, err = e.Apply(ctx, objs, kube.ApplyOptions{})
	if !errors.Is(err, kube.ErrUnreachable) || !strings.Contains(err.Error(), srv.URL) {
		t.Errorf("apply with the API down: %v", err)
	}
	if err := e.Ping(ctx); !errors.Is(err, kube.ErrUnreachable) {
		t.Errorf("ping with the API down: %v", err)
	}
	srv.StartAPI()
	if _, err := e.Apply(ctx, objs, kube.ApplyOptions{}); err != nil {
		t.Errorf("apply after the API returned: %v", err)
	}
}

func TestBadKubeconfig(t *testing.T) {
	missingUser := "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:6443\n" +
		"contexts:\n- name: k\n  context:\n    cluster: k\n    user: nobody\ncurrent-context: k\n"
	for _, kc := range []string{"", "not: [yaml", "apiVersion: v1\nkind: Config\n", missingUser} {
		if _, err := kube.New(kube.Config{Kubeconfig: []byte(kc)}, logger()); err == nil {
			t.Errorf("%q accepted", kc)
		}
	}
}

// A kubeconfig may name its server as host:port. client-go then speaks
// plain HTTP to it (and sends no credentials); Ping and kind lookups must
// reach the same URL rather than fail to build one. The server here is a
// plain HTTP listener on 127.0.0.1, since kube-apiserver only serves TLS.
func TestServerWithoutScheme(t *testing.T) {
	var paths []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		switch r.URL.Path {
		case "/version":
			io.WriteString(w, `{"major":"1","minor":"34"}`)
		case "/api/v1":
			io.WriteString(w, `{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"namespaces","namespaced":false,"kind":"Namespace","verbs":["get"]}]}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	hostPort := strings.TrimPrefix(srv.URL, "http://")
	kc := "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: " + hostPort +
		"\nusers:\n- name: u\n  user: {}\ncontexts:\n- name: k\n  context:\n    cluster: k\n    user: u\ncurrent-context: k\n"
	e, err := kube.New(kube.Config{Kubeconfig: []byte(kc)}, logger())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Host() != srv.URL {
		t.Errorf("Host() = %q, want %q", e.Host(), srv.URL)
	}
	ctx := kubetest.Context(t, 30*time.Second)
	if err := e.Ping(ctx); err != nil {
		t.Errorf("ping: %v", err)
	}
	got, err := e.Get(ctx, obj("v1", "Namespace", "", "nope", nil))
	if err != nil || got != nil {
		t.Errorf("get of a missing namespace = %v, %v; want nil, nil", got, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(paths, []string{"/version", "/api/v1", "/api/v1/namespaces/nope"}) {
		t.Errorf("requests = %v", paths)
	}
}

package main

import (
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/runos/runos-agent/api"
)

// fakeAgent answers the local API on DIR/agent.sock and records the
// requests: these tests are about the CLI's parsing, not the agent.
func fakeAgent(t *testing.T) (dir string, got chan map[string]any) {
	t.Helper()
	dir = t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, api.SocketName))
	if err != nil {
		t.Fatal(err)
	}
	got = make(chan map[string]any, 10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := map[string]any{}
		json.NewDecoder(r.Body).Decode(&body)
		body["_path"] = r.Method + " " + r.URL.RequestURI()
		got <- body
		switch {
		case r.Method == http.MethodGet && (r.URL.Path == "/v1/services" || r.URL.Path == "/v1/apps"):
			w.Write([]byte("[]"))
		case strings.HasPrefix(r.URL.Path, "/v1/services"):
			json.NewEncoder(w).Encode(api.Service{OSID: "postgres-abcde", Service: "postgres", Tier: "ha", Status: "pending"})
		case strings.HasPrefix(r.URL.Path, "/v1/apps"):
			json.NewEncoder(w).Encode(api.App{OSID: "web-abcde", Name: "web", Status: "pending"})
		default:
			w.Write([]byte("{}"))
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return dir, got
}

func TestFlagsAfterArguments(t *testing.T) {
	dir, got := fakeAgent(t)
	cases := []struct {
		args []string
		want map[string]any
	}{
		{[]string{"services", "deploy", "postgres", "--tier", "ha", "--set", "storage=5Gi", "--set=version=16", "-d", dir},
			map[string]any{"_path": "POST /v1/services", "service": "postgres", "tier": "ha", "set": map[string]any{"storage": "5Gi", "version": "16"}}},
		{[]string{"services", "deploy", "--data-dir", dir, "--tier=enterprise", "postgres"},
			map[string]any{"_path": "POST /v1/services", "service": "postgres", "tier": "enterprise"}},
		{[]string{"services", "deploy", "postgres", "-d", dir},
			map[string]any{"_path": "POST /v1/services", "service": "postgres", "tier": "lightweight"}},
		{[]string{"apps", "deploy", "web", "--image", "nginx:1.27", "--port", "8080", "--use", "postgres-abcde", "--env", "A=1", "--use", "redis-abcde", "-d", dir},
			map[string]any{"_path": "POST /v1/apps", "name": "web", "image": "nginx:1.27", "port": float64(8080), "use": []any{"postgres-abcde", "redis-abcde"}, "env": map[string]any{"A": "1"}}},
		{[]string{"services", "show", "postgres-abcde", "--reveal", "-d", dir},
			map[string]any{"_path": "GET /v1/services/postgres-abcde?reveal=1"}},
		{[]string{"services", "list", "--type", "redis", "--json", "-d", dir},
			map[string]any{"_path": "GET /v1/services?type=redis"}},
	}
	for _, tc := range cases {
		out, err := run(tc.args...)
		if err != nil {
			t.Errorf("%v: %v\n%s", tc.args, err, out)
			continue
		}
		req := <-got
		for k, v := range tc.want {
			a, _ := json.Marshal(req[k])
			b, _ := json.Marshal(v)
			if string(a) != string(b) {
				t.Errorf("%v: %s = %s, want %s", tc.args, k, a, b)
			}
		}
	}
}

func TestKubeCommandErrors(t *testing.T) {
	dir, _ := fakeAgent(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"services", "deploy", "postgres", "--tier"}, "--tier needs a value"},
		{[]string{"services", "deploy", "postgres", "--tire", "ha"}, "unknown flag --tire"},
		{[]string{"services", "deploy", "-d", dir}, "exactly 1 argument"},
		{[]string{"services", "deploy", "a", "b", "-d", dir}, "exactly 1 argument"},
		{[]string{"services", "deploy", "postgres", "--set", "novalue", "-d", dir}, "want KEY=VALUE"},
		{[]string{"apps", "deploy", "web", "-d", dir}, "needs --image"},
		{[]string{"kube", "set", "-d", dir}, "needs --kubeconfig"},
		{[]string{"services", "list", "-d", t.TempDir()}, "agent is not running"},
	}
	for _, tc := range cases {
		_, err := run(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestReorderArgs(t *testing.T) {
	valued := map[string]bool{"tier": true, "set": true, "json": false, "d": true}
	got, err := reorderArgs([]string{"postgres", "--tier", "ha", "--json", "--set=a=b", "--", "--literal"}, valued)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"--tier", "ha", "--json", "--set=a=b", "--", "postgres", "--literal"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

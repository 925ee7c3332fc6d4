package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
)

// Managed Kubernetes on a userspace cluster (what agent tests run) is
// refused with the reason, and the refusal leaves the state as it was;
// disable and kubeconfig without it say it is off, status reports it off.
func TestKubeManagedRefusedInUserspace(t *testing.T) {
	c := newCluster(t, 3)
	ctx := context.Background()
	leader := c.leader()
	var follower int
	for i, a := range c.agents {
		if a != leader {
			follower = i
			break
		}
	}
	for i := range c.agents {
		cl := api.NewClient(c.dirs[i])
		for _, version := range []string{"", api.DefaultKubeVersion, "v1.33.0"} {
			st, err := cl.EnableKube(ctx, api.KubeEnableRequest{Version: version})
			if err == nil {
				t.Fatalf("node %d: kube enable --version %q on a userspace cluster succeeded: %+v", i, version, st)
			}
			if err.Error() != errKubeNeedsKernel.Error() {
				t.Errorf("node %d: kube enable --version %q: %q, want %q", i, version, err, errKubeNeedsKernel)
			}
		}
	}
	for i, a := range c.agents {
		st, _ := a.Store().State()
		if st.Kube != nil {
			t.Errorf("node %d: a refused enable wrote the state: Kube = %+v", i, st.Kube)
		}
		if st.Workloads.Kube != nil {
			t.Errorf("node %d: a refused enable set the workloads target: %+v", i, st.Workloads.Kube)
		}
		for _, e := range st.Events {
			if e.Kind == raftstore.EventKubeEnabled {
				t.Errorf("node %d: event %+v after a refused enable", i, e)
			}
		}
	}
	for _, i := range []int{0, follower} {
		cl := api.NewClient(c.dirs[i])
		if err := cl.DisableKube(ctx); err == nil || !strings.Contains(err.Error(), raftstore.ErrKubeNotEnabled.Error()) {
			t.Errorf("node %d: kube disable when off: %v, want %q", i, err, raftstore.ErrKubeNotEnabled)
		}
		if kc, err := cl.AdminKubeconfig(ctx); err == nil || !strings.Contains(err.Error(), "not enabled") || !strings.Contains(err.Error(), "kube enable") {
			t.Errorf("node %d: kube kubeconfig when off: %q, %v; want an error saying it is not enabled", i, kc, err)
		}
		st, err := cl.KubeStatus(ctx)
		if err != nil {
			t.Fatalf("node %d: kube status: %v", i, err)
		}
		if st.Managed || st.Version != "" || len(st.Nodes) != 0 || len(st.Etcd) != 0 {
			t.Errorf("node %d: kube status when off: %+v, want managed=false and nothing else", i, st)
		}
	}
	for i, a := range c.agents {
		if st, _ := a.Store().State(); st.Kube != nil {
			t.Errorf("node %d: Kube = %+v after disable/kubeconfig/status", i, st.Kube)
		}
	}

	// The status codes say whose fault it is: a request this cluster
	// cannot carry is 400, asking for what is not there 404, disabling
	// what is off a conflict with the state (409), not a server fault.
	h := c.agents[follower].LocalAPIHandler()
	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "/v1/kube/enable", `{}`, http.StatusBadRequest, "kernel mode"},
		{"POST", "/v1/kube/enable", `{"version":`, http.StatusBadRequest, "malformed request"},
		{"POST", "/v1/kube/disable", ``, http.StatusConflict, raftstore.ErrKubeNotEnabled.Error()},
		{"GET", "/v1/kube/kubeconfig", ``, http.StatusNotFound, "not enabled"},
		{"GET", "/v1/kube/status", ``, http.StatusOK, `"managed":false`},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body)))
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("%s %s: %d %s, want %d with %q", tc.method, tc.path, rec.Code, rec.Body, tc.code, tc.want)
		}
	}
}

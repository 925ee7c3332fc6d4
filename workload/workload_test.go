package workload_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/raftstore/raftstoretest"
	"github.com/runos/runos-agent/seal"
	"github.com/runos/runos-agent/workload"
)

var _ workload.Store = (*raftstoretest.Store)(nil)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("RUNOS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func eventually(t testing.TB, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

// host is what a leading node gives the workload code: a cluster state
// (here in memory, through the real FSM), the operations over it, and the
// reconciler running as a leader task until the test ends.
type host struct {
	t     testing.TB
	key   seal.Key
	store *raftstoretest.Store
	ops   *workload.Ops
	rec   *workload.Reconciler
}

func newHost(t testing.TB, opts ...func(*workload.ReconcilerConfig)) *host {
	t.Helper()
	store, err := raftstoretest.NewBootstrapped("c1")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := seal.NewKey()
	cfg := workload.ReconcilerConfig{Store: store, DataKey: key, Interval: time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	rec, err := workload.NewReconciler(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ops, err := workload.NewOps(workload.OpsConfig{Store: store, DataKey: key, Reconciler: rec})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rec.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		rec.Close()
	})
	return &host{t: t, key: key, store: store, ops: ops, rec: rec}
}

// Without a Kubernetes target a deploy is accepted and waits; the errors
// carry the sentinels the local API maps to status codes; an instance
// deleted before any target was set just goes.
func TestOpsWithoutKube(t *testing.T) {
	h := newHost(t)
	ctx := context.Background()
	if k := h.ops.Kube(); k.Configured || k.Error != "" {
		t.Fatalf("kube before set = %+v", k)
	}
	pg, err := h.ops.DeployService(ctx, api.ServiceRequest{Service: "postgres"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pg.OSID, "postgres-") || pg.Tier != "lightweight" || pg.Status != api.StatusPending ||
		!strings.Contains(pg.Reason, "kube set") || pg.CreatedAt.IsZero() {
		t.Fatalf("deployed = %+v", pg)
	}
	app, err := h.ops.DeployApp(ctx, api.AppRequest{Name: "web", Image: "nginx:1.27", Env: map[string]string{"MODE": "prod"}, Use: []string{pg.OSID}})
	if err != nil {
		t.Fatal(err)
	}
	if app.Status != api.StatusPending || !strings.Contains(strings.Join(app.InjectedEnv, " "), "DATABASE_URL") {
		t.Fatalf("app = %+v", app)
	}
	if got, err := h.ops.AppInfo(app.OSID); err != nil || strings.Join(got.InjectedEnv, " ") != strings.Join(app.InjectedEnv, " ") {
		t.Fatalf("app info = %+v, %v", got, err)
	}
	if s, err := h.ops.ServiceInfo(pg.OSID, false); err != nil || len(s.UsedBy) != 1 || s.UsedBy[0] != app.OSID ||
		s.Connection == nil || s.Connection.Password != "" {
		t.Fatalf("service info = %+v, %v", s, err)
	}

	for _, tc := range []struct {
		what string
		err  error
		is   []error
	}{
		{"unknown service", second(h.ops.DeployService(ctx, api.ServiceRequest{Service: "nosuch"})), []error{workload.ErrInvalid}},
		{"unknown tier", second(h.ops.DeployService(ctx, api.ServiceRequest{Service: "postgres", Tier: "gold"})), []error{workload.ErrInvalid}},
		{"bad kubeconfig", second(h.ops.SetKube(ctx, []byte("garbage: ["))), []error{workload.ErrInvalid}},
		{"app without image", second(h.ops.DeployApp(ctx, api.AppRequest{Name: "x"})), []error{workload.ErrInvalid}},
		{"app using nothing", second(h.ops.DeployApp(ctx, api.AppRequest{Name: "x", Image: "nginx", Use: []string{"redis-zzzzz"}})), []error{workload.ErrInvalid}},
		{"app name taken", second(h.ops.DeployApp(ctx, api.AppRequest{Name: "web", Image: "nginx"})), []error{workload.ErrConflict}},
		{"service unknown", second(h.ops.ServiceInfo("postgres-zzzzz", false)), []error{workload.ErrNotFound, raftstore.ErrNoSuchWorkload}},
		{"app unknown", second(h.ops.AppInfo("web-zzzzz")), []error{workload.ErrNotFound, raftstore.ErrNoSuchWorkload}},
		{"delete unknown", h.ops.DeleteService(ctx, "postgres-zzzzz"), []error{workload.ErrNotFound, raftstore.ErrNoSuchWorkload}},
		{"delete a used service", h.ops.DeleteService(ctx, pg.OSID), []error{workload.ErrConflict, raftstore.ErrWorkloadInUse}},
	} {
		for _, want := range tc.is {
			if !errors.Is(tc.err, want) {
				t.Errorf("%s: %v, want %v", tc.what, tc.err, want)
			}
		}
	}

	if err := h.ops.DeleteApp(ctx, app.OSID); err != nil {
		t.Fatal(err)
	}
	if err := h.ops.DeleteService(ctx, pg.OSID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "records purged", func() error {
		if n, m := len(h.ops.Services("")), len(h.ops.Apps()); n+m > 0 {
			return fmt.Errorf("%d services %d apps left", n, m)
		}
		return nil
	})
}

// A kubeconfig that parses, for a server nothing answers on.
const unreachableKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:1
contexts:
- name: c
  context:
    cluster: c
    user: u
current-context: c
users:
- name: u
  user:
    token: t
`

// The reconciler builds its client through the configured factory; when
// that fails, every instance is failed with the reason.
func TestReconcilerExecutorFailure(t *testing.T) {
	h := newHost(t, func(c *workload.ReconcilerConfig) {
		c.NewExecutor = func([]byte) (*kube.Executor, error) { return nil, errors.New("no client today") }
	})
	ctx := context.Background()
	if _, err := h.ops.SetKube(ctx, []byte(unreachableKubeconfig)); err != nil {
		t.Fatal(err)
	}
	s, err := h.ops.DeployService(ctx, api.ServiceRequest{Service: "redis"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "failed with the reason", func() error {
		got, err := h.ops.ServiceInfo(s.OSID, false)
		if err != nil {
			return err
		}
		if got.Status != api.StatusFailed || !strings.Contains(got.Reason, "no client today") {
			return fmt.Errorf("status %s: %s", got.Status, got.Reason)
		}
		return nil
	})
}

func TestConstructorsRejectMissingFields(t *testing.T) {
	key, _ := seal.NewKey()
	store := raftstoretest.New()
	if _, err := workload.NewOps(workload.OpsConfig{DataKey: key}); err == nil {
		t.Error("NewOps without a Store")
	}
	if _, err := workload.NewOps(workload.OpsConfig{Store: store}); err == nil {
		t.Error("NewOps without a DataKey")
	}
	if _, err := workload.NewReconciler(workload.ReconcilerConfig{Store: store, DataKey: key}, nil); err == nil {
		t.Error("NewReconciler without a logger")
	}
	if _, err := workload.NewReconciler(workload.ReconcilerConfig{DataKey: key}, testLogger(t)); err == nil {
		t.Error("NewReconciler without a Store")
	}
}

func second[T any](_ T, err error) error { return err }

// The local API reports raftstore's phases unchanged (ServiceView copies
// them), so the names the API documents must be the stored ones.
func TestWorkloadStatusNamesMatchAPI(t *testing.T) {
	for name, phase := range map[string]string{
		api.StatusPending:  raftstore.PhasePending,
		api.StatusApplying: raftstore.PhaseApplying,
		api.StatusReady:    raftstore.PhaseReady,
		api.StatusFailed:   raftstore.PhaseFailed,
		api.StatusDeleting: raftstore.PhaseDeleting,
	} {
		if name != phase {
			t.Errorf("api status %q != raftstore phase %q", name, phase)
		}
	}
}

package agent

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudlink"
	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
	"github.com/runos/runos-agent/templates"
)

// Services and apps on Kubernetes (issue 6).
//
// The local API commits what the user asks for to Raft (so a deploy is
// accepted with the Kubernetes API or the cloud down); the leader's
// reconciler renders each instance, server-side applies it, and writes the
// observed status back only when it changed. Everything the reconciler does
// is idempotent, so a new leader simply does it again.

// defaultWorkloadInterval is how often the reconciler re-checks status
// (and retries) without being woken.
const defaultWorkloadInterval = 10 * time.Second

// workloads is the reconciler's memory.
//
// Lock rules: a and interval are set before the loop starts. The fields
// from exec to lastPoll belong to the loop goroutine alone (the closer
// that closes exec runs after Agent.Close has waited for the loop), so
// they need no lock. lastErr is also read by the local API (Agent.Kube),
// hence mu. afterApply is atomic because tests set it while the loop runs.
type workloads struct {
	a        *Agent
	interval time.Duration

	// exec is the client for the current kube target; execGen is the
	// target generation it was built for.
	exec    *kube.Executor
	execGen int64
	// applied maps an OSID to the desired generation this node applied
	// while leader; it is cleared whenever leadership is lost, so a new
	// leader applies everything once (server-side apply makes that a
	// no-op where the old leader already did).
	applied map[string]int64
	// retryAt holds when a failed instance may be retried, and the backoff.
	retryAt map[string]time.Time
	backoff map[string]time.Duration
	// lastPoll is when status was last read from the API.
	lastPoll time.Time

	mu      sync.Mutex
	lastErr string // guarded by mu; the last "API unreachable" reason, "" when fine

	// afterApply, when set (tests), runs after an instance's objects were
	// applied and before its status is written.
	afterApply atomic.Pointer[func(ctx context.Context, osid string)]
}

func (w *workloads) setAfterApply(f func(ctx context.Context, osid string)) { w.afterApply.Store(&f) }

func (a *Agent) startWorkloads(ctx context.Context) error {
	iv := a.tuning.WorkloadInterval
	if iv == 0 {
		iv = defaultWorkloadInterval
	}
	w := &a.wl
	w.a, w.interval = a, iv
	w.applied, w.retryAt, w.backoff = map[string]int64{}, map[string]time.Time{}, map[string]time.Duration{}
	a.closers = append(a.closers, func() error {
		if a.wl.exec != nil {
			a.wl.exec.Close()
		}
		return nil
	})
	return nil
}

// run is the reconciler's leader task: it runs while this node leads.
func (w *workloads) run(ctx context.Context) error {
	// What this leadership applied is its own: the next one applies
	// everything once (server-side apply makes that a no-op where this
	// one already did).
	defer func() {
		clear(w.applied)
		clear(w.retryAt)
		clear(w.backoff)
	}()
	tick := time.NewTicker(w.interval / 4)
	defer tick.Stop()
	for {
		changed := w.a.store.Changed()
		w.reconcile(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
	}
}

func (w *workloads) setLastErr(s string) {
	w.mu.Lock()
	w.lastErr = s
	w.mu.Unlock()
}

// executor returns the client for the current target, rebuilding it when
// the target changed.
func (w *workloads) executor(k *raftstore.KubeTarget) (*kube.Executor, error) {
	if w.exec != nil && w.execGen == k.Generation {
		return w.exec, nil
	}
	kc, err := seal.Open(w.a.dataKey, raftstore.KubeconfigPurpose, k.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	e, err := kube.New(kube.Config{Kubeconfig: kc}, w.a.log.With("component", "kube"))
	if err != nil {
		return nil, err
	}
	if w.exec != nil {
		w.exec.Close()
	}
	w.exec, w.execGen = e, k.Generation
	clear(w.applied) // a new target gets everything applied
	return e, nil
}

// item is one service or app as the reconciler handles it.
type item struct {
	isApp   bool
	osid    string
	desired string
	gen     int64
	cur     raftstore.Observed
	render  func() ([]*unstructured.Unstructured, error)
}

func (w *workloads) items(wl raftstore.Workloads) []item {
	var out []item
	for _, r := range sortedServices(wl.Services) {
		out = append(out, item{osid: r.OSID, desired: r.Desired, gen: r.Generation, cur: r.Status, render: func() ([]*unstructured.Unstructured, error) {
			inst, err := w.instance(r)
			if err != nil {
				return nil, err
			}
			return templates.Render(inst)
		}})
	}
	for _, r := range sortedApps(wl.Apps) {
		out = append(out, item{isApp: true, osid: r.OSID, desired: r.Desired, gen: r.Generation, cur: r.Status, render: func() ([]*unstructured.Unstructured, error) {
			app, err := w.app(r, wl.Services)
			if err != nil {
				return nil, err
			}
			return templates.RenderApp(app)
		}})
	}
	return out
}

// reconcile applies what is not applied yet and deletes what is deleted;
// every interval it also reads the status of everything applied. New work
// that arrives during that (slow) read goes first, so a deploy never waits
// for a status sweep.
func (w *workloads) reconcile(ctx context.Context) {
	changed := w.a.store.Changed()
	st, _ := w.a.store.State()
	wl := st.Workloads
	if len(wl.Services) == 0 && len(wl.Apps) == 0 {
		return
	}
	if wl.Kube == nil {
		// Create already said "no Kubernetes cluster set". Nothing was
		// ever applied, so a deleted instance just goes.
		for _, it := range w.items(wl) {
			if it.desired == raftstore.DesiredDeleted {
				w.purge(ctx, it)
			}
		}
		return
	}
	exec, err := w.executor(wl.Kube)
	if err != nil {
		for _, it := range w.items(wl) {
			w.writeStatus(ctx, it.osid, it.cur, raftstore.Observed{Phase: raftstore.PhaseFailed, Reason: err.Error(), Generation: it.gen})
		}
		return
	}
	// down is set at the first "unreachable" of the pass; the rest of the
	// pass marks instances pending with the same reason without waiting
	// for more timeouts.
	var down error
	for _, it := range w.items(wl) {
		if ctx.Err() != nil {
			return
		}
		w.reconcileOne(ctx, exec, &down, false, it)
	}
	if time.Since(w.lastPoll) < w.interval {
		return
	}
	w.lastPoll = time.Now()
	for _, it := range w.items(wl) {
		if ctx.Err() != nil {
			return
		}
		select {
		case <-changed:
			changed = w.a.store.Changed()
			st, _ = w.a.store.State()
			for _, x := range w.items(st.Workloads) {
				w.reconcileOne(ctx, exec, &down, false, x)
			}
		default:
		}
		// The latest record: the status to compare with may have changed.
		it, ok := refreshed(st.Workloads, it)
		if !ok {
			continue
		}
		w.reconcileOne(ctx, exec, &down, true, it)
	}
}

// refreshed is it with the status, generation and desired state its record
// has in wl; false when the record is gone (purged meanwhile).
func refreshed(wl raftstore.Workloads, it item) (item, bool) {
	if it.isApp {
		r, ok := wl.Apps[it.osid]
		if ok {
			it.cur, it.gen, it.desired = r.Status, r.Generation, r.Desired
		}
		return it, ok
	}
	r, ok := wl.Services[it.osid]
	if ok {
		it.cur, it.gen, it.desired = r.Status, r.Generation, r.Desired
	}
	return it, ok
}

// reconcileOne applies (or deletes) one item when it needs it; with poll
// set, it only reads the status of an item already applied.
func (w *workloads) reconcileOne(ctx context.Context, exec *kube.Executor, down *error, poll bool, it item) {
	osid, gen, cur := it.osid, it.gen, it.cur
	now := time.Now()
	if t, ok := w.retryAt[osid]; ok && now.Before(t) {
		return
	}
	if it.desired == raftstore.DesiredDeleted {
		if poll || *down != nil {
			return
		}
		gone, err := exec.DeleteNamespace(ctx, osid)
		if err != nil {
			w.failed(ctx, down, osid, gen, cur, raftstore.PhaseDeleting, err)
			return
		}
		w.succeeded(osid)
		if !gone {
			w.writeStatus(ctx, osid, cur, raftstore.Observed{Phase: raftstore.PhaseDeleting, Reason: "namespace terminating", Generation: gen})
			w.retryAt[osid] = now.Add(w.interval / 10)
			return
		}
		w.purge(ctx, it)
		return
	}

	needApply := w.applied[osid] != gen
	if needApply == poll {
		return // poll: not applied yet (the apply pass does it); else: nothing to do
	}
	if *down != nil {
		if needApply {
			w.writeStatus(ctx, osid, cur, raftstore.Observed{Phase: raftstore.PhasePending, Reason: (*down).Error(), Generation: gen})
		} else {
			w.writeStatus(ctx, osid, cur, lastKnown(cur, *down))
		}
		return
	}
	objs, err := it.render()
	if err != nil {
		w.failed(ctx, down, osid, gen, cur, raftstore.PhaseFailed, err)
		return
	}
	if needApply {
		if _, err := exec.Apply(ctx, objs, kube.ApplyOptions{}); err != nil {
			w.failed(ctx, down, osid, gen, cur, raftstore.PhaseFailed, err)
			return
		}
		w.applied[osid] = gen
		if f := w.afterApply.Load(); f != nil {
			(*f)(ctx, osid)
			if ctx.Err() != nil {
				return
			}
		}
	}
	ks, err := exec.Status(ctx, statusObjects(objs))
	if err != nil {
		if poll && errors.Is(err, kube.ErrUnreachable) {
			// Applied before: keep the phase, say the status is stale.
			*down = err
			w.setLastErr(err.Error())
			w.writeStatus(ctx, osid, cur, lastKnown(cur, err))
			return
		}
		w.failed(ctx, down, osid, gen, cur, raftstore.PhaseFailed, err)
		return
	}
	if len(ks.Missing) > 0 && !needApply {
		// Someone deleted objects: apply again on the next pass.
		delete(w.applied, osid)
	}
	w.succeeded(osid)
	obs := raftstore.Observed{Phase: raftstore.PhaseApplying, Ready: ks.Ready, Total: ks.Total, Conditions: ks.Conditions, Generation: gen}
	switch {
	case len(ks.Missing) > 0:
		obs.Reason = "missing " + strings.Join(ks.Missing, ", ")
	case ks.AllReady():
		obs.Phase = raftstore.PhaseReady
	default:
		obs.Reason = fmt.Sprintf("%d/%d replicas ready", ks.Ready, ks.Total)
	}
	w.writeStatus(ctx, osid, cur, obs)
}

// lastKnown is an applied item's status while the API cannot be asked.
func lastKnown(cur raftstore.Observed, err error) raftstore.Observed {
	o := cur
	o.Conditions = slices.Clone(cur.Conditions)
	o.Reason = "status not current: " + err.Error()
	return o
}

// purge removes the record of a deleted item whose namespace is gone.
func (w *workloads) purge(ctx context.Context, it item) {
	op := raftstore.OpWorkloadServicePurge
	if it.isApp {
		op = raftstore.OpWorkloadAppPurge
	}
	if err := w.propose(ctx, op, &raftstore.WorkloadCmd{OSID: it.osid}); err != nil && ctx.Err() == nil {
		w.a.log.Warn("purge", "osid", it.osid, "err", err)
	}
	delete(w.applied, it.osid)
}

// statusObjects keeps the objects whose existence and readiness the status
// reflects: the namespace and the workloads.
func statusObjects(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		switch o.GetKind() {
		case "Namespace", "StatefulSet", "Deployment", "DaemonSet":
			out = append(out, o)
		}
	}
	return out
}

// failed records a failure and schedules the retry with backoff.
func (w *workloads) failed(ctx context.Context, down *error, osid string, gen int64, cur raftstore.Observed, phase string, err error) {
	if ctx.Err() != nil {
		return
	}
	if errors.Is(err, kube.ErrUnreachable) {
		*down = err
		w.setLastErr(err.Error())
		phase = raftstore.PhasePending
		if cur.Phase == raftstore.PhaseDeleting {
			phase = raftstore.PhaseDeleting
		}
	}
	b := w.backoff[osid]
	b = min(max(2*b, w.interval/20), 3*w.interval)
	w.backoff[osid] = b
	w.retryAt[osid] = time.Now().Add(b)
	w.a.log.Debug("workload not applied", "osid", osid, "err", err, "retry_in", b)
	w.writeStatus(ctx, osid, cur, raftstore.Observed{Phase: phase, Reason: err.Error(), Generation: gen,
		Ready: cur.Ready, Total: cur.Total})
}

// succeeded notes that the API answered for osid.
func (w *workloads) succeeded(osid string) {
	w.setLastErr("")
	delete(w.retryAt, osid)
	delete(w.backoff, osid)
}

// writeStatus proposes obs unless it is what the state holds already.
func (w *workloads) writeStatus(ctx context.Context, osid string, cur, obs raftstore.Observed) {
	if cur.Same(obs) {
		return
	}
	if err := w.propose(ctx, raftstore.OpWorkloadStatus, &raftstore.WorkloadCmd{OSID: osid, Status: &obs}); err != nil && ctx.Err() == nil {
		w.a.log.Warn("status write", "osid", osid, "err", err)
	}
}

// propose commits a reconciler write. Its timeout is shorter than the
// local API's so one slow commit does not hold up a whole pass.
func (w *workloads) propose(ctx context.Context, op string, c *raftstore.WorkloadCmd) error {
	return applyWorkloadCmd(ctx, w.a.store, 10*time.Second, &raftstore.Command{Op: op, Workload: c})
}

// instance opens a record's credentials into a templates.Instance.
func (w *workloads) instance(r *raftstore.ServiceRecord) (templates.Instance, error) {
	return openInstance(w.a.dataKey, r)
}

func openInstance(key seal.Key, r *raftstore.ServiceRecord) (templates.Instance, error) {
	return cloudlink.OpenInstance(key, r)
}

func (w *workloads) app(r *raftstore.AppRecord, services map[string]*raftstore.ServiceRecord) (templates.App, error) {
	return buildApp(w.a.dataKey, r.OSID, r.Name, r.Image, r.Port, r.Env, r.Uses, services)
}

// buildApp is cloudlink.BuildApp (shared with cloud commands), its
// refusals as the local API's 400s.
func buildApp(key seal.Key, osid, name, image string, port int, env map[string]string, uses []string, services map[string]*raftstore.ServiceRecord) (templates.App, error) {
	app, err := cloudlink.BuildApp(key, osid, name, image, port, env, uses, services)
	return app, asInvalid(err)
}

// asInvalid turns cloudlink's ErrInvalid into the local API's 400.
func asInvalid(err error) error {
	if err != nil && errors.Is(err, cloudlink.ErrInvalid) {
		return invalid(err)
	}
	return err
}

func sortedServices(m map[string]*raftstore.ServiceRecord) []*raftstore.ServiceRecord {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b *raftstore.ServiceRecord) int { return strings.Compare(a.OSID, b.OSID) })
	return out
}

func sortedApps(m map[string]*raftstore.AppRecord) []*raftstore.AppRecord {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b *raftstore.AppRecord) int { return strings.Compare(a.OSID, b.OSID) })
	return out
}

// --- local API ---

func (a *Agent) workloadRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/kube", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, http.StatusOK, a.Kube())
	})
	mux.HandleFunc("PUT /v1/kube", func(w http.ResponseWriter, r *http.Request) {
		var req api.KubeSetRequest
		if !decodeBody(w, r, &req, 1<<20) {
			return
		}
		k, err := a.SetKube(r.Context(), []byte(req.Kubeconfig))
		respond(w, k, err)
	})
	mux.HandleFunc("GET /v1/catalog", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, http.StatusOK, Catalog())
	})
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, http.StatusOK, a.Services(r.URL.Query().Get("type")))
	})
	mux.HandleFunc("POST /v1/services", func(w http.ResponseWriter, r *http.Request) {
		var req api.ServiceRequest
		if !decodeBody(w, r, &req, 1<<16) {
			return
		}
		s, err := a.DeployService(r.Context(), req)
		respond(w, s, err)
	})
	mux.HandleFunc("GET /v1/services/{osid}", func(w http.ResponseWriter, r *http.Request) {
		reveal := r.URL.Query().Get("reveal")
		s, err := a.ServiceInfo(r.PathValue("osid"), reveal == "1" || reveal == "true")
		respond(w, s, err)
	})
	mux.HandleFunc("DELETE /v1/services/{osid}", func(w http.ResponseWriter, r *http.Request) {
		respond(w, nil, a.DeleteWorkload(r.Context(), r.PathValue("osid"), false))
	})
	mux.HandleFunc("GET /v1/apps", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, http.StatusOK, a.Apps())
	})
	mux.HandleFunc("POST /v1/apps", func(w http.ResponseWriter, r *http.Request) {
		var req api.AppRequest
		if !decodeBody(w, r, &req, 1<<16) {
			return
		}
		app, err := a.DeployApp(r.Context(), req)
		respond(w, app, err)
	})
	mux.HandleFunc("GET /v1/apps/{osid}", func(w http.ResponseWriter, r *http.Request) {
		app, err := a.AppInfo(r.PathValue("osid"))
		respond(w, app, err)
	})
	mux.HandleFunc("DELETE /v1/apps/{osid}", func(w http.ResponseWriter, r *http.Request) {
		respond(w, nil, a.DeleteWorkload(r.Context(), r.PathValue("osid"), true))
	})
}

// badRequest marks a user error (HTTP 400) without changing its message.
type badRequest struct{ error }

func (e badRequest) Is(target error) bool { return target == errBadRequest }
func (e badRequest) Unwrap() error        { return e.error }

func invalid(err error) error { return badRequest{err} }

// conflictErr marks a request that clashes with what exists (HTTP 409)
// without changing its message.
type conflictErr struct{ error }

func (e conflictErr) Unwrap() error { return e.error }

var errConflict = errors.New("conflict")

func (e conflictErr) Is(target error) bool { return target == errConflict }

func decodeBody(w http.ResponseWriter, r *http.Request, v any, limit int64) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit)).Decode(v); err != nil {
		httpError(w, http.StatusBadRequest, fmt.Errorf("malformed request: %w", err))
		return false
	}
	return true
}

func respond(w http.ResponseWriter, v any, err error) {
	switch {
	case err != nil:
		httpError(w, workloadStatusFor(err), err)
	case v == nil:
		w.WriteHeader(http.StatusNoContent)
	default:
		writeJSONResponse(w, http.StatusOK, v)
	}
}

func workloadStatusFor(err error) int {
	switch {
	case errors.Is(err, raftstore.ErrNoSuchWorkload):
		return http.StatusNotFound
	case errors.Is(err, raftstore.ErrWorkloadExists), errors.Is(err, raftstore.ErrWorkloadInUse),
		errors.Is(err, raftstore.ErrAppNameTaken), errors.Is(err, errConflict):
		return http.StatusConflict
	}
	return statusFor(err)
}

// Kube reports the Kubernetes target.
func (a *Agent) Kube() *api.Kube {
	st, _ := a.store.State()
	k := st.Workloads.Kube
	if k == nil {
		return &api.Kube{}
	}
	out := &api.Kube{Configured: true, Server: k.Server, SetAt: k.SetAt}
	if a.store.IsLeader() {
		a.wl.mu.Lock()
		out.Error = a.wl.lastErr
		a.wl.mu.Unlock()
	}
	return out
}

// SetKube validates a kubeconfig, seals it and commits it.
func (a *Agent) SetKube(ctx context.Context, kubeconfig []byte) (*api.Kube, error) {
	rc, err := kube.RESTConfig(kubeconfig)
	if err != nil {
		return nil, invalid(err)
	}
	sealed, err := seal.Seal(a.dataKey, raftstore.KubeconfigPurpose, kubeconfig)
	if err != nil {
		return nil, err
	}
	if err := a.proposeWorkload(ctx, &raftstore.Command{Op: raftstore.OpWorkloadKubeSet, Workload: &raftstore.WorkloadCmd{Kube: &raftstore.KubeTarget{Kubeconfig: sealed, Server: rc.Host}}}); err != nil {
		return nil, err
	}
	return &api.Kube{Configured: true, Server: rc.Host, SetAt: time.Now().UTC()}, nil
}

// proposeWorkload commits a user's request. On success cmd.Time is the
// time Apply saw, so the caller can show the record as stored.
func (a *Agent) proposeWorkload(ctx context.Context, cmd *raftstore.Command) error {
	return applyWorkloadCmd(ctx, a.store, 15*time.Second, cmd)
}

// applyWorkloadCmd commits cmd within timeout; a command the state machine
// refused comes back as its error.
func applyWorkloadCmd(ctx context.Context, store *raftstore.Store, timeout time.Duration, cmd *raftstore.Command) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := store.Apply(ctx, cmd)
	if err != nil {
		return err
	}
	return res.Error()
}

// Catalog lists the deployable services (the cloud console serves the
// same list).
func Catalog() []api.CatalogService { return templates.APICatalog() }

// newOSID draws an OSID not used by any service or app.
func newOSID(rnd io.Reader, st *raftstore.State, name string) (string, error) {
	for range 20 {
		id, err := templates.NewOSID(rnd, name)
		if err != nil {
			return "", invalid(err)
		}
		if !st.Workloads.Exists(id) {
			return id, nil
		}
	}
	return "", errors.New("no free OSID found")
}

// DeployService validates the request, generates the OSID and credentials
// and commits the instance. The reconciler applies it.
func (a *Agent) DeployService(ctx context.Context, req api.ServiceRequest) (*api.Service, error) {
	st, _ := a.store.State()
	rec, err := cloudlink.NewServiceRecord(a.dataKey, rand.Reader, func(service string) (string, error) {
		return newOSID(rand.Reader, st, service)
	}, req)
	if err != nil {
		return nil, asInvalid(err)
	}
	cmd := &raftstore.Command{Op: raftstore.OpWorkloadServiceCreate, Workload: &raftstore.WorkloadCmd{Service: rec}}
	if err := a.proposeWorkload(ctx, cmd); err != nil {
		return nil, err
	}
	rec.Desired, rec.Generation, rec.CreatedAt = raftstore.DesiredPresent, 1, cmd.Time
	rec.Status = raftstore.NewServiceStatus(cmd.Time, st.Workloads.Kube != nil)
	return serviceView(rec, nil), nil
}

// serviceView is the record in the API shape; cloudlink builds the same
// view for the cloud's mirror, so both show one shape.
func serviceView(r *raftstore.ServiceRecord, apps map[string]*raftstore.AppRecord) *api.Service {
	return cloudlink.ServiceView(r, apps)
}

// Services lists instances, optionally of one service.
func (a *Agent) Services(service string) []api.Service {
	st, _ := a.store.State()
	out := []api.Service{}
	for _, r := range sortedServices(st.Workloads.Services) {
		if service == "" || r.Service == service {
			out = append(out, *serviceView(r, st.Workloads.Apps))
		}
	}
	return out
}

// ServiceInfo returns one instance with connection details; the password
// only when reveal is set.
func (a *Agent) ServiceInfo(osid string, reveal bool) (*api.Service, error) {
	st, _ := a.store.State()
	r, ok := st.Workloads.Services[osid]
	if !ok {
		return nil, fmt.Errorf("service %s: %w", osid, raftstore.ErrNoSuchWorkload)
	}
	out := serviceView(r, st.Workloads.Apps)
	inst, err := openInstance(a.dataKey, r)
	if err != nil {
		return nil, err
	}
	c, err := templates.Connect(inst)
	if err != nil {
		return nil, err
	}
	conn := &api.Connection{Host: c.Host, Port: c.Port, User: c.User, Database: c.Database, URL: c.URL, Secret: c.Secret, Revealed: reveal}
	conn.Env = slices.Sorted(maps.Keys(c.SecretKeys))
	if svc, ok := templates.Lookup(r.Service); ok {
		conn.Env = slices.Clone(svc.Env)
	}
	if reveal {
		conn.Password = c.Password
	} else if c.Password != "" {
		conn.URL = strings.ReplaceAll(conn.URL, c.Password, "****")
	}
	out.Connection = conn
	return out, nil
}

// DeleteWorkload marks a service or app for deletion; the reconciler
// deletes its namespace and then the record.
func (a *Agent) DeleteWorkload(ctx context.Context, osid string, app bool) error {
	op := raftstore.OpWorkloadServiceDelete
	if app {
		op = raftstore.OpWorkloadAppDelete
	}
	st, _ := a.store.State()
	if app {
		if _, ok := st.Workloads.Apps[osid]; !ok {
			return fmt.Errorf("app %s: %w", osid, raftstore.ErrNoSuchWorkload)
		}
	} else if _, ok := st.Workloads.Services[osid]; !ok {
		return fmt.Errorf("service %s: %w", osid, raftstore.ErrNoSuchWorkload)
	}
	return a.proposeWorkload(ctx, &raftstore.Command{Op: op, Workload: &raftstore.WorkloadCmd{OSID: osid}})
}

// DeployApp validates an app (its --use instances must exist and provide
// something an app can use) and commits it.
func (a *Agent) DeployApp(ctx context.Context, req api.AppRequest) (*api.App, error) {
	if req.Name == "" || req.Image == "" {
		return nil, invalid(errors.New("an app needs a name and an image"))
	}
	st, _ := a.store.State()
	// Apply refuses a second present app of one name too (ErrAppNameTaken,
	// also a 409); checking here first saves a Raft round trip.
	for _, o := range st.Workloads.Apps {
		if o.Name == req.Name && o.Desired == raftstore.DesiredPresent {
			return nil, conflictErr{fmt.Errorf("app %s (%s): already exists", req.Name, o.OSID)}
		}
	}
	osid, err := newOSID(rand.Reader, st, req.Name)
	if err != nil {
		return nil, err
	}
	uses := slices.Clone(req.Use)
	app, err := buildApp(a.dataKey, osid, req.Name, req.Image, req.Port, req.Env, uses, st.Workloads.Services)
	if err != nil {
		return nil, err
	}
	objs, err := templates.RenderApp(app)
	if err != nil {
		return nil, invalid(err)
	}
	rec := &raftstore.AppRecord{OSID: osid, Name: req.Name, Image: req.Image, Port: req.Port, Env: maps.Clone(req.Env), Uses: uses}
	cmd := &raftstore.Command{Op: raftstore.OpWorkloadAppCreate, Workload: &raftstore.WorkloadCmd{App: rec}}
	if err := a.proposeWorkload(ctx, cmd); err != nil {
		return nil, err
	}
	rec.Desired, rec.Generation, rec.CreatedAt = raftstore.DesiredPresent, 1, cmd.Time
	rec.Status = raftstore.NewAppStatus(cmd.Time)
	v := appView(rec)
	v.InjectedEnv = injectedEnv(objs, req.Env)
	return v, nil
}

func appView(r *raftstore.AppRecord) *api.App { return cloudlink.AppView(r) }

// injectedEnv lists the env variables of the app's Deployment that come
// from --use (Secret references and connection details), sorted.
func injectedEnv(objs []*unstructured.Unstructured, own map[string]string) []string {
	var out []string
	for _, o := range objs {
		if o.GetKind() != "Deployment" {
			continue
		}
		cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range cs {
			m, _ := c.(map[string]any)
			envs, _, _ := unstructured.NestedSlice(m, "env")
			for _, e := range envs {
				em, _ := e.(map[string]any)
				name, _ := em["name"].(string)
				if _, mine := own[name]; !mine {
					out = append(out, name)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// Apps lists apps.
func (a *Agent) Apps() []api.App {
	st, _ := a.store.State()
	out := []api.App{}
	for _, r := range sortedApps(st.Workloads.Apps) {
		out = append(out, *appView(r))
	}
	return out
}

// AppInfo returns one app with the variables it receives.
func (a *Agent) AppInfo(osid string) (*api.App, error) {
	st, _ := a.store.State()
	r, ok := st.Workloads.Apps[osid]
	if !ok {
		return nil, fmt.Errorf("app %s: %w", osid, raftstore.ErrNoSuchWorkload)
	}
	v := appView(r)
	if app, err := buildApp(a.dataKey, r.OSID, r.Name, r.Image, r.Port, r.Env, r.Uses, st.Workloads.Services); err == nil {
		if objs, err := templates.RenderApp(app); err == nil {
			v.InjectedEnv = injectedEnv(objs, r.Env)
		}
	}
	return v, nil
}

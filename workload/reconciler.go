package workload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/runos/runos-agent/templates/kapi"

	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
	"github.com/runos/runos-agent/templates"
)

// DefaultInterval is how often the reconciler re-checks status (and
// retries) without being woken.
const DefaultInterval = 10 * time.Second

// statusTimeout bounds a reconciler write; shorter than a user's so one
// slow commit does not hold up a whole pass.
const statusTimeout = 10 * time.Second

// ReconcilerConfig configures a Reconciler.
type ReconcilerConfig struct {
	Store   Store       // required
	DataKey seal.Sealer // required: opens the kubeconfig and credentials; a *seal.Keyring follows rotations
	// Interval is how often status is read from Kubernetes (default
	// DefaultInterval); retries back off from Interval/20 to 3×Interval.
	Interval time.Duration
	// NewExecutor builds the Kubernetes client for a kubeconfig; default
	// kube.New with the reconciler's logger.
	NewExecutor func(kubeconfig []byte) (*kube.Executor, error)
	// AfterApply is a test hook: when set, it runs after an instance's
	// objects were applied and before its status is written.
	AfterApply func(ctx context.Context, osid string)
}

// Reconciler applies the desired services and apps to Kubernetes and
// writes what it observes back to the state. It is a leader task: Run runs
// while this node leads (one Run at a time), and what it remembers is
// cleared when Run returns, so the next leadership applies everything once
// (server-side apply makes that a no-op where an earlier one already did).
//
// Lock rules: cfg and log are set by NewReconciler. The fields from exec
// to lastPoll belong to Run alone (Close runs after Run has returned), so
// they need no lock. lastErr is also read by Ops.Kube, hence mu.
type Reconciler struct {
	cfg ReconcilerConfig
	log *slog.Logger

	// exec is the client for the current kube target; execGen is the
	// target generation it was built for. They outlive a leadership.
	exec    *kube.Executor
	execGen int64
	// applied maps an OSID to the desired generation this leadership
	// applied.
	applied map[string]int64
	// retryAt holds when a failed instance may be retried, and the backoff.
	retryAt map[string]time.Time
	backoff map[string]time.Duration
	// lastPoll is when status was last read from the API.
	lastPoll time.Time

	mu      sync.Mutex
	lastErr string // guarded by mu; the last "API unreachable" reason, "" when fine
	closed  bool   // guarded by mu
}

// NewReconciler returns a reconciler; Run it as a leader task.
func NewReconciler(cfg ReconcilerConfig, log *slog.Logger) (*Reconciler, error) {
	if cfg.Store == nil {
		return nil, errors.New("workload: Store is required")
	}
	if cfg.DataKey == nil || cfg.DataKey.Current().IsZero() {
		return nil, errors.New("workload: DataKey is required")
	}
	if log == nil {
		return nil, errors.New("workload: logger is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.NewExecutor == nil {
		klog := log.With("component", "kube")
		cfg.NewExecutor = func(kc []byte) (*kube.Executor, error) { return kube.New(kube.Config{Kubeconfig: kc}, klog) }
	}
	return &Reconciler{
		cfg: cfg, log: log,
		applied: map[string]int64{}, retryAt: map[string]time.Time{}, backoff: map[string]time.Duration{},
	}, nil
}

// Run reconciles until ctx ends (leadership is lost). It never checks
// leadership itself.
func (w *Reconciler) Run(ctx context.Context) error {
	// What this leadership applied is its own: the next one applies
	// everything once (server-side apply makes that a no-op where this
	// one already did).
	defer func() {
		clear(w.applied)
		clear(w.retryAt)
		clear(w.backoff)
		w.setLastErr("")
	}()
	tick := time.NewTicker(w.cfg.Interval / 4)
	defer tick.Stop()
	for {
		changed := w.cfg.Store.Changed()
		w.reconcile(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
	}
}

// Close releases the Kubernetes client. Call it after Run has returned
// (the leader loop closed); it is idempotent.
func (w *Reconciler) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if w.exec != nil {
		w.exec.Close()
	}
	return nil
}

// LastError is why the Kubernetes API could not be reached in the current
// leadership, "" when it answered (or this node does not lead).
func (w *Reconciler) LastError() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

func (w *Reconciler) setLastErr(s string) {
	w.mu.Lock()
	w.lastErr = s
	w.mu.Unlock()
}

// executor returns the client for the current target, rebuilding it when
// the target changed.
func (w *Reconciler) executor(k *raftstore.KubeTarget) (*kube.Executor, error) {
	if w.exec != nil && w.execGen == k.Generation {
		return w.exec, nil
	}
	kc, err := w.cfg.DataKey.Open(raftstore.KubeconfigPurpose, k.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	// SetKube refuses unsafe kubeconfigs; one stored by another path (an
	// older version, a direct Raft write) must still never reach the client,
	// whatever NewExecutor is.
	if err := kube.Validate(kc); err != nil {
		return nil, err
	}
	e, err := w.cfg.NewExecutor(kc)
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
	// render returns the objects and the name of the Service clients
	// use ("" : pick one, see primaryService).
	render func() ([]kapi.Object, string, error)
}

func (w *Reconciler) items(wl raftstore.Workloads) []item {
	var out []item
	for _, r := range sortedServices(wl.Services) {
		out = append(out, item{osid: r.OSID, desired: r.Desired, gen: r.Generation, cur: r.Status, render: func() ([]kapi.Object, string, error) {
			inst, err := OpenInstance(w.cfg.DataKey, r)
			if err != nil {
				return nil, "", err
			}
			objs, err := templates.Render(inst)
			if err != nil {
				return nil, "", err
			}
			svc := ""
			if c, err := templates.Connect(inst); err == nil {
				svc, _, _ = strings.Cut(c.Host, ".")
			}
			return objs, svc, nil
		}})
	}
	for _, r := range sortedApps(wl.Apps) {
		out = append(out, item{isApp: true, osid: r.OSID, desired: r.Desired, gen: r.Generation, cur: r.Status, render: func() ([]kapi.Object, string, error) {
			app, err := BuildApp(w.cfg.DataKey, r.OSID, r.Name, r.Image, r.Port, r.Env, r.Uses, wl.Services)
			if err != nil {
				return nil, "", err
			}
			objs, err := templates.RenderApp(app)
			return objs, r.Name, err
		}})
	}
	return out
}

// reconcile applies what is not applied yet and deletes what is deleted;
// every interval it also reads the status of everything applied. New work
// that arrives during that (slow) read goes first, so a deploy never waits
// for a status sweep.
func (w *Reconciler) reconcile(ctx context.Context) {
	changed := w.cfg.Store.Changed()
	st, _ := w.cfg.Store.State()
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
	if time.Since(w.lastPoll) < w.cfg.Interval {
		return
	}
	w.lastPoll = time.Now()
	for _, it := range w.items(wl) {
		if ctx.Err() != nil {
			return
		}
		select {
		case <-changed:
			changed = w.cfg.Store.Changed()
			st, _ = w.cfg.Store.State()
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
func (w *Reconciler) reconcileOne(ctx context.Context, exec *kube.Executor, down *error, poll bool, it item) {
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
			w.retryAt[osid] = now.Add(w.cfg.Interval / 10)
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
			w.writeStatus(ctx, osid, cur, raftstore.Observed{Phase: raftstore.PhasePending, Reason: (*down).Error(), Generation: gen, Addrs: cur.Addrs})
		} else {
			w.writeStatus(ctx, osid, cur, lastKnown(cur, *down))
		}
		return
	}
	objs, svc, err := it.render()
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
		if f := w.cfg.AfterApply; f != nil {
			f(ctx, osid)
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
	// The addresses go into the state so every node's resolver answers
	// OSID.<zone> from it, with the API or the leader gone; on a failed
	// read the last known ones stay.
	obs.Addrs = cur.Addrs
	if name := primaryService(objs, svc); name != "" {
		if addrs, err := exec.ServiceAddrs(ctx, osid, name); err == nil {
			obs.Addrs = addrs
		} else {
			w.log.Debug("service addresses", "osid", osid, "err", err)
		}
	}
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

// primaryService is the Service clients of the workload use: preferred if
// it is among objs, else the first one with a ClusterIP, else the first
// (headless) one; "" when there is none.
func primaryService(objs []kapi.Object, preferred string) string {
	first, firstIP := "", ""
	for _, o := range objs {
		if o.Kind() != "Service" {
			continue
		}
		if o.Name() == preferred && preferred != "" {
			return preferred
		}
		if first == "" {
			first = o.Name()
		}
		if ip, _ := o.String("spec", "clusterIP"); ip != "None" && firstIP == "" {
			firstIP = o.Name()
		}
	}
	if firstIP != "" {
		return firstIP
	}
	return first
}

// lastKnown is an applied item's status while the API cannot be asked.
func lastKnown(cur raftstore.Observed, err error) raftstore.Observed {
	o := cur
	o.Conditions = slices.Clone(cur.Conditions)
	o.Reason = "status not current: " + err.Error()
	return o
}

// purge removes the record of a deleted item whose namespace is gone.
func (w *Reconciler) purge(ctx context.Context, it item) {
	op := raftstore.OpWorkloadServicePurge
	if it.isApp {
		op = raftstore.OpWorkloadAppPurge
	}
	if err := w.propose(ctx, op, &raftstore.WorkloadCmd{OSID: it.osid}); err != nil && ctx.Err() == nil {
		w.log.Warn("purge", "osid", it.osid, "err", err)
	}
	delete(w.applied, it.osid)
}

// statusObjects keeps the objects whose existence and readiness the status
// reflects: the namespace and the workloads.
func statusObjects(objs []kapi.Object) []kapi.Object {
	var out []kapi.Object
	for _, o := range objs {
		switch o.Kind() {
		case "Namespace", "StatefulSet", "Deployment", "DaemonSet":
			out = append(out, o)
		}
	}
	return out
}

// failed records a failure and schedules the retry with backoff.
func (w *Reconciler) failed(ctx context.Context, down *error, osid string, gen int64, cur raftstore.Observed, phase string, err error) {
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
	b = min(max(2*b, w.cfg.Interval/20), 3*w.cfg.Interval)
	w.backoff[osid] = b
	w.retryAt[osid] = time.Now().Add(b)
	w.log.Debug("workload not applied", "osid", osid, "err", err, "retry_in", b)
	obs := raftstore.Observed{Phase: phase, Reason: err.Error(), Generation: gen, Ready: cur.Ready, Total: cur.Total}
	if phase != raftstore.PhaseDeleting {
		obs.Addrs = cur.Addrs // what ran keeps its name while this is retried
	}
	w.writeStatus(ctx, osid, cur, obs)
}

// succeeded notes that the API answered for osid.
func (w *Reconciler) succeeded(osid string) {
	w.setLastErr("")
	delete(w.retryAt, osid)
	delete(w.backoff, osid)
}

// writeStatus proposes obs unless it is what the state holds already.
func (w *Reconciler) writeStatus(ctx context.Context, osid string, cur, obs raftstore.Observed) {
	if cur.Same(obs) {
		return
	}
	if err := w.propose(ctx, raftstore.OpWorkloadStatus, &raftstore.WorkloadCmd{OSID: osid, Status: &obs}); err != nil && ctx.Err() == nil {
		w.log.Warn("status write", "osid", osid, "err", err)
	}
}

// propose commits a reconciler write.
func (w *Reconciler) propose(ctx context.Context, op string, c *raftstore.WorkloadCmd) error {
	return apply(ctx, w.cfg.Store, statusTimeout, &raftstore.Command{Op: op, Workload: c})
}

package raftstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// Services, apps and the Kubernetes target (issue 6).
//
// The state holds what the user asked for (desired) and what the leader's
// reconciler last saw (observed). Validation that needs the catalog (is the
// service known, are the --set keys valid) happens in the proposer, so Apply
// stays deterministic and independent of the agent's version of the catalog.

// Workload ops.
const (
	OpWorkloadKubeSet       = "workload_kube_set"
	OpWorkloadServiceCreate = "workload_service_create"
	OpWorkloadServiceDelete = "workload_service_delete"
	OpWorkloadServicePurge  = "workload_service_purge" // after its namespace is gone
	OpWorkloadStatus        = "workload_status"
	OpWorkloadAppCreate     = "workload_app_create"
	OpWorkloadAppDelete     = "workload_app_delete"
	OpWorkloadAppPurge      = "workload_app_purge"
)

// Desired states.
const (
	DesiredPresent = "present"
	DesiredDeleted = "deleted"
)

// Observed phases.
const (
	PhasePending  = "pending"  // accepted, not applied yet (see Reason)
	PhaseApplying = "applying" // objects applied, replicas not all ready
	PhaseReady    = "ready"    // every object exists, every replica ready
	PhaseFailed   = "failed"   // cannot be applied as asked (see Reason)
	PhaseDeleting = "deleting" // namespace being deleted
)

// Event kinds of workloads.
const (
	// EventWorkloadStatus records each phase change of a service or app
	// (created: pending; its namespace gone: deleted). Detail: "<osid> <phase>".
	EventWorkloadStatus = "workload_status"
)

// Errors of workload ops.
var (
	ErrNoSuchWorkload = errors.New("no such service or app")
	ErrWorkloadExists = errors.New("osid already exists")
	ErrWorkloadInUse  = errors.New("service is used by an app")
	ErrAppNameTaken   = errors.New("app name is already taken")
)

// Workloads is the desired (and last observed) state of what runs on
// Kubernetes.
type Workloads struct {
	// Kube is the target cluster; nil until `kube set`.
	Kube *KubeTarget `json:"kube,omitempty"`
	// Services are instances of catalog services, by OSID.
	Services map[string]*ServiceRecord `json:"services,omitempty"`
	// Apps are users' containers, by OSID.
	Apps map[string]*AppRecord `json:"apps,omitempty"`
}

// KubeTarget is the Kubernetes cluster services are applied to.
type KubeTarget struct {
	// Kubeconfig is sealed with the cluster data key (purpose
	// KubeconfigPurpose), so the log and snapshots hold no credential.
	Kubeconfig string `json:"kubeconfig"`
	// Server is the API server URL, for display.
	Server string    `json:"server"`
	SetAt  time.Time `json:"set_at"`
	// Generation counts kube_set and kube_enable commands; reconcilers
	// rebuild their client when it changes.
	Generation int64 `json:"generation"`
	// Managed: the target is the cluster's own Kubernetes, set by
	// kube_enable and dropped by kube_disable (kube.go); kube_set never
	// sets it.
	Managed bool `json:"managed,omitempty"`
}

// KubeconfigPurpose is the seal purpose of KubeTarget.Kubeconfig.
const KubeconfigPurpose = "kube/kubeconfig"

// CredentialsPurpose is the seal purpose of a service's credentials.
func CredentialsPurpose(osid string) string { return "service/" + osid + "/credentials" }

// Observed is what the reconciler last saw of a workload.
type Observed struct {
	Phase      string    `json:"phase"`
	Reason     string    `json:"reason,omitempty"`
	Ready      int       `json:"ready"`
	Total      int       `json:"total"`
	Conditions []string  `json:"conditions,omitempty"`
	Generation int64     `json:"generation"` // desired generation it reflects
	UpdatedAt  time.Time `json:"updated_at"`
	// Addrs are where clients reach the workload: its Service's ClusterIP,
	// or the ready pod IPs of a headless one; sorted. The nodes' resolvers
	// answer OSID.<zone> with them.
	Addrs []netip.Addr `json:"addrs,omitempty"`
}

// Same reports whether two observations differ at most in their time (so
// writing one over the other changes nothing a user sees).
func (o Observed) Same(p Observed) bool {
	return o.Phase == p.Phase && o.Reason == p.Reason && o.Ready == p.Ready && o.Total == p.Total &&
		o.Generation == p.Generation && slices.Equal(o.Conditions, p.Conditions) && slices.Equal(o.Addrs, p.Addrs)
}

func (o Observed) clone() Observed {
	o.Conditions = slices.Clone(o.Conditions)
	o.Addrs = slices.Clone(o.Addrs)
	return o
}

// ServiceRecord is one instance of a catalog service.
type ServiceRecord struct {
	OSID    string            `json:"osid"`
	Service string            `json:"service"`
	Tier    string            `json:"tier"`
	Set     map[string]string `json:"set,omitempty"`
	// Credentials is the JSON of the credentials map, sealed with the data
	// key (purpose CredentialsPurpose(OSID)).
	Credentials string    `json:"credentials"`
	Desired     string    `json:"desired"`
	Generation  int64     `json:"generation"` // bumped by every desired change
	CreatedAt   time.Time `json:"created_at"`
	Status      Observed  `json:"status"`
}

func (r *ServiceRecord) clone() *ServiceRecord {
	c := *r
	c.Set = maps.Clone(r.Set)
	c.Status = r.Status.clone()
	return &c
}

// AppRecord is a user's container with the instances it uses.
type AppRecord struct {
	OSID       string            `json:"osid"`
	Name       string            `json:"name"`
	Image      string            `json:"image"`
	Port       int               `json:"port,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Uses       []string          `json:"uses,omitempty"` // service OSIDs
	Desired    string            `json:"desired"`
	Generation int64             `json:"generation"`
	CreatedAt  time.Time         `json:"created_at"`
	Status     Observed          `json:"status"`
}

func (r *AppRecord) clone() *AppRecord {
	c := *r
	c.Env = maps.Clone(r.Env)
	c.Uses = slices.Clone(r.Uses)
	c.Status = r.Status.clone()
	return &c
}

func (w Workloads) clone() Workloads {
	var c Workloads
	if w.Kube != nil {
		k := *w.Kube
		c.Kube = &k
	}
	if w.Services != nil {
		c.Services = make(map[string]*ServiceRecord, len(w.Services))
		for id, r := range w.Services {
			c.Services[id] = r.clone()
		}
	}
	if w.Apps != nil {
		c.Apps = make(map[string]*AppRecord, len(w.Apps))
		for id, r := range w.Apps {
			c.Apps[id] = r.clone()
		}
	}
	return c
}

// WorkloadCmd is the payload of workload_* ops; each op uses its part.
type WorkloadCmd struct {
	// workload_kube_set
	Kube *KubeTarget `json:"kube,omitempty"`
	// workload_service_create
	Service *ServiceRecord `json:"service,omitempty"`
	// workload_app_create
	App *AppRecord `json:"app,omitempty"`
	// workload_service_delete/purge, workload_app_delete/purge,
	// workload_status
	OSID string `json:"osid,omitempty"`
	// workload_status: the observation, and the generation it was made
	// for (Status.Generation); a stale one (the user deleted meanwhile)
	// is ignored.
	Status *Observed `json:"status,omitempty"`
}

// WorkloadResult is Result.Data of workload ops.
type WorkloadResult struct {
	// Changed is false when a status write matched what was stored (or
	// was stale), so nothing changed.
	Changed bool `json:"changed"`
}

func (s *State) applyWorkload(cmd *Command, res *Result) error {
	c := cmd.Workload
	if c == nil {
		return ErrMalformedCmd
	}
	w := &s.Workloads
	changed := true
	var err error // set by cases that share a helper with the other kind
	switch cmd.Op {
	case OpWorkloadKubeSet:
		if c.Kube == nil || c.Kube.Kubeconfig == "" {
			return ErrMalformedCmd
		}
		k := *c.Kube
		k.SetAt, k.Managed = cmd.Time, false
		k.Generation = 1
		if w.Kube != nil {
			k.Generation = w.Kube.Generation + 1
		}
		w.Kube = &k

	case OpWorkloadServiceCreate:
		r := c.Service
		if r == nil || r.OSID == "" || r.Service == "" || r.Tier == "" || r.Credentials == "" {
			return ErrMalformedCmd
		}
		if w.Exists(r.OSID) {
			return fmt.Errorf("%s: %w", r.OSID, ErrWorkloadExists)
		}
		n := r.clone()
		n.Desired, n.Generation, n.CreatedAt = DesiredPresent, 1, cmd.Time
		n.Status = NewServiceStatus(cmd.Time, w.Kube != nil)
		if w.Services == nil {
			w.Services = map[string]*ServiceRecord{}
		}
		w.Services[n.OSID] = n
		s.record(res.Index, cmd.Time, Event{Kind: EventWorkloadStatus, Detail: n.OSID + " " + PhasePending})

	case OpWorkloadServiceDelete:
		r, ok := w.Services[c.OSID]
		if !ok {
			return fmt.Errorf("%s: %w", c.OSID, ErrNoSuchWorkload)
		}
		if users := w.usersOf(c.OSID); len(users) > 0 {
			return fmt.Errorf("%s: app %s uses it, delete that first: %w", c.OSID, users[0], ErrWorkloadInUse)
		}
		changed = s.markDeleted(cmd, res, c.OSID, &r.Desired, &r.Generation, &r.Status)

	case OpWorkloadServicePurge:
		changed, err = purgeRecord(s, cmd, res, w.Services, func(r *ServiceRecord) string { return r.Desired })

	case OpWorkloadAppCreate:
		r := c.App
		if r == nil || r.OSID == "" || r.Name == "" || r.Image == "" {
			return ErrMalformedCmd
		}
		if w.Exists(r.OSID) {
			return fmt.Errorf("%s: %w", r.OSID, ErrWorkloadExists)
		}
		for _, a := range w.Apps {
			if a.Name == r.Name && a.Desired == DesiredPresent {
				return fmt.Errorf("app %s (%s): %w", r.Name, a.OSID, ErrAppNameTaken)
			}
		}
		for _, u := range r.Uses {
			svc, ok := w.Services[u]
			if !ok || svc.Desired != DesiredPresent {
				return fmt.Errorf("--use %s: %w", u, ErrNoSuchWorkload)
			}
		}
		n := r.clone()
		n.Desired, n.Generation, n.CreatedAt = DesiredPresent, 1, cmd.Time
		n.Status = NewAppStatus(cmd.Time)
		if w.Apps == nil {
			w.Apps = map[string]*AppRecord{}
		}
		w.Apps[n.OSID] = n
		s.record(res.Index, cmd.Time, Event{Kind: EventWorkloadStatus, Detail: n.OSID + " " + PhasePending})

	case OpWorkloadAppDelete:
		r, ok := w.Apps[c.OSID]
		if !ok {
			return fmt.Errorf("%s: %w", c.OSID, ErrNoSuchWorkload)
		}
		changed = s.markDeleted(cmd, res, c.OSID, &r.Desired, &r.Generation, &r.Status)

	case OpWorkloadAppPurge:
		changed, err = purgeRecord(s, cmd, res, w.Apps, func(r *AppRecord) string { return r.Desired })

	case OpWorkloadStatus:
		if c.Status == nil || c.OSID == "" {
			return ErrMalformedCmd
		}
		var cur *Observed
		var gen int64
		if r, ok := w.Services[c.OSID]; ok {
			cur, gen = &r.Status, r.Generation
		} else if a, ok := w.Apps[c.OSID]; ok {
			cur, gen = &a.Status, a.Generation
		} else {
			// Purged meanwhile: nothing to record.
			changed = false
			break
		}
		// Stale (made for an older desired generation, e.g. a leader
		// that had not seen the delete) or identical: nothing changes,
		// so a write repeated by a new leader is harmless.
		if c.Status.Generation != gen || cur.Same(*c.Status) {
			changed = false
			break
		}
		was := cur.Phase
		*cur = c.Status.clone()
		cur.UpdatedAt = cmd.Time
		if was != cur.Phase {
			s.record(res.Index, cmd.Time, Event{Kind: EventWorkloadStatus, Detail: c.OSID + " " + cur.Phase})
		}

	default:
		return ErrUnknownOp
	}
	if err != nil {
		return err
	}
	b, _ := json.Marshal(WorkloadResult{Changed: changed})
	res.Data = b
	return nil
}

// NewServiceStatus is the status of a service just created; the agent
// shows it to the user before the command's result is read back, so it
// must match what Apply stores.
func NewServiceStatus(at time.Time, kubeSet bool) Observed {
	o := NewAppStatus(at)
	if !kubeSet {
		o.Reason = "no Kubernetes cluster set (runos-agent kube set --kubeconfig FILE)"
	}
	return o
}

// NewAppStatus is the status of an app just created (see NewServiceStatus).
func NewAppStatus(at time.Time) Observed {
	return Observed{Phase: PhasePending, Reason: "waiting for the reconciler", UpdatedAt: at}
}

// markDeleted turns a workload's desired state to deleted, bumping its
// generation so the reconciler's status writes for the old generation are
// ignored. It keeps the replica counts and the observed generation (the
// objects are still there until the namespace goes). It returns false when
// the workload was already being deleted.
func (s *State) markDeleted(cmd *Command, res *Result, osid string, desired *string, gen *int64, st *Observed) bool {
	if *desired == DesiredDeleted {
		return false
	}
	*desired = DesiredDeleted
	*gen++
	*st = Observed{Phase: PhaseDeleting, Ready: st.Ready, Total: st.Total, Generation: st.Generation, UpdatedAt: cmd.Time}
	s.record(res.Index, cmd.Time, Event{Kind: EventWorkloadStatus, Detail: osid + " " + PhaseDeleting})
	return true
}

// purgeRecord removes the record cmd.Workload.OSID from m once its
// namespace is gone. Purging one that is not there is a no-op (a new
// leader may purge again); purging one not being deleted is refused.
func purgeRecord[R any](s *State, cmd *Command, res *Result, m map[string]R, desired func(R) string) (changed bool, err error) {
	osid := cmd.Workload.OSID
	r, ok := m[osid]
	if !ok {
		return false, nil
	}
	if desired(r) != DesiredDeleted {
		return false, fmt.Errorf("%s is not being deleted: %w", osid, ErrMalformedCmd)
	}
	delete(m, osid)
	s.record(res.Index, cmd.Time, Event{Kind: EventWorkloadStatus, Detail: osid + " deleted"})
	return true, nil
}

// Exists reports whether any service or app holds osid (the two share one
// namespace on Kubernetes, so one OSID names at most one of them).
func (w *Workloads) Exists(osid string) bool {
	_, s := w.Services[osid]
	_, a := w.Apps[osid]
	return s || a
}

// usersOf lists the names of present apps that use service osid, sorted.
func (w *Workloads) usersOf(osid string) []string {
	var out []string
	for _, a := range w.Apps {
		if a.Desired == DesiredPresent && slices.Contains(a.Uses, osid) {
			out = append(out, a.Name)
		}
	}
	slices.Sort(out)
	return out
}

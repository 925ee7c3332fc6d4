package workload

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
	"github.com/runos/runos-agent/templates"
)

// userTimeout bounds the commit of a user's request.
const userTimeout = 15 * time.Second

// OpsConfig configures Ops.
type OpsConfig struct {
	Store   Store       // required
	DataKey seal.Sealer // required: seals credentials and the kubeconfig; a *seal.Keyring follows rotations
	// Reconciler, when set, is asked for the Kubernetes API's last error
	// (Kube reports it).
	Reconciler *Reconciler
}

// Ops are the operations the local API offers on services, apps and the
// Kubernetes target. Writes commit to the Store and return once committed;
// the reconciler does the rest. Reads are served from the local state.
type Ops struct {
	cfg OpsConfig
}

// NewOps returns the operations over cfg.Store.
func NewOps(cfg OpsConfig) (*Ops, error) {
	if cfg.Store == nil {
		return nil, errors.New("workload: Store is required")
	}
	if cfg.DataKey == nil || cfg.DataKey.Current().IsZero() {
		return nil, errors.New("workload: DataKey is required")
	}
	return &Ops{cfg: cfg}, nil
}

// propose commits a user's request. On success cmd.Time is the time Apply
// saw, so the caller can show the record as stored.
func (o *Ops) propose(ctx context.Context, cmd *raftstore.Command) error {
	return apply(ctx, o.cfg.Store, userTimeout, cmd)
}

// Kube reports the Kubernetes target.
func (o *Ops) Kube() *api.Kube {
	st, _ := o.cfg.Store.State()
	k := st.Workloads.Kube
	if k == nil {
		return &api.Kube{}
	}
	out := &api.Kube{Configured: true, Server: k.Server, SetAt: k.SetAt}
	if o.cfg.Reconciler != nil {
		out.Error = o.cfg.Reconciler.LastError()
	}
	return out
}

// SetKube validates a kubeconfig, seals it and commits it.
func (o *Ops) SetKube(ctx context.Context, kubeconfig []byte) (*api.Kube, error) {
	kc, err := kube.Load(kubeconfig)
	if err != nil {
		return nil, invalid(err)
	}
	sealed, err := o.cfg.DataKey.Seal(raftstore.KubeconfigPurpose, kubeconfig)
	if err != nil {
		return nil, err
	}
	if err := o.propose(ctx, &raftstore.Command{Op: raftstore.OpWorkloadKubeSet, Workload: &raftstore.WorkloadCmd{Kube: &raftstore.KubeTarget{Kubeconfig: sealed, Server: kc.Server}}}); err != nil {
		return nil, err
	}
	return &api.Kube{Configured: true, Server: kc.Server, SetAt: time.Now().UTC()}, nil
}

// DeployService validates the request, generates the OSID and credentials
// and commits the instance. The reconciler applies it.
func (o *Ops) DeployService(ctx context.Context, req api.ServiceRequest) (*api.Service, error) {
	st, _ := o.cfg.Store.State()
	rec, err := NewServiceRecord(o.cfg.DataKey, rand.Reader, func(service string) (string, error) {
		return newOSID(rand.Reader, st, service)
	}, req)
	if err != nil {
		return nil, err
	}
	cmd := &raftstore.Command{Op: raftstore.OpWorkloadServiceCreate, Workload: &raftstore.WorkloadCmd{Service: rec}}
	if err := o.propose(ctx, cmd); err != nil {
		return nil, err
	}
	rec.Desired, rec.Generation, rec.CreatedAt = raftstore.DesiredPresent, 1, cmd.Time
	rec.Status = raftstore.NewServiceStatus(cmd.Time, st.Workloads.Kube != nil)
	return ServiceView(rec, nil), nil
}

// Services lists instances, optionally of one service.
func (o *Ops) Services(service string) []api.Service {
	st, _ := o.cfg.Store.State()
	out := []api.Service{}
	for _, r := range sortedServices(st.Workloads.Services) {
		if service == "" || r.Service == service {
			out = append(out, *ServiceView(r, st.Workloads.Apps))
		}
	}
	return out
}

// ServiceInfo returns one instance with connection details; the password
// only when reveal is set.
func (o *Ops) ServiceInfo(osid string, reveal bool) (*api.Service, error) {
	st, _ := o.cfg.Store.State()
	r, ok := st.Workloads.Services[osid]
	if !ok {
		return nil, notFound(fmt.Errorf("service %s: %w", osid, raftstore.ErrNoSuchWorkload))
	}
	out := ServiceView(r, st.Workloads.Apps)
	inst, err := OpenInstance(o.cfg.DataKey, r)
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

// DeleteService marks a service instance for deletion; the reconciler
// deletes its namespace and then the record. An instance an app uses is
// refused (ErrConflict).
func (o *Ops) DeleteService(ctx context.Context, osid string) error {
	st, _ := o.cfg.Store.State()
	if _, ok := st.Workloads.Services[osid]; !ok {
		return notFound(fmt.Errorf("service %s: %w", osid, raftstore.ErrNoSuchWorkload))
	}
	return o.propose(ctx, &raftstore.Command{Op: raftstore.OpWorkloadServiceDelete, Workload: &raftstore.WorkloadCmd{OSID: osid}})
}

// DeleteApp marks an app for deletion, as DeleteService.
func (o *Ops) DeleteApp(ctx context.Context, osid string) error {
	st, _ := o.cfg.Store.State()
	if _, ok := st.Workloads.Apps[osid]; !ok {
		return notFound(fmt.Errorf("app %s: %w", osid, raftstore.ErrNoSuchWorkload))
	}
	return o.propose(ctx, &raftstore.Command{Op: raftstore.OpWorkloadAppDelete, Workload: &raftstore.WorkloadCmd{OSID: osid}})
}

// DeployApp validates an app (its --use instances must exist and provide
// something an app can use) and commits it.
func (o *Ops) DeployApp(ctx context.Context, req api.AppRequest) (*api.App, error) {
	if err := CheckApp(req); err != nil {
		return nil, err
	}
	st, _ := o.cfg.Store.State()
	// Apply refuses a second present app of one name too (ErrAppNameTaken,
	// also ErrConflict); checking here first saves a Raft round trip.
	for _, a := range st.Workloads.Apps {
		if a.Name == req.Name && a.Desired == raftstore.DesiredPresent {
			return nil, conflict(fmt.Errorf("app %s (%s): already exists", req.Name, a.OSID))
		}
	}
	osid, err := newOSID(rand.Reader, st, req.Name)
	if err != nil {
		return nil, err
	}
	rec, objs, err := NewAppRecord(o.cfg.DataKey, osid, req, st.Workloads.Services)
	if err != nil {
		return nil, err
	}
	cmd := &raftstore.Command{Op: raftstore.OpWorkloadAppCreate, Workload: &raftstore.WorkloadCmd{App: rec}}
	if err := o.propose(ctx, cmd); err != nil {
		return nil, err
	}
	rec.Desired, rec.Generation, rec.CreatedAt = raftstore.DesiredPresent, 1, cmd.Time
	rec.Status = raftstore.NewAppStatus(cmd.Time)
	v := AppView(rec)
	v.InjectedEnv = injectedEnv(objs, req.Env)
	return v, nil
}

// Apps lists apps.
func (o *Ops) Apps() []api.App {
	st, _ := o.cfg.Store.State()
	out := []api.App{}
	for _, r := range sortedApps(st.Workloads.Apps) {
		out = append(out, *AppView(r))
	}
	return out
}

// AppInfo returns one app with the variables it receives.
func (o *Ops) AppInfo(osid string) (*api.App, error) {
	st, _ := o.cfg.Store.State()
	r, ok := st.Workloads.Apps[osid]
	if !ok {
		return nil, notFound(fmt.Errorf("app %s: %w", osid, raftstore.ErrNoSuchWorkload))
	}
	v := AppView(r)
	if app, err := BuildApp(o.cfg.DataKey, r.OSID, r.Name, r.Image, r.Port, r.Env, r.Uses, st.Workloads.Services); err == nil {
		if objs, err := templates.RenderApp(app); err == nil {
			v.InjectedEnv = injectedEnv(objs, r.Env)
		}
	}
	return v, nil
}

package agent

import (
	"context"
	"log/slog"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/templates"
	"github.com/runos/runos-agent/workload"
)

// Services and apps on Kubernetes live in package workload; the agent
// builds its operations and reconciler, runs the reconciler as a leader
// task, and hands the operations to the local API (package httpapi).

// newWorkloads builds the workload operations and reconciler over the store.
// The reconciler's Close is registered here; it runs after the leader loop
// (registered later, closed earlier) has stopped the reconciler.
func (a *Agent) newWorkloads(log *slog.Logger) error {
	newExec := a.kubeExec
	if newExec == nil {
		newExec = func(kubeconfig []byte) (*kube.Executor, error) {
			return kube.New(kube.Config{Kubeconfig: kubeconfig}, log.With("component", "kube"))
		}
	}
	rec, err := workload.NewReconciler(workload.ReconcilerConfig{
		Store:       a.store,
		DataKey:     a.keys,
		Interval:    a.tuning.WorkloadInterval,
		NewExecutor: newExec,
		AfterApply:  a.afterApply,
	}, log)
	if err != nil {
		return err
	}
	ops, err := workload.NewOps(workload.OpsConfig{Store: a.store, DataKey: a.keys, Reconciler: rec})
	if err != nil {
		return err
	}
	a.reconciler, a.workloads = rec, ops
	a.closers = append(a.closers, rec.Close)
	return nil
}

// Kube reports the Kubernetes target.
func (a *Agent) Kube() *api.Kube { return a.workloads.Kube() }

// SetKube validates a kubeconfig, seals it and commits it.
func (a *Agent) SetKube(ctx context.Context, kubeconfig []byte) (*api.Kube, error) {
	return a.workloads.SetKube(ctx, kubeconfig)
}

// Catalog lists the deployable services (the cloud console serves the
// same list).
func Catalog() []api.CatalogService { return templates.APICatalog() }

// DeployService commits a service instance; the reconciler applies it.
func (a *Agent) DeployService(ctx context.Context, req api.ServiceRequest) (*api.Service, error) {
	return a.workloads.DeployService(ctx, req)
}

// Services lists instances, optionally of one service.
func (a *Agent) Services(service string) []api.Service { return a.workloads.Services(service) }

// ServiceInfo returns one instance with connection details; the password
// only when reveal is set.
func (a *Agent) ServiceInfo(osid string, reveal bool) (*api.Service, error) {
	return a.workloads.ServiceInfo(osid, reveal)
}

// DeleteWorkload marks a service (or, with app, an app) for deletion.
func (a *Agent) DeleteWorkload(ctx context.Context, osid string, app bool) error {
	if app {
		return a.workloads.DeleteApp(ctx, osid)
	}
	return a.workloads.DeleteService(ctx, osid)
}

// DeployApp commits an app; the reconciler applies it.
func (a *Agent) DeployApp(ctx context.Context, req api.AppRequest) (*api.App, error) {
	return a.workloads.DeployApp(ctx, req)
}

// Apps lists apps.
func (a *Agent) Apps() []api.App { return a.workloads.Apps() }

// AppInfo returns one app with the variables it receives.
func (a *Agent) AppInfo(osid string) (*api.App, error) { return a.workloads.AppInfo(osid) }

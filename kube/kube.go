// Package kube applies rendered objects to a Kubernetes cluster and reads
// back what became of them. It decides nothing about what to deploy: the
// agent hands it objects (from templates) and a kubeconfig.
//
// Everything goes through server-side apply with one field manager, forcing
// conflicts, so applying the same objects again (another leader finishing a
// deploy) changes nothing and creates nothing twice.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// FieldManager is the one field manager every apply uses.
const FieldManager = "runos-agent"

// ErrUnreachable wraps errors that mean the API server could not be
// reached at all (as opposed to it refusing a request).
var ErrUnreachable = errors.New("kubernetes API unreachable")

// Config configures an Executor.
type Config struct {
	// Kubeconfig is the content of a kubeconfig file (its current context
	// is used). Required.
	Kubeconfig []byte
	// RequestTimeout bounds each API request (default 10 s).
	RequestTimeout time.Duration
}

// Executor talks to one cluster. It is safe for concurrent use.
type Executor struct {
	log    *slog.Logger
	host   string
	dyn    *dynamic.DynamicClient
	hc     *http.Client
	mapper *mapper
	http   interface{ CloseIdleConnections() }
}

// New parses the kubeconfig and builds the clients. It does not contact
// the cluster.
func New(cfg Config, log *slog.Logger) (*Executor, error) {
	if len(cfg.Kubeconfig) == 0 {
		return nil, errors.New("kube: Kubeconfig is required")
	}
	if log == nil {
		return nil, errors.New("kube: logger is required")
	}
	rc, err := RESTConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.Timeout = cfg.RequestTimeout
	if rc.Timeout == 0 {
		rc.Timeout = 10 * time.Second
	}
	// The agent is a controller of its own objects; client-go's default
	// 5 qps would make a 20-object deploy take seconds.
	rc.QPS, rc.Burst = 100, 200
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	dyn, err := dynamic.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	// A kubeconfig may name the server as host:port; client-go adds the
	// scheme itself, but Ping and the mapper build URLs from the host.
	base, _, err := rest.DefaultServerUrlFor(rc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: server: %w", err)
	}
	host := strings.TrimSuffix(base.String(), "/")
	e := &Executor{log: log, host: host, dyn: dyn, hc: hc, mapper: newMapper(hc, host)}
	if t, ok := hc.Transport.(interface{ CloseIdleConnections() }); ok {
		e.http = t
	}
	return e, nil
}

// RESTConfig parses a kubeconfig, with a clear error for bad input. It
// refuses unsafe kubeconfigs (Validate).
func RESTConfig(kubeconfig []byte) (*rest.Config, error) {
	if err := Validate(kubeconfig); err != nil {
		return nil, err
	}
	cc, err := clientcmd.NewClientConfigFromBytes(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("invalid kubeconfig: %w", err)
	}
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("invalid kubeconfig: %w", err)
	}
	return rc, nil
}

// Host is the API server URL from the kubeconfig.
func (e *Executor) Host() string { return e.host }

// Close drops idle connections. The Executor must not be used afterwards.
func (e *Executor) Close() error {
	if e.http != nil {
		e.http.CloseIdleConnections()
	}
	return nil
}

// Ping checks that the API server answers (its version endpoint).
func (e *Executor) Ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(e.host, "/")+"/version", nil)
	if err != nil {
		return err
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return e.wrap(err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("kubernetes API at %s: /version: %s", e.host, resp.Status)
	}
	return nil
}

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// DryRun asks the server to validate and admit everything without
	// persisting it (DryRun: All).
	DryRun bool
}

// Applied is one object as the server returned it from an apply.
type Applied struct {
	Kind      string
	Namespace string
	Name      string
	UID       string
	Object    *unstructured.Unstructured
}

// Apply server-side applies objs in order (a Namespace should come first),
// forcing conflicts, and stops at the first error.
func (e *Executor) Apply(ctx context.Context, objs []*unstructured.Unstructured, opts ApplyOptions) ([]Applied, error) {
	out := make([]Applied, 0, len(objs))
	for _, obj := range objs {
		ri, err := e.resource(ctx, obj)
		if err != nil {
			return out, err
		}
		ao := metav1.ApplyOptions{FieldManager: FieldManager, Force: true}
		if opts.DryRun {
			ao.DryRun = []string{metav1.DryRunAll}
		}
		got, err := ri.Apply(ctx, obj.GetName(), obj, ao)
		if err != nil {
			return out, fmt.Errorf("apply %s %s: %w", obj.GetKind(), objName(obj), e.wrap(err))
		}
		out = append(out, Applied{Kind: got.GetKind(), Namespace: got.GetNamespace(), Name: got.GetName(), UID: string(got.GetUID()), Object: got})
	}
	return out, nil
}

// Get reads the live version of obj (nil, nil when it does not exist).
func (e *Executor) Get(ctx context.Context, obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	ri, err := e.resource(ctx, obj)
	if err != nil {
		return nil, err
	}
	got, err := ri.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get %s %s: %w", obj.GetKind(), objName(obj), e.wrap(err))
	}
	return got, nil
}

// Status is what the cluster reports about a set of objects.
type Status struct {
	// Ready and Total count replicas of the workloads (StatefulSets,
	// Deployments, DaemonSets) among the objects.
	Ready, Total int
	// Missing lists objects that do not exist (kind/namespace/name).
	Missing []string
	// Conditions are notable conditions of the workloads that are not
	// true ("Deployment/x Available=False: MinimumReplicasUnavailable").
	Conditions []string
}

// AllReady reports whether every object exists and every replica is ready.
func (s Status) AllReady() bool { return len(s.Missing) == 0 && s.Ready == s.Total }

// Status reads the live objects and sums up their readiness.
func (e *Executor) Status(ctx context.Context, objs []*unstructured.Unstructured) (Status, error) {
	var st Status
	for _, obj := range objs {
		live, err := e.Get(ctx, obj)
		if err != nil {
			return st, err
		}
		if live == nil {
			st.Missing = append(st.Missing, obj.GetKind()+"/"+objName(obj))
			continue
		}
		ready, total, conds := workloadStatus(live)
		st.Ready += ready
		st.Total += total
		st.Conditions = append(st.Conditions, conds...)
	}
	sort.Strings(st.Conditions)
	return st, nil
}

// workloadStatus reads replicas and conditions of a workload object; other
// kinds count nothing.
func workloadStatus(u *unstructured.Unstructured) (ready, total int, conds []string) {
	switch u.GetKind() {
	case "StatefulSet", "Deployment", "ReplicaSet":
		replicas, found, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
		if !found {
			replicas = 1
		}
		total = int(replicas)
		r, _, _ := unstructured.NestedInt64(u.Object, "status", "readyReplicas")
		ready = int(r)
	case "DaemonSet":
		d, _, _ := unstructured.NestedInt64(u.Object, "status", "desiredNumberScheduled")
		r, _, _ := unstructured.NestedInt64(u.Object, "status", "numberReady")
		total, ready = int(d), int(r)
	default:
		return 0, 0, nil
	}
	ready = min(ready, total)
	list, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range list {
		m, ok := c.(map[string]any)
		if !ok {
			continue
		}
		typ, _ := m["type"].(string)
		status, _ := m["status"].(string)
		if status == "True" && typ != "ReplicaFailure" {
			continue
		}
		s := fmt.Sprintf("%s/%s %s=%s", u.GetKind(), u.GetName(), typ, status)
		if reason, _ := m["reason"].(string); reason != "" {
			s += ": " + reason
		}
		conds = append(conds, s)
	}
	return ready, total, conds
}

// DeleteNamespace deletes a namespace (and so everything in it) and reports
// whether it is gone. A namespace being finalized reports false; call again
// until it reports true.
func (e *Executor) DeleteNamespace(ctx context.Context, name string) (gone bool, err error) {
	nsRes := e.dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"})
	// No propagation policy on purpose: foreground would add a finalizer
	// only the garbage collector removes, and the namespace controller
	// deletes the contents either way.
	err = nsRes.Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil && !apierrors.IsConflict(err) {
		return false, fmt.Errorf("delete namespace %s: %w", name, e.wrap(err))
	}
	_, err = nsRes.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get namespace %s: %w", name, e.wrap(err))
	}
	return false, nil
}

// resource maps an object to its dynamic client. Unknown kinds are looked
// up on the server each time (a CRD installed since the last look).
func (e *Executor) resource(ctx context.Context, obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	m, err := e.mapper.lookup(ctx, gvk)
	if err != nil {
		var nm *errNoMatch
		if errors.As(err, &nm) {
			return nil, fmt.Errorf("%s %s: %w", gvk.Kind, objName(obj), err)
		}
		return nil, fmt.Errorf("discover %s: %w", gvk, e.wrap(err))
	}
	if m.namespaced {
		ns := obj.GetNamespace()
		if ns == "" {
			return nil, fmt.Errorf("%s %s has no namespace", gvk.Kind, obj.GetName())
		}
		return e.dyn.Resource(m.gvr).Namespace(ns), nil
	}
	return e.dyn.Resource(m.gvr), nil
}

func objName(o *unstructured.Unstructured) string {
	if ns := o.GetNamespace(); ns != "" {
		return ns + "/" + o.GetName()
	}
	return o.GetName()
}

// wrap marks connection-level failures with ErrUnreachable and names the
// server, so "connection refused" reads as what it is.
func (e *Executor) wrap(err error) error {
	if err == nil || errors.Is(err, ErrUnreachable) {
		return err
	}
	if isUnreachable(err) {
		return fmt.Errorf("%w at %s: %s", ErrUnreachable, e.host, rootCause(err))
	}
	return err
}

func isUnreachable(err error) bool {
	if err == nil {
		return false
	}
	var opErr *net.OpError
	var urlErr *url.Error
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return true
	case errors.As(err, &opErr), errors.As(err, &dnsErr):
		return true
	case errors.As(err, &urlErr) && (urlErr.Timeout() || errors.Is(urlErr.Err, context.DeadlineExceeded)):
		return true
	case apierrors.IsServiceUnavailable(err):
		return true
	}
	// client-go turns some transport errors into plain strings.
	msg := err.Error()
	return slices.ContainsFunc([]string{"connection refused", "no route to host", "i/o timeout", "EOF", "TLS handshake timeout"},
		func(s string) bool { return strings.Contains(msg, s) })
}

func rootCause(err error) string {
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return opErr.Error()
	}
	return err.Error()
}

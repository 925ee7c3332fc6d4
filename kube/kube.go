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
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/runos/runos-agent/templates/kapi"
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
	c      *Client
	mapper *mapper
}

// New parses the kubeconfig and builds the client. It does not contact
// the cluster.
func New(cfg Config, log *slog.Logger) (*Executor, error) {
	if len(cfg.Kubeconfig) == 0 {
		return nil, errors.New("kube: Kubeconfig is required")
	}
	if log == nil {
		return nil, errors.New("kube: logger is required")
	}
	k, err := Load(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	c := NewClient(k, cfg.RequestTimeout)
	return &Executor{log: log, c: c, mapper: newMapper(c)}, nil
}

// Host is the API server URL from the kubeconfig.
func (e *Executor) Host() string { return e.c.Host() }

// Close drops idle connections. The Executor must not be used afterwards.
func (e *Executor) Close() error {
	e.c.Close()
	return nil
}

// Ping checks that the API server answers (its version endpoint).
func (e *Executor) Ping(ctx context.Context) error {
	if _, err := e.c.Do(ctx, http.MethodGet, "/version", nil, "", nil); err != nil {
		if isUnreachable(err) {
			return e.wrap(err)
		}
		return fmt.Errorf("kubernetes API at %s: /version: %w", e.Host(), err)
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
	Object    kapi.Object
}

// Apply server-side applies objs in order (a Namespace should come first),
// forcing conflicts, and stops at the first error.
func (e *Executor) Apply(ctx context.Context, objs []kapi.Object, opts ApplyOptions) ([]Applied, error) {
	out := make([]Applied, 0, len(objs))
	q := url.Values{"fieldManager": {FieldManager}, "force": {"true"}}
	if opts.DryRun {
		q.Set("dryRun", "All")
	}
	for _, obj := range objs {
		path, err := e.path(ctx, obj)
		if err != nil {
			return out, err
		}
		body, err := json.Marshal(obj)
		if err != nil {
			return out, fmt.Errorf("apply %s %s: %w", obj.Kind(), objName(obj), err)
		}
		// JSON is YAML: the apply patch type takes either.
		b, err := e.c.Do(ctx, http.MethodPatch, path, q, "application/apply-patch+yaml", body)
		if err != nil {
			return out, fmt.Errorf("apply %s %s: %w", obj.Kind(), objName(obj), e.wrap(err))
		}
		got, err := kapi.DecodeObject(b)
		if err != nil {
			return out, fmt.Errorf("apply %s %s: answer: %w", obj.Kind(), objName(obj), err)
		}
		uid, _ := got.String("metadata", "uid")
		out = append(out, Applied{Kind: got.Kind(), Namespace: got.Namespace(), Name: got.Name(), UID: uid, Object: got})
	}
	return out, nil
}

// Get reads the live version of obj (nil, nil when it does not exist).
func (e *Executor) Get(ctx context.Context, obj kapi.Object) (kapi.Object, error) {
	path, err := e.path(ctx, obj)
	if err != nil {
		return nil, err
	}
	got, err := e.c.GetObject(ctx, path, nil)
	if IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get %s %s: %w", obj.Kind(), objName(obj), e.wrap(err))
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
func (e *Executor) Status(ctx context.Context, objs []kapi.Object) (Status, error) {
	var st Status
	for _, obj := range objs {
		live, err := e.Get(ctx, obj)
		if err != nil {
			return st, err
		}
		if live == nil {
			st.Missing = append(st.Missing, obj.Kind()+"/"+objName(obj))
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
func workloadStatus(u kapi.Object) (ready, total int, conds []string) {
	switch u.Kind() {
	case "StatefulSet", "Deployment", "ReplicaSet":
		replicas, found := u.Int("spec", "replicas")
		if !found {
			replicas = 1
		}
		total = int(replicas)
		r, _ := u.Int("status", "readyReplicas")
		ready = int(r)
	case "DaemonSet":
		d, _ := u.Int("status", "desiredNumberScheduled")
		r, _ := u.Int("status", "numberReady")
		total, ready = int(d), int(r)
	default:
		return 0, 0, nil
	}
	ready = min(ready, total)
	for _, c := range u.Slice("status", "conditions") {
		m, ok := c.(map[string]any)
		if !ok {
			continue
		}
		typ, _ := m["type"].(string)
		status, _ := m["status"].(string)
		if status == "True" && typ != "ReplicaFailure" {
			continue
		}
		s := fmt.Sprintf("%s/%s %s=%s", u.Kind(), u.Name(), typ, status)
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
	path := "/api/v1/namespaces/" + url.PathEscape(name)
	// No propagation policy on purpose: foreground would add a finalizer
	// only the garbage collector removes, and the namespace controller
	// deletes the contents either way.
	_, err = e.c.Do(ctx, http.MethodDelete, path, nil, "", nil)
	if IsNotFound(err) {
		return true, nil
	}
	if err != nil && apiCode(err) != http.StatusConflict {
		return false, fmt.Errorf("delete namespace %s: %w", name, e.wrap(err))
	}
	_, err = e.c.GetObject(ctx, path, nil)
	if IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get namespace %s: %w", name, e.wrap(err))
	}
	return false, nil
}

// path is the URL path of obj. Unknown kinds are looked up on the server
// each time (a CRD installed since the last look).
func (e *Executor) path(ctx context.Context, obj kapi.Object) (string, error) {
	k, err := parseGVK(obj.APIVersion(), obj.Kind())
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", obj.Kind(), objName(obj), err)
	}
	m, err := e.mapper.lookup(ctx, k)
	if err != nil {
		var nm *errNoMatch
		if errors.As(err, &nm) {
			return "", fmt.Errorf("%s %s: %w", k.Kind, objName(obj), err)
		}
		return "", fmt.Errorf("discover %s: %w", k, e.wrap(err))
	}
	name := obj.Name()
	if name == "" {
		return "", fmt.Errorf("%s has no name", k.Kind)
	}
	p := k.groupVersionPath()
	if m.namespaced {
		ns := obj.Namespace()
		if ns == "" {
			return "", fmt.Errorf("%s %s has no namespace", k.Kind, name)
		}
		p += "/namespaces/" + url.PathEscape(ns)
	}
	return p + "/" + m.resource + "/" + url.PathEscape(name), nil
}

func objName(o kapi.Object) string {
	if ns := o.Namespace(); ns != "" {
		return ns + "/" + o.Name()
	}
	return o.Name()
}

// wrap marks connection-level failures with ErrUnreachable and names the
// server, so "connection refused" reads as what it is.
func (e *Executor) wrap(err error) error {
	if err == nil || errors.Is(err, ErrUnreachable) {
		return err
	}
	if isUnreachable(err) {
		return fmt.Errorf("%w at %s: %s", ErrUnreachable, e.Host(), rootCause(err))
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
	case apiCode(err) == http.StatusServiceUnavailable:
		return true
	}
	// Some transport errors arrive as plain strings.
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

// Package workload owns services and apps on Kubernetes end to end: the
// records a deploy commits to Raft (validated, with sealed credentials), the
// views the local API and the cloud mirror show, the operations the local
// API calls, and the leader's reconciler that applies the desired state and
// writes the observed status back.
//
// A deploy is committed to Raft first, so it is accepted with the Kubernetes
// API or the cloud down; the leader's reconciler renders each instance,
// server-side applies it, and writes the observed status back only when it
// changed. Everything the reconciler does is idempotent, so a new leader
// simply does it again. The records and commands themselves are Raft state
// and live in raftstore; catalog and rendering live in templates, the
// Kubernetes client in kube. This package imports neither the cloud link
// nor the agent: both call into it.
package workload

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/runos/runos-agent/raftstore"
)

// Store is the cluster state the workload code reads and writes:
// raftstore.Store on a node, raftstoretest.Store in tests.
type Store interface {
	// State is a copy of the state and the log index it reflects.
	State() (*raftstore.State, uint64)
	// Changed is closed at the next state change.
	Changed() <-chan struct{}
	// Apply commits a command through the leader, retrying with the same
	// ID until ctx ends.
	Apply(ctx context.Context, cmd *raftstore.Command) (*raftstore.Result, error)
}

var _ Store = (*raftstore.Store)(nil)

// Errors the local API maps to HTTP status codes. Errors are marked with
// them without changing their message; raftstore's sentinels stay
// reachable with errors.Is as well.
var (
	// ErrInvalid marks a request refused for what it asks (400).
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound marks a service or app that does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrConflict marks a request that clashes with what exists (409).
	ErrConflict = errors.New("conflict")
)

// kindErr marks an error as one of the sentinels above.
type kindErr struct {
	error
	kind error
}

func (e kindErr) Is(target error) bool { return target == e.kind }
func (e kindErr) Unwrap() error        { return e.error }

func invalid(err error) error  { return kindErr{err, ErrInvalid} }
func notFound(err error) error { return kindErr{err, ErrNotFound} }
func conflict(err error) error { return kindErr{err, ErrConflict} }

// classify marks the state machine's refusals with this package's
// sentinels.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raftstore.ErrNoSuchWorkload):
		return notFound(err)
	case errors.Is(err, raftstore.ErrWorkloadExists), errors.Is(err, raftstore.ErrWorkloadInUse),
		errors.Is(err, raftstore.ErrAppNameTaken):
		return conflict(err)
	}
	return err
}

// apply commits cmd within timeout; a command the state machine refused
// comes back as its error. On success cmd.Time is the time Apply saw.
func apply(ctx context.Context, store Store, timeout time.Duration, cmd *raftstore.Command) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := store.Apply(ctx, cmd)
	if err != nil {
		return err
	}
	return classify(res.Error())
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

// Package raftstoretest is a fake host for code that works over the cluster
// state: an in-memory stand-in for raftstore.Store that runs every command
// through the real FSM — encoded as Raft would log it, so command IDs,
// timestamps, results and deduplication by command ID behave as on a
// cluster — without Raft, disks or a network. It is always the leader.
package raftstoretest

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/runos/runos-agent/raftstore"
)

// Store is a one-node cluster state in memory. Its methods are those of
// raftstore.Store that reconcilers and operations use.
type Store struct {
	fsm *raftstore.FSM

	mu    sync.Mutex // serialises Apply, as Raft's log does
	index uint64     // guarded by mu; the last log index handed to the FSM
}

// New returns a store over an empty state (not bootstrapped: the FSM
// refuses everything but a bootstrap command).
func New() *Store { return &Store{fsm: raftstore.NewFSM()} }

// NewBootstrapped returns a store holding cluster clusterID with one node,
// "n1", at the first mesh IP.
func NewBootstrapped(clusterID string) (*Store, error) {
	s := New()
	res, err := s.Apply(context.Background(), &raftstore.Command{Op: raftstore.OpBootstrap, Bootstrap: &raftstore.BootstrapCmd{
		ClusterID: clusterID,
		Node:      raftstore.Node{ID: "n1", Name: "n1", PublicKey: "k", MeshIP: raftstore.FirstMeshIP(), PodCIDR: raftstore.FirstPodCIDR()},
	}})
	if err != nil {
		return nil, err
	}
	if err := res.Error(); err != nil {
		return nil, err
	}
	return s, nil
}

// FSM is the state machine commands are applied to.
func (s *Store) FSM() *raftstore.FSM { return s.fsm }

// State returns a copy of the state and the log index it reflects.
func (s *Store) State() (*raftstore.State, uint64) { return s.fsm.State() }

// Changed returns a channel that is closed at the next state change.
func (s *Store) Changed() <-chan struct{} { return s.fsm.Changed() }

// Apply commits cmd as raftstore.Store.Apply does on the leader: it fills
// in a missing ID and time (in cmd), appends the encoded command to the
// log and returns the FSM's result. A command ID seen before returns the
// first result and changes nothing. ctx is not consulted, as a leader's
// commit is not cancelled by its caller.
func (s *Store) Apply(_ context.Context, cmd *raftstore.Command) (*raftstore.Result, error) {
	if cmd.ID == "" {
		cmd.ID = raftstore.NewCommandID()
	}
	if cmd.Time.IsZero() {
		cmd.Time = time.Now().UTC()
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.index++
	return s.fsm.Apply(&raft.Log{Index: s.index, Type: raft.LogCommand, Data: b}).(*raftstore.Result), nil
}

// EnableKube is raftstore.Store.EnableKube.
func (s *Store) EnableKube(ctx context.Context, k *raftstore.KubeState, kubeconfigSealed, server string) error {
	return s.applyErr(ctx, raftstore.KubeEnableCommand(k, kubeconfigSealed, server))
}

// DisableKube is raftstore.Store.DisableKube.
func (s *Store) DisableKube(ctx context.Context) error {
	return s.applyErr(ctx, raftstore.KubeDisableCommand())
}

// SetKubeEtcd is raftstore.Store.SetKubeEtcd.
func (s *Store) SetKubeEtcd(ctx context.Context, generation uint64, members []raftstore.EtcdMember) error {
	return s.applyErr(ctx, raftstore.KubeEtcdCommand(generation, members))
}

func (s *Store) applyErr(ctx context.Context, cmd *raftstore.Command) error {
	res, err := s.Apply(ctx, cmd)
	if err != nil {
		return err
	}
	return res.Error()
}

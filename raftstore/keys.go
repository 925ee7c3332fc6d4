package raftstore

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
)

// Data key rotation and the sealed CA key.
//
// The cluster data key (package seal) never enters the state in the clear.
// A rotation (after every node removal) is ONE command that carries the new
// epoch's key wrapped for each remaining node (HPKE to its WireGuard public
// key) and every sealed value of the state re-sealed under it. Apply checks
// the command against the state it lands on: the recipients must be exactly
// the state's nodes and each re-sealed value must replace exactly the value
// the proposer read. So no state ever holds a value sealed under a key some
// member lacks, and a removed node (in no wrap) learns nothing from the
// state written after its removal. A stale command (a join, a new secret or
// another rotation in between) fails with ErrRotationStale and is prepared
// again.

// Key ops.
const (
	OpRotateKeys = "rotate_keys"
	OpSealCAKey  = "seal_ca_key"
)

// Seal purposes of the state's sealed values (with CloudKeyPurpose,
// KubeconfigPurpose, CredentialsPurpose and the Kube*Purpose of kube.go).
const (
	CAKeyPurpose        = "ca/key"
	UISessionKeyPurpose = "ui-session-key"
)

// ErrRotationStale answers a rotation prepared from a state that changed
// before it applied (or a sealing of the CA key that is already sealed).
var ErrRotationStale = errors.New("key rotation was prepared from a stale state")

// KeyState is what the state knows of the data key: never the key itself.
type KeyState struct {
	// Epoch is the current data key's epoch; 0 is the key init made
	// (epoch 1, held by every member since it joined).
	Epoch uint64 `json:"epoch,omitempty"`
	// Wrapped is the current epoch's key wrapped for each node (by ID)
	// that was a member at the rotation: a node that was offline unwraps
	// its copy when it catches up. Nodes joined later got the key at join.
	Wrapped map[string]string `json:"wrapped,omitempty"`
	// RotatePending: a node was removed since the last rotation; the
	// leader rotates (agent/rotate.go).
	RotatePending bool `json:"rotate_pending,omitempty"`
}

// CurrentEpoch is the epoch new values must be sealed under.
func (k KeyState) CurrentEpoch() uint64 { return max(k.Epoch, 1) }

func (k KeyState) clone() KeyState {
	k.Wrapped = maps.Clone(k.Wrapped)
	return k
}

// RotateKeysCmd moves the cluster to a new data key epoch.
type RotateKeysCmd struct {
	Epoch   uint64            `json:"epoch"`   // CurrentEpoch()+1
	Wrapped map[string]string `json:"wrapped"` // node ID -> wrapped key, for exactly the state's nodes
	// Resealed has an entry for every sealed value of the state (see
	// SealedValues), keyed alike.
	Resealed map[string]Reseal `json:"resealed"`
}

// Reseal replaces one sealed value.
type Reseal struct {
	Old string `json:"old"`
	New string `json:"new"`
}

// SealCAKeyCmd replaces a plaintext CA key (a state from before sealing) by
// its sealed form: the leader's one-time migration.
type SealCAKeyCmd struct {
	Sealed string `json:"sealed"`
}

// SealedRef names one sealed value of the state.
type SealedRef struct {
	Purpose string // the seal purpose it was sealed for
	Value   string
}

// SealedValues returns every sealed value of the state, keyed by a name
// that RotateKeysCmd.Resealed uses: "ca", "ui", "cloud", "kube",
// "service/<osid>", "kube/ca", "kube/etcd-ca", "kube/sa", "access".
func (s *State) SealedValues() map[string]SealedRef {
	out := map[string]SealedRef{}
	for name, p := range s.sealedFields() {
		out[name] = SealedRef{Purpose: p.purpose, Value: *p.value}
	}
	return out
}

type sealedField struct {
	purpose string
	value   *string
}

// sealedFields points at every non-empty sealed value of s. A new sealed
// field in the state must be listed here, or a rotation leaves it under
// the old key.
func (s *State) sealedFields() map[string]sealedField {
	out := map[string]sealedField{}
	add := func(name, purpose string, v *string) {
		if *v != "" {
			out[name] = sealedField{purpose, v}
		}
	}
	add("ca", CAKeyPurpose, &s.CAKeySealed)
	add("ui", UISessionKeyPurpose, &s.UI.SessionKey)
	if r := s.Cloud.Registration; r != nil {
		add("cloud", CloudKeyPurpose, &r.ClientKeySealed)
	}
	if k := s.Workloads.Kube; k != nil {
		add("kube", KubeconfigPurpose, &k.Kubeconfig)
	}
	for osid, r := range s.Workloads.Services {
		add("service/"+osid, CredentialsPurpose(osid), &r.Credentials)
	}
	add("access", AccessKeyPurpose, &s.Access.KeySealed)
	if k := s.Kube; k != nil {
		add("kube/ca", KubeCAKeyPurpose, &k.CAKeySealed)
		add("kube/etcd-ca", KubeEtcdCAKeyPurpose, &k.EtcdCAKeySealed)
		add("kube/sa", KubeSAKeyPurpose, &k.SAKeySealed)
	}
	return out
}

func (s *State) applyRotateKeys(cmd *Command) error {
	c := cmd.RotateKeys
	if c == nil || c.Epoch == 0 {
		return ErrMalformedCmd
	}
	if c.Epoch != s.Keys.CurrentEpoch()+1 {
		return fmt.Errorf("epoch %d after %d: %w", c.Epoch, s.Keys.CurrentEpoch(), ErrRotationStale)
	}
	if len(s.CAKeyPEM) > 0 {
		return fmt.Errorf("the CA key is not sealed yet: %w", ErrRotationStale)
	}
	if !slices.Equal(sortedKeys(c.Wrapped), sortedKeys(s.Nodes)) {
		return fmt.Errorf("wrapped keys are not for exactly the cluster's nodes: %w", ErrRotationStale)
	}
	for _, w := range c.Wrapped {
		if w == "" {
			return ErrMalformedCmd
		}
	}
	fields := s.sealedFields()
	if !slices.Equal(sortedKeys(c.Resealed), sortedKeys(fields)) {
		return fmt.Errorf("re-sealed values are not the state's: %w", ErrRotationStale)
	}
	for name, f := range fields {
		r := c.Resealed[name]
		if r.Old != *f.value {
			return fmt.Errorf("%s changed: %w", name, ErrRotationStale)
		}
		if r.New == "" {
			return ErrMalformedCmd
		}
	}
	// Checked in full above: from here on nothing fails halfway.
	if s.Kube != nil {
		s.Kube = s.Kube.clone() // replaced, never mutated in place
		fields = s.sealedFields()
	}
	for name, f := range fields {
		*f.value = c.Resealed[name].New
	}
	s.Keys = KeyState{Epoch: c.Epoch, Wrapped: maps.Clone(c.Wrapped)}
	if s.Cloud.Registration != nil {
		// The old data key opened the cloud client key, so whoever held
		// it may hold the credential: the cloud session re-issues it.
		s.Cloud.RotateCredential = true
	}
	return nil
}

func (s *State) applySealCAKey(cmd *Command) error {
	c := cmd.SealCAKey
	if c == nil || c.Sealed == "" {
		return ErrMalformedCmd
	}
	if len(s.CAKeyPEM) == 0 {
		return fmt.Errorf("the CA key is already sealed: %w", ErrRotationStale)
	}
	s.CAKeySealed, s.CAKeyPEM = c.Sealed, nil
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Snapshot takes a snapshot now (tests look at what one holds on disk).
func (s *Store) Snapshot() error { return s.raft.Snapshot().Error() }

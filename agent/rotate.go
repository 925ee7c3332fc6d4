package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// Data key rotation (issue 12, item 4). Removing a node marks the state
// (Keys.RotatePending); the leader then commits one rotate_keys command: a
// new key wrapped for every remaining node and every sealed value re-sealed
// under it (raftstore/keys.go checks it against the state it lands on).
// Every node, on seeing a newer epoch in the state, unwraps its copy with
// its WireGuard private key, persists it and seals with it from then on.

// dataKeys are the cluster data keys this node holds, newest first: the
// first seals, any of them opens. Keys derived from them (seal.Derive)
// key gossip and heartbeats, so they follow a rotation too.
func (a *Agent) dataKeys() []seal.Key { return a.keys.Keys() }

// rotateKeys is a leader task: it seals a CA key left in plaintext by an
// older version (once, on the first leadership after the upgrade) and
// rotates the data key after a removal.
func (a *Agent) rotateKeys(ctx context.Context) error {
	for {
		changed := a.store.Changed()
		if err := a.keyDuties(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("key rotation", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(30 * time.Second):
		}
	}
}

func (a *Agent) keyDuties(ctx context.Context) error {
	st, _ := a.store.State()
	if st.ClusterID == "" {
		return nil
	}
	if _, member := st.Nodes[a.cfg.NodeID]; !member {
		// A removed leader, until it hands leadership over: the next key
		// must not be one it knows.
		return nil
	}
	if err := a.adoptKeys(); err != nil {
		return err
	}
	if len(st.CAKeyPEM) > 0 {
		sealed, err := a.keys.Seal(raftstore.CAKeyPurpose, st.CAKeyPEM)
		if err != nil {
			return err
		}
		if err := a.applyKeyCmd(ctx, &raftstore.Command{Op: raftstore.OpSealCAKey, SealCAKey: &raftstore.SealCAKeyCmd{Sealed: sealed}}); err != nil {
			return fmt.Errorf("seal the CA key: %w", err)
		}
		a.log.Info("sealed the CA key in the cluster state")
		return nil // the next state change brings the rotation, if one is due
	}
	if !st.Keys.RotatePending {
		return nil
	}
	cmd, err := a.prepareRotation(st)
	if err != nil {
		return err
	}
	if err := a.applyKeyCmd(ctx, cmd); err != nil {
		if errors.Is(err, raftstore.ErrRotationStale) {
			return nil // the state moved on: prepared again at its next change
		}
		return err
	}
	a.log.Info("rotated the cluster data key", "epoch", cmd.RotateKeys.Epoch, "nodes", len(cmd.RotateKeys.Wrapped))
	return a.adoptKeys()
}

func (a *Agent) applyKeyCmd(ctx context.Context, cmd *raftstore.Command) error {
	cmd.Time = a.now().UTC()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := a.store.Apply(cctx, cmd)
	if err != nil {
		return err
	}
	return res.Error()
}

// prepareRotation builds the rotate_keys command for st: a fresh key,
// wrapped for each node of st, and st's sealed values re-sealed under it.
func (a *Agent) prepareRotation(st *raftstore.State) (*raftstore.Command, error) {
	cur := st.Keys.CurrentEpoch()
	if a.keys.Epoch() != cur {
		return nil, fmt.Errorf("this node holds epoch %d, the state is at %d", a.keys.Epoch(), cur)
	}
	next, err := seal.NewKey()
	if err != nil {
		return nil, err
	}
	c := &raftstore.RotateKeysCmd{Epoch: cur + 1, Wrapped: map[string]string{}, Resealed: map[string]raftstore.Reseal{}}
	for id, n := range st.Nodes {
		pub, err := mesh.ParseKey(n.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("node %s: public key: %w", n.Name, err)
		}
		if c.Wrapped[id], err = seal.WrapKey(pub, st.ClusterID, c.Epoch, next); err != nil {
			return nil, err
		}
	}
	for name, ref := range st.SealedValues() {
		pt, err := a.keys.Open(ref.Purpose, ref.Value)
		if err != nil {
			// Leaving it would leave a value no member can open after
			// two more rotations; refusing keeps the old key in use and
			// the problem visible.
			return nil, fmt.Errorf("re-seal %s: %w", name, err)
		}
		s, err := seal.Seal(next, ref.Purpose, pt)
		if err != nil {
			return nil, err
		}
		c.Resealed[name] = raftstore.Reseal{Old: ref.Value, New: s}
	}
	return &raftstore.Command{Op: raftstore.OpRotateKeys, RotateKeys: c}, nil
}

// adoptKeys brings this node's keyring up to the state's epoch: it unwraps
// its copy of the current key, persists the ring, then uses it. Safe to call
// from any goroutine; a node the rotation left out (removed) stays behind.
func (a *Agent) adoptKeys() error {
	a.adoptMu.Lock()
	defer a.adoptMu.Unlock()
	st, _ := a.store.State()
	want := st.Keys.CurrentEpoch()
	if a.keys.Epoch() >= want {
		return nil
	}
	wrapped, ok := st.Keys.Wrapped[a.cfg.NodeID]
	if !ok {
		return fmt.Errorf("the state is at data key epoch %d and holds no copy for this node", want)
	}
	k, err := seal.UnwrapKey(a.wgKey, st.ClusterID, want, wrapped)
	if err != nil {
		return fmt.Errorf("unwrap data key epoch %d: %w", want, err)
	}
	// Persist a copy first: a crash after using the key but before saving
	// it would leave this node unable to open the state.
	next, err := seal.NewKeyring(append(a.keys.Entries(), seal.EpochKey{Epoch: want, Key: k})...)
	if err != nil {
		return err
	}
	if err := datadir.SaveDataKeys(a.dir, next); err != nil {
		return fmt.Errorf("save data keys: %w", err)
	}
	if err := a.keys.Add(seal.EpochKey{Epoch: want, Key: k}); err != nil {
		return err
	}
	a.log.Info("adopted a new cluster data key", "epoch", want)
	if err := a.rekeyGossip(a.keys.Keys()); err != nil {
		a.log.Warn("rekey gossip", "err", err)
	}
	return nil
}

// keyLoop adopts new data key epochs as the state brings them (a node that
// was offline during a rotation catches up here).
//
// Gossip keeps the previous key only for gossipKeyGrace after an adoption,
// while the other members adopt the same epoch (they do within a Raft
// apply of each other); then memberlist accepts the newest key alone, so
// a removed node's old key opens no gossip.
func (a *Agent) keyLoop(ctx context.Context) {
	var lastErr string
	var dropOld <-chan time.Time
	if len(a.keys.Keys()) > 1 {
		dropOld = time.After(gossipKeyGrace) // a restart reads both keys
	}
	for {
		changed := a.store.Changed()
		before := a.keys.Epoch()
		if err := a.adoptKeys(); err != nil {
			if err.Error() != lastErr {
				a.log.Warn("data key", "err", err)
				lastErr = err.Error()
			}
		} else {
			lastErr = ""
		}
		if a.keys.Epoch() != before {
			dropOld = time.After(gossipKeyGrace)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-dropOld:
			dropOld = nil
			if err := a.rekeyGossip(a.keys.Keys()[:1]); err != nil {
				a.log.Warn("rekey gossip", "err", err)
			}
		case <-time.After(10 * time.Second):
		}
	}
}

// gossipKeyGrace is how long gossip still opens the previous data key's
// packets after this node adopted a new one.
const gossipKeyGrace = 5 * time.Second

// waitRotated waits until the rotation the removal at index removedAt
// started has applied and
// this node seals with the new key, so what the caller writes next is
// sealed under it. A rotation that does not come in time is logged, not
// returned: the removal itself stands, and the leader keeps trying.
func (a *Agent) waitRotated(ctx context.Context, removedAt uint64) {
	for {
		changed := a.store.Changed()
		st, index := a.store.State()
		if index >= removedAt && !st.Keys.RotatePending {
			if a.adoptKeys() == nil && a.keys.Epoch() >= st.Keys.CurrentEpoch() {
				return
			}
		}
		select {
		case <-ctx.Done():
			a.log.Warn("node removed; the data key rotation has not applied yet", "err", ctx.Err())
			return
		case <-changed:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

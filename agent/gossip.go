package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/gossip"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

func (a *Agent) startGossip() error {
	t, err := gossip.NewTransport(gossip.TransportConfig{
		Net:      a.dev.Net(),
		BindAddr: a.cfg.MeshIP,
		Port:     GossipPort,
		Sources:  raftstore.MemberSources(),
	}, a.log)
	if err != nil {
		return fmt.Errorf("gossip: %w", err)
	}
	a.transport = t
	mc, err := gossip.MemberlistConfig(a.cfg.Name, t, gossipKeys(a.dataKeys()), a.log)
	if err != nil {
		t.Shutdown()
		return fmt.Errorf("gossip: %w", err)
	}
	a.gossipKeys = mc.Keyring
	mc.Events = &gossipEvents{a: a}
	mc.Delegate = a.health
	// Heartbeat ages are the failure detector (degraded after 10 s,
	// offline after 30 s); memberlist only keeps the member list. Its
	// probes and state exchanges are made rare so they cost little on the
	// wire: a probe every 30 s and a suspicion window of 2 minutes (a node
	// paused for 15 s is never declared dead), a full state exchange every
	// 5 minutes. Payloads are a few bytes, so compression would only add.
	mc.ProbeInterval = 30 * time.Second
	mc.ProbeTimeout = 3 * time.Second
	mc.SuspicionMult = 4
	mc.PushPullInterval = 5 * time.Minute
	mc.EnableCompression = false
	if a.tuning.GossipFast {
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.GossipInterval = 50 * time.Millisecond
		// Same ratio as production: gossip declares death well after the
		// heartbeat turns a node degraded, so degraded is always seen.
		mc.SuspicionMult = 15
		mc.PushPullInterval = 2 * time.Second
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Shutdown()
		return fmt.Errorf("gossip: %w", err)
	}
	a.ml = ml
	a.closers = append(a.closers, func() error {
		// A goodbye heartbeat and Leave tell the others at once that this
		// node is going away on purpose; a crash (nothing sent) is found by
		// the failure detector and the heartbeat ages instead.
		a.health.Goodbye()
		ml.Leave(time.Second)
		return ml.Shutdown()
	})
	return nil
}

// gossipKeys are memberlist's keys for the cluster data keys, in their
// order: the first encrypts, any decrypts.
func gossipKeys(dataKeys []seal.Key) [][]byte {
	out := make([][]byte, 0, len(dataKeys))
	for _, k := range dataKeys {
		g := seal.Derive(k, "memberlist")
		out = append(out, g[:])
	}
	return out
}

// rekeyGossip installs the memberlist keys for dataKeys (newest first, as
// dataKeys returns them) in the running memberlist: the first becomes the
// key this node encrypts with, the others still open what members not yet
// rotated send, and keys for data keys no longer listed are dropped. The
// data key rotation calls it on every node once the new key is known, and
// again without the old key when every member has it.
func (a *Agent) rekeyGossip(keys []seal.Key) error {
	if len(keys) == 0 {
		return errors.New("gossip: rekey: no keys")
	}
	if a.gossipKeys == nil {
		return errors.New("gossip: rekey: gossip is not running")
	}
	want := gossipKeys(keys)
	for _, k := range want {
		if err := a.gossipKeys.AddKey(k); err != nil {
			return fmt.Errorf("gossip: rekey: %w", err)
		}
	}
	if err := a.gossipKeys.UseKey(want[0]); err != nil {
		return fmt.Errorf("gossip: rekey: %w", err)
	}
	for _, have := range a.gossipKeys.GetKeys() {
		if !slices.ContainsFunc(want, func(k []byte) bool { return bytes.Equal(k, have) }) {
			if err := a.gossipKeys.RemoveKey(have); err != nil {
				return fmt.Errorf("gossip: rekey: %w", err)
			}
		}
	}
	return nil
}

// gossipEvents hands memberlist's membership changes to health (which
// keeps its own copies of the members it sends heartbeats to) and wakes
// the reconcilers.
type gossipEvents struct{ a *Agent }

func (e *gossipEvents) NotifyJoin(n *memberlist.Node) {
	e.a.health.NotifyJoin(n)
	e.a.wake()
}

func (e *gossipEvents) NotifyLeave(n *memberlist.Node) {
	e.a.health.NotifyLeave(n)
	e.a.wake()
}

func (e *gossipEvents) NotifyUpdate(n *memberlist.Node) {
	e.a.health.NotifyUpdate(n)
	e.a.wake()
}

// wake nudges the reconcilers: gossip events are hints, the timers still
// re-check everything.
func (a *Agent) wake() {
	if a.store != nil {
		a.store.Hint()
	}
	if a.peers != nil {
		a.peers.Wake()
	}
}

// nodeUp is Raft's liveness source: a node gossip has seen and that is not
// offline by the health rule. Gossip probes rarely (it is not the failure
// detector), so heartbeat ages decide.
func (a *Agent) nodeUp(nodeID string) bool {
	n, ok := a.store.Node(nodeID)
	if !ok {
		return false
	}
	s, ok := a.health.MemberState(n.Name)
	if !ok || (s != memberlist.StateAlive && s != memberlist.StateSuspect) {
		return false
	}
	return a.health.Of(n).Health != api.Offline
}

// gossipRejoinLoop contacts nodes of the state that gossip does not see, so
// that the cluster re-forms after a partition or a power cut of every node,
// when memberlist has long given up on them.
func (a *Agent) gossipRejoinLoop(ctx context.Context) {
	delay := 200 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		var missing []string
		for _, n := range a.knownNodes() {
			if n.ID == a.cfg.NodeID {
				continue
			}
			if s, ok := a.health.MemberState(n.Name); !ok || s == memberlist.StateDead || s == memberlist.StateLeft {
				missing = append(missing, netip.AddrPortFrom(n.MeshIP, GossipPort).String())
			}
		}
		if len(missing) == 0 {
			delay = 5 * time.Second
			continue
		}
		if n, err := a.ml.Join(missing); err != nil && n == 0 {
			a.log.Debug("gossip join failed", "targets", missing, "err", err)
			delay = min(max(delay*2, time.Second), 5*time.Second)
		} else {
			delay = 5 * time.Second
		}
	}
}

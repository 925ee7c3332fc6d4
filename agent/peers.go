package agent

import (
	"context"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/nat"
	"github.com/runos/runos-agent/raftstore"
)

// persistentKeepalive holds NAT mappings open and keeps handshakes fresh.
const persistentKeepalive = 25 * time.Second

// knownNodes is the cluster as this node knows it: the Raft state once that
// includes this node, otherwise (still catching up) the peer list saved on
// disk at join or at the last change.
func (a *Agent) knownNodes() []*raftstore.Node {
	st, _ := a.store.State()
	if _, ok := st.Nodes[a.cfg.NodeID]; ok {
		return st.SortedNodes()
	}
	saved, _ := datadir.LoadPeers(a.dir)
	return saved
}

// peersFrom turns node records into WireGuard peers (every node but this one).
func (a *Agent) peersFrom(nodes []*raftstore.Node) []mesh.Peer {
	var out []mesh.Peer
	for _, n := range nodes {
		if n.ID == a.cfg.NodeID {
			continue
		}
		key, err := mesh.ParseKey(n.PublicKey)
		if err != nil {
			a.log.Warn("node has a bad public key", "node", n.Name, "err", err)
			continue
		}
		p := mesh.Peer{
			PublicKey: key,
			// The Bind picks the underlay path per packet; WireGuard sees
			// one stable identity endpoint per peer.
			Endpoint:            nat.PeerAddrPort(key),
			AllowedIPs:          []netip.Prefix{netip.PrefixFrom(n.MeshIP, 32)},
			PersistentKeepalive: persistentKeepalive,
		}
		if n.PodCIDR.IsValid() {
			p.AllowedIPs = append(p.AllowedIPs, n.PodCIDR)
		}
		out = append(out, p)
	}
	return out
}

// applyPeers makes the Bind and WireGuard agree with nodes: candidates to
// the Bind first, so the identity endpoints resolve to paths.
func (a *Agent) applyPeers(nodes []*raftstore.Node) error {
	var others []*raftstore.Node
	for _, n := range nodes {
		if n.ID != a.cfg.NodeID {
			others = append(others, n)
		}
	}
	if err := a.bind.SetPeers(natPeers(others)); err != nil {
		return err
	}
	return a.dev.SetPeers(a.peersFrom(others))
}

// peerLoop keeps WireGuard's peers equal to the cluster's nodes: when the
// state changes (a join, a removal), on gossip hints, and on a timer. It also
// saves the node list, so a restart brings WireGuard up without a leader.
func (a *Agent) peerLoop(ctx context.Context) {
	var last []*raftstore.Node
	// seenSelf: this replica's state has included this node. Until then it
	// is still replaying history (a fresh joiner), and a prefix of history
	// lacks nodes that joined later, the leader perhaps: their peers must
	// stay, or replication could never reach this node.
	seenSelf := false
	removed := false
	// A removed node's peer lingers for removalGrace, so the entry that
	// removes it still reaches it (it then drops everyone itself).
	lingering := map[string]lingeringNode{}
	for {
		changed := a.store.Changed()
		st, _ := a.store.State()
		now := a.now()
		_, present := st.Nodes[a.cfg.NodeID]
		seenSelf = seenSelf || present
		var nodes []*raftstore.Node
		switch {
		case present:
			nodes = st.SortedNodes()
			for _, n := range last {
				if _, ok := st.Nodes[n.ID]; !ok {
					if _, ok := lingering[n.ID]; !ok {
						lingering[n.ID] = lingeringNode{node: n, until: now.Add(removalGrace)}
					}
				}
			}
			for id, l := range lingering {
				if _, back := st.Nodes[id]; back || now.After(l.until) {
					delete(lingering, id)
					continue
				}
				nodes = append(nodes, l.node)
			}
		case seenSelf:
			if !removed {
				a.log.Error("this node has been removed from the cluster; dropping all peers")
				removed = true
			}
			nodes = []*raftstore.Node{}
		default:
			nodes = last
		}
		if nodes != nil {
			nodes = a.withGossipCandidates(nodes)
		}
		if nodes != nil && !reflect.DeepEqual(nodes, last) {
			if err := a.applyPeers(nodes); err != nil {
				a.log.Warn("set wireguard peers", "err", err)
			} else {
				last = nodes
				if present {
					if err := datadir.SavePeers(a.dir, st.SortedNodes()); err != nil {
						a.log.Warn("save peers", "err", err)
					}
				}
			}
		}
		wait := 10 * time.Second
		for _, l := range lingering {
			wait = min(wait, time.Until(l.until)+10*time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-a.hint:
		case <-time.After(wait):
		}
	}
}

// removalGrace matches raftstore's default RemovalGrace.
const removalGrace = 3 * time.Second

type lingeringNode struct {
	node  *raftstore.Node
	until time.Time
}

// bootstrap is a leader task: the first leader applies the bootstrap
// command that init left in init.json, once.
func (a *Agent) bootstrap(ctx context.Context) error {
	initPath := filepath.Join(a.dir, datadir.FileInit)
	for {
		if st, _ := a.store.State(); st.ClusterID != "" {
			return nil
		}
		var cmd raftstore.Command
		err := datadir.ReadJSON(initPath, &cmd)
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			var res *raftstore.Result
			res, err = a.store.Apply(cctx, &cmd)
			cancel()
			if err == nil {
				err = res.Error()
			}
			if err == nil || errors.Is(err, raftstore.ErrBootstrapped) {
				a.log.Info("cluster initialised", "cluster", a.cfg.ClusterID)
				return nil
			}
			a.log.Warn("bootstrap not applied yet", "err", err)
		} else if !errors.Is(err, fs.ErrNotExist) {
			a.log.Error("cannot read bootstrap command", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// selfLoop removes init.json once the cluster is initialised and keeps this
// node's own record (candidate endpoints with the STUN-reflexive address,
// relay offer, version) current in the state.
func (a *Agent) selfLoop(ctx context.Context) {
	initPath := filepath.Join(a.dir, datadir.FileInit)
	var lastRefresh time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		st, _ := a.store.State()
		if st.ClusterID == "" {
			continue // the first leader applies init.json (bootstrap)
		}
		if _, err := os.Stat(initPath); err == nil {
			os.Remove(initPath)
		}
		me, ok := st.Nodes[a.cfg.NodeID]
		if !ok {
			continue
		}
		if time.Since(lastRefresh) < candidateRefresh && !a.takeCandidateHint() {
			continue
		}
		lastRefresh = time.Now()
		eps, relay := a.candidates(ctx)
		a.setOwnCandidates(eps)
		if me.Version == Version && reflect.DeepEqual(me.Endpoints, eps) && me.Relay == relay {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := a.store.Apply(cctx, &raftstore.Command{Op: raftstore.OpUpdateNode, UpdateNode: &raftstore.UpdateNodeCmd{
			NodeID: a.cfg.NodeID, Endpoints: eps, Version: Version, Relay: &relay,
		}})
		cancel()
		if err == nil {
			err = res.Error()
		}
		if err != nil {
			a.log.Debug("update own node record", "err", err)
			lastRefresh = time.Time{}
			continue
		}
		a.log.Info("own record updated", "endpoints", eps, "relay", relay)
	}
}

// candidateRefresh is how often a node re-learns its reflexive address
// (a NAT may have remapped it) and republishes its candidates.
const candidateRefresh = 15 * time.Second

// takeCandidateHint reports (once) that the candidates should be
// refreshed now: the first time, and after NetworkChanged.
func (a *Agent) takeCandidateHint() bool {
	select {
	case <-a.candidateHint:
		return true
	default:
		return false
	}
}

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

// newPeers builds the peer reconciler over this node's Raft state. It is
// built before the store (Start applies the saved peers first, so Raft can
// reach the others); its hooks read the store and health when it runs.
func (a *Agent) newPeers() (*mesh.Reconciler, error) {
	return mesh.NewReconciler(mesh.ReconcilerConfig{
		Device:   a.dev,
		View:     a.peerView,
		Changed:  func() <-chan struct{} { return a.store.Changed() },
		Endpoint: func(k mesh.Key) netip.AddrPort { return nat.PeerAddrPort(k) },
		Underlay: a.setUnderlayPeers,
		// A node's latest heartbeat may announce candidates its record
		// does not have yet (a remapped NAT).
		// Gossiped candidates are checked like recorded ones.
		Candidates: func(name string) []string {
			ok, _ := nat.PolicyFor(a.cfg.Endpoints).FilterStrings(a.health.Candidates(name))
			return ok
		},
		// Saved so a restart brings WireGuard up without a leader.
		Save: func() error {
			st, _ := a.store.State()
			return datadir.SavePeers(a.dir, st.SortedNodes())
		},
		Now: a.now,
	}, a.log)
}

func (a *Agent) peerView() mesh.View {
	st, _ := a.store.State()
	_, self := st.Nodes[a.cfg.NodeID]
	members := a.members(st.SortedNodes())
	// Replies to a user device go to its entry node (wg1): its /32 rides
	// in that node's AllowedIPs, so `access move` is a change of peer.
	carried := map[string][]netip.Prefix{}
	for _, d := range st.SortedDevices() {
		carried[d.Via] = append(carried[d.Via], netip.PrefixFrom(d.Address, 32))
	}
	for i := range members {
		members[i].Carried = carried[members[i].ID]
	}
	return mesh.View{Self: self, Members: members}
}

// members turns node records into mesh members (every node but this one).
func (a *Agent) members(nodes []*raftstore.Node) []mesh.Member {
	var out []mesh.Member
	for _, n := range nodes {
		if n.ID == a.cfg.NodeID {
			continue
		}
		out = append(out, mesh.Member{ID: n.ID, Name: n.Name, PublicKey: n.PublicKey, Address: n.MeshIP,
			Routed: n.PodCIDR, Endpoints: n.Endpoints, Relay: n.Relay})
	}
	return out
}

// setUnderlayPeers gives the Bind the members and their candidates, less
// the candidates this node's policy refuses (nat.PolicyFor): a member
// cannot point the others at their own loopback, or anywhere no packet
// goes.
func (a *Agent) setUnderlayPeers(members []mesh.Member) error {
	policy := nat.PolicyFor(a.cfg.Endpoints)
	out := make([]nat.PeerInfo, 0, len(members))
	for _, m := range members {
		key, err := mesh.ParseKey(m.PublicKey)
		if err != nil {
			continue // the reconciler logs it
		}
		cands, bad := policy.Filter(nat.ParseEndpoints(m.Endpoints))
		if len(bad) > 0 {
			a.log.Debug("ignoring bad candidates", "node", m.Name, "err", errors.Join(bad...))
		}
		out = append(out, nat.PeerInfo{PublicKey: key, Candidates: cands, Relay: m.Relay})
	}
	return a.bind.SetPeers(out)
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
	initGone := false
	var lastRefresh time.Time // zero: refresh as soon as this node's record exists
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// This runs ten times a second for the agent's life: between
		// refreshes it must not read the state (a full copy each time was
		// the idle agent's largest source of garbage).
		if !lastRefresh.IsZero() && time.Since(lastRefresh) < candidateRefresh && !a.takeCandidateHint() {
			continue
		}
		// Only an initialised cluster (the first leader applies init.json:
		// bootstrap) has node records.
		me, ok := a.store.Node(a.cfg.NodeID)
		if !ok {
			lastRefresh = time.Time{}
			continue
		}
		if !initGone {
			if err := os.Remove(initPath); err == nil || errors.Is(err, fs.ErrNotExist) {
				initGone = true
			}
		}
		lastRefresh = time.Now()
		eps, relay := a.bind.Candidates(ctx, a.cfg.Endpoints, a.cfg.Relay, a.stunServers(nil))
		a.setOwnCandidates(eps)
		// A record from before fingerprints were recorded gets this
		// node's own: until then peers can tell its certificate only by
		// serial (allowPeerCert).
		var fingerprint string
		if me.CertFingerprint == "" {
			fingerprint = a.certFingerprint
		}
		if me.Version == Version && reflect.DeepEqual(me.Endpoints, eps) && me.Relay == relay && fingerprint == "" {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := a.store.Apply(cctx, &raftstore.Command{Op: raftstore.OpUpdateNode, UpdateNode: &raftstore.UpdateNodeCmd{
			NodeID: a.cfg.NodeID, Endpoints: eps, Version: Version, Relay: &relay, CertFingerprint: fingerprint,
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

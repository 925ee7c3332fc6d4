package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/nat"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/workload"
)

// The local API is how the CLI (and the UI) drive the agent: a unix socket
// in the data dir, so file permissions decide who may.

func (a *Agent) startLocalAPI() error {
	h, err := httpapi.NewLocalHandler(httpapi.LocalConfig{Local: a, Workloads: a.workloads, Catalog: Catalog, Kube: a, Access: a, DNS: a})
	if err != nil {
		return err
	}
	a.localAPI = h
	sock := filepath.Join(a.dir, api.SocketName)
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		return fmt.Errorf("another agent is already running on %s", a.dir)
	}
	os.Remove(sock) // stale, from a crash
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("local api: %w", err)
	}
	os.Chmod(sock, 0o600)
	a.serve(ln, a.localAPI, "local-api")
	return nil
}

// LocalAPIHandler is the local API (also mounted by the UI server); nil
// before Start.
func (a *Agent) LocalAPIHandler() http.Handler { return a.localAPI }

var (
	_ httpapi.Local     = (*Agent)(nil)
	_ httpapi.Workloads = (*workload.Ops)(nil)
)

// Changed is closed at the next change of this node's state.
func (a *Agent) Changed() <-chan struct{} { return a.store.Changed() }

// ConsistentRead returns once this node's state reflects every write
// acknowledged before the call (a ReadIndex read through the leader), so
// Status and Nodes called after it are linearizable.
func (a *Agent) ConsistentRead(ctx context.Context) error {
	_, _, err := a.store.ConsistentState(ctx)
	return err
}

// Status reports this node, its Raft view and its WireGuard peers.
func (a *Agent) Status() (*api.Status, error) {
	st, _ := a.store.State()
	rs := a.store.Status()
	name := func(id string) string {
		if n, ok := st.Nodes[id]; ok {
			return n.Name
		}
		return id
	}
	out := &api.Status{
		Name: a.cfg.Name, NodeID: a.cfg.NodeID, ClusterID: a.cfg.ClusterID,
		MeshIP: a.cfg.MeshIP.String(), PodCIDR: a.cfg.PodCIDR.String(), Net: string(a.mode), Version: Version,
		Raft: api.RaftStatus{
			State: strings.ToLower(rs.State), Term: rs.Term, AppliedIndex: rs.AppliedIndex,
			Voters: []string{}, NonVoters: []string{},
		},
		Peers: []api.Peer{},
	}
	if rs.Leader != "" {
		out.Raft.Leader = name(rs.Leader)
	}
	for _, id := range rs.Voters {
		out.Raft.Voters = append(out.Raft.Voters, name(id))
	}
	for _, id := range rs.NonVoters {
		out.Raft.NonVoters = append(out.Raft.NonVoters, name(id))
	}
	stats, err := a.dev.Stats()
	if err != nil {
		return nil, err
	}
	byKey := map[string]*raftstore.Node{}
	for _, n := range a.knownNodes() {
		byKey[n.PublicKey] = n
	}
	for _, ps := range stats {
		p := api.Peer{Endpoint: ps.Endpoint, RxBytes: ps.RxBytes, TxBytes: ps.TxBytes, LastHandshakeSeconds: -1}
		if n, ok := byKey[ps.PublicKey.String()]; ok {
			p.Name, p.MeshIP = n.Name, n.MeshIP.String()
		}
		if !ps.LastHandshake.IsZero() {
			// wireguard-go stamps handshakes with the real clock, not Deps.Now.
			p.LastHandshakeSeconds = time.Since(ps.LastHandshake).Round(time.Millisecond).Seconds()
		}
		path := a.bind.PathOf(ps.PublicKey)
		p.Path, p.RTTMillis = path.Kind.String(), float64(path.RTT.Microseconds())/1000
		if path.Kind == nat.PathRelay {
			p.Via = a.nameByKey(path.Via)
		}
		if path.Addr.IsValid() {
			p.Endpoint = path.Addr.String()
		}
		out.Peers = append(out.Peers, p)
	}
	slices.SortFunc(out.Peers, func(x, y api.Peer) int { return cmp.Compare(x.Name, y.Name) })
	out.Devices = a.localDevices(st)
	return out, nil
}

// Nodes lists the cluster from the local state, with health from gossip.
func (a *Agent) Nodes() *api.NodesResponse {
	st, idx := a.store.State()
	rs := a.store.Status()
	out := &api.NodesResponse{Index: idx, Nodes: []api.Node{}}
	for _, n := range st.SortedNodes() {
		role := api.RoleNonvoter
		switch {
		case n.ID == rs.Leader:
			role = api.RoleLeader
		case slices.Contains(rs.Voters, n.ID):
			role = api.RoleVoter
		}
		hs := a.health.Of(n)
		node := api.Node{
			Name: n.Name, ID: n.ID, MeshIP: n.MeshIP.String(), PodCIDR: n.PodCIDR.String(),
			Health: hs.Health, HealthReason: hs.Reason, RaftRole: role, Version: n.Version,
			Endpoints: n.Endpoints, Relay: n.Relay, JoinedAt: n.JoinedAt, LastHeartbeatSeconds: -1,
		}
		if hs.Seen {
			node.LastHeartbeatSeconds = hs.Age.Round(time.Millisecond).Seconds()
			node.Snapshot = hs.Host
			node.MeshRxBytes, node.MeshTxBytes = hs.MeshRx, hs.MeshTx
			if hs.Version != "" {
				node.Version = hs.Version
			}
		}
		out.Nodes = append(out.Nodes, node)
	}
	return out
}

// Events returns the cluster's recorded events with seq > after.
func (a *Agent) Events(after uint64) *api.EventsResponse {
	st, _ := a.store.State()
	out := &api.EventsResponse{Events: []api.Event{}, Last: after}
	for _, e := range st.Events {
		if e.Seq > after {
			out.Events = append(out.Events, api.Event(e))
			out.Last = e.Seq
		}
	}
	return out
}

// CreateToken stores a new join token and returns it with the command that
// uses it.
func (a *Agent) CreateToken(ctx context.Context, req api.TokenRequest) (*api.Token, error) {
	st, _ := a.store.State()
	policy := st.EffectiveTokenPolicy()
	ttl := min(time.Hour, policy.MaxTTL)
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%w: invalid ttl %q", httpapi.ErrBadRequest, req.TTL)
		}
		ttl = d
	}
	if req.Uses == 0 {
		req.Uses = 1
	}
	if req.Uses < 0 {
		return nil, fmt.Errorf("%w: uses must be at least 1", httpapi.ErrBadRequest)
	}
	// The FSM enforces the policy for every proposer; refusing here too
	// gives the user the reason as a 400 rather than a failed write.
	if err := policy.Allow(ttl, req.Uses); err != nil {
		return nil, fmt.Errorf("%w: %w (change it with `runos-agent token policy`)", httpapi.ErrBadRequest, err)
	}
	tok := datadir.NewToken(a.cfg.CAFingerprint)
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	// Right after `run`, the first leader may not have applied the
	// bootstrap yet: wait for it rather than failing.
	if err := a.WaitReady(ctx); err != nil {
		return nil, err
	}
	now := a.now().UTC()
	res, err := a.store.Apply(ctx, &raftstore.Command{Time: now, Op: raftstore.OpCreateToken, CreateToken: &raftstore.CreateTokenCmd{
		Token: raftstore.Token{ID: tok.ID, SecretHash: pki.HashSecret(tok.Secret), ExpiresAt: now.Add(ttl), UsesLeft: req.Uses},
	}})
	if err != nil {
		return nil, err
	}
	if err := res.Error(); err != nil {
		if errors.Is(err, raftstore.ErrTokenPolicy) {
			return nil, fmt.Errorf("%w: %w", httpapi.ErrBadRequest, err)
		}
		return nil, err
	}
	member := a.cfg.Endpoints[0]
	return &api.Token{
		Token:       tok.String(),
		ExpiresAt:   now.Add(ttl),
		Uses:        req.Uses,
		JoinCommand: fmt.Sprintf("runos-agent join --data-dir /var/lib/runos-agent --name NODE_NAME --token %s %s", tok, member),
	}, nil
}

// SetTokenPolicy changes the cluster's join-token policy; empty fields
// keep their value, so an empty request reads it.
func (a *Agent) SetTokenPolicy(ctx context.Context, req api.TokenPolicy) (*api.TokenPolicy, error) {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		return nil, err
	}
	st, _ := a.store.State()
	p := st.EffectiveTokenPolicy()
	if req.MaxTTL != "" || req.MaxUses != 0 {
		if req.MaxTTL != "" {
			d, err := time.ParseDuration(req.MaxTTL)
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("%w: invalid max ttl %q", httpapi.ErrBadRequest, req.MaxTTL)
			}
			p.MaxTTL = d
		}
		if req.MaxUses != 0 {
			p.MaxUses = req.MaxUses
		}
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("%w: %w", httpapi.ErrBadRequest, err)
		}
		res, err := a.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpSetTokenPolicy, TokenPolicy: &p})
		if err == nil {
			err = res.Error()
		}
		if err != nil {
			return nil, err
		}
	}
	return &api.TokenPolicy{MaxTTL: p.MaxTTL.String(), MaxUses: p.MaxUses}, nil
}

// RemoveNode deletes a node from the cluster. Every member drops its
// WireGuard peer and refuses its certificate once the removal is applied.
func (a *Agent) RemoveNode(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		return err
	}
	res, err := a.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpRemoveNode, RemoveNode: &raftstore.RemoveNodeCmd{Name: name}})
	if err != nil {
		return err
	}
	if err := res.Error(); err != nil {
		return fmt.Errorf("node %q: %w", name, err)
	}
	// Removal is a rotation: return once the new data key is in use, so
	// nothing the caller seals next is readable by the removed node.
	if name != a.cfg.Name {
		a.waitRotated(ctx, res.Index)
	}
	return nil
}

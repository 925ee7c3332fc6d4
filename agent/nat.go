package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/nat"
	"github.com/runos/runos-agent/raftstore"
)

// stunServers are the configured --stun servers (and extra) and the other
// members' public addresses.
func (a *Agent) stunServers(extra []string) []netip.AddrPort {
	var members []string
	for _, n := range a.knownNodes() {
		if n.ID != a.cfg.NodeID {
			members = append(members, n.Endpoints...)
		}
	}
	return nat.STUNServers(append(slices.Clone(a.cfg.STUN), extra...), members)
}

// onPathChange queues a path change for the event log; the Bind's callback
// must not block.
func (a *Agent) onPathChange(ev nat.PathEvent) {
	if ev.LostDirect() {
		select {
		case a.candidateHint <- struct{}{}:
		default:
		}
	}
	if !ev.Notable() {
		return
	}
	select {
	case a.pathEvents <- ev:
	default:
	}
}

// pathEventLoop logs path changes and records them as cluster events.
func (a *Agent) pathEventLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-a.pathEvents:
			peer, path := a.nameByKey(ev.Peer), ev.New.Describe(a.nameByKey)
			a.log.Info("path changed", "peer", peer, "from", ev.Old.Kind, "to", ev.New.Kind, "path", path)
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := a.store.RecordEvent(cctx, raftstore.Event{Kind: raftstore.EventPathChanged, Node: a.cfg.Name,
				From: ev.Old.Kind.String(), To: ev.New.Kind.String(), Detail: "to " + peer + ": " + path})
			cancel()
			if err != nil {
				a.log.Debug("path event not recorded", "err", err)
			}
		}
	}
}

func (a *Agent) nameByKey(key [32]byte) string {
	k := mesh.Key(key).String()
	for _, n := range a.knownNodes() {
		if n.PublicKey == k {
			return n.Name
		}
	}
	return k[:8]
}

// Netcheck reports what the underlay allows, through this node's socket.
func (a *Agent) Netcheck(ctx context.Context, extra []string) (*api.Netcheck, error) {
	servers := a.stunServers(extra)
	if len(servers) == 0 {
		return nil, errors.New("no STUN servers: no member has a public address; pass --stun HOST:PORT")
	}
	return a.bind.CheckNetwork(ctx, servers, uint16(a.cfg.ListenPort)), nil
}

// meshPingPort is a UDP echo on every node's mesh IP for `runos-agent ping`.
const meshPingPort = NodeAPIPort

func (a *Agent) startPingEcho() error {
	e, err := mesh.ListenEcho(a.dev.Net(), netip.AddrPortFrom(a.cfg.MeshIP, meshPingPort))
	if err != nil {
		return err
	}
	a.closers = append(a.closers, e.Close)
	return nil
}

// Ping sends one echo to a node over the mesh and reports the round trip
// and the path it took.
func (a *Agent) Ping(ctx context.Context, name string, seq int) (*api.PingResult, error) {
	var target *raftstore.Node
	for _, n := range a.knownNodes() {
		if n.Name == name {
			target = n
		}
	}
	if target == nil {
		return nil, fmt.Errorf("%w: no node named %q", raftstore.ErrNoSuchNode, name)
	}
	if target.ID == a.cfg.NodeID {
		return nil, fmt.Errorf("%w: %s is this node", httpapi.ErrBadRequest, name)
	}
	key, err := mesh.ParseKey(target.PublicKey)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rtt, err := mesh.Ping(ctx, a.dev.Net(), netip.AddrPortFrom(target.MeshIP, meshPingPort), seq)
	if err != nil && !errors.Is(err, mesh.ErrNoAnswer) {
		return nil, err
	}
	res := &api.PingResult{Node: name, Seq: seq}
	path := a.bind.PathOf(key)
	res.Path, res.Endpoint = path.Kind.String(), path.Addr.String()
	if path.Kind == nat.PathRelay {
		res.Via = a.nameByKey(path.Via)
	}
	if !path.Addr.IsValid() {
		res.Endpoint = ""
	}
	if err != nil {
		res.Error = "timeout: no answer within 2s"
		return res, nil
	}
	res.RTTMillis = float64(rtt.Microseconds()) / 1000
	return res, nil
}

// ownCandidates is what this node last learned about its own addresses.
func (a *Agent) ownCandidates() []string {
	a.candsMu.Lock()
	defer a.candsMu.Unlock()
	return slices.Clone(a.cands)
}

func (a *Agent) setOwnCandidates(eps []string) {
	a.candsMu.Lock()
	defer a.candsMu.Unlock()
	a.cands = slices.Clone(eps)
}

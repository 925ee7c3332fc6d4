package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/nat"
	"github.com/runos/runos-agent/raftstore"
)

// cgnat is RFC 6598 shared address space: behind a carrier NAT, not public.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// isPublic reports whether peers anywhere could reach ip.
func isPublic(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsGlobalUnicast() && !ip.IsPrivate() && !cgnat.Contains(ip) && !raftstore.MeshPrefix.Contains(ip)
}

// parseEndpoints resolves host:port strings to addresses (names through
// DNS, bounded); unusable ones are skipped.
func parseEndpoints(eps []string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ep := range eps {
		if ap, err := netip.ParseAddrPort(ep); err == nil {
			out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
			continue
		}
		host, port, err := net.SplitHostPort(ep)
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
		cancel()
		if err != nil || len(ips) == 0 {
			continue
		}
		if ap, err := netip.ParseAddrPort(net.JoinHostPort(ips[0].Unmap().String(), port)); err == nil {
			out = append(out, ap)
		}
	}
	return out
}

// offersRelay decides --relay: on and off are explicit; auto offers relaying
// when the node is publicly reachable (an advertised public address, or a
// STUN-reflexive address that is one of its own, i.e. no NAT).
func offersRelay(mode string, advertised []netip.AddrPort, reflexive netip.AddrPort) bool {
	switch mode {
	case "on":
		return true
	case "off":
		return false
	}
	for _, ap := range advertised {
		if isPublic(ap.Addr()) {
			return true
		}
		if reflexive.IsValid() && ap == reflexive {
			return true
		}
	}
	return false
}

// stunServers are the members' public addresses (every member answers
// STUN on its WireGuard port) plus the configured --stun servers. There is
// no public default.
func (a *Agent) stunServers(extra []string) []netip.AddrPort {
	var out []netip.AddrPort
	add := func(ap netip.AddrPort) {
		if ap.IsValid() && !slices.Contains(out, ap) {
			out = append(out, ap)
		}
	}
	for _, ap := range parseEndpoints(append(slices.Clone(a.cfg.STUN), extra...)) {
		add(ap)
	}
	for _, n := range a.knownNodes() {
		if n.ID == a.cfg.NodeID {
			continue
		}
		for _, ap := range parseEndpoints(n.Endpoints) {
			if isPublic(ap.Addr()) {
				add(ap)
			}
		}
	}
	return out
}

// candidates is what this node tells the others to probe: its advertised
// addresses and its STUN-reflexive one.
func (a *Agent) candidates(ctx context.Context) (eps []string, relay bool) {
	advertised := parseEndpoints(a.cfg.Endpoints)
	eps = slices.Clone(a.cfg.Endpoints)
	var refl netip.AddrPort
	if servers := a.stunServers(nil); len(servers) > 0 {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := a.bind.Reflexive(sctx, servers)
		cancel()
		if err != nil {
			a.log.Debug("no reflexive address", "err", err)
		} else {
			refl = r
			if !slices.Contains(eps, r.String()) && !slices.Contains(advertised, r) {
				eps = append(eps, r.String())
			}
		}
	}
	return eps, offersRelay(a.cfg.Relay, advertised, refl)
}

// natPeers turns node records into the Bind's peer list.
func natPeers(nodes []*raftstore.Node) []nat.PeerInfo {
	out := make([]nat.PeerInfo, 0, len(nodes))
	for _, n := range nodes {
		key, err := mesh.ParseKey(n.PublicKey)
		if err != nil {
			continue
		}
		out = append(out, nat.PeerInfo{PublicKey: key, Candidates: parseEndpoints(n.Endpoints), Relay: n.Relay})
	}
	return out
}

// pathEvent queues a path change for the event log; the Bind's callback
// must not block.
func (a *Agent) onPathChange(ev nat.PathEvent) {
	if ev.Old.Kind == nat.PathDirect && ev.New.Kind != nat.PathDirect {
		// Losing a direct path often means our own NAT remapped or our
		// address changed: re-learn and republish candidates now.
		select {
		case a.candidateHint <- struct{}{}:
		default:
		}
	}
	if ev.Old.Kind == ev.New.Kind && ev.Old.Via == ev.New.Via {
		return // an address change within the same kind of path
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
			peer := a.nameByKey(ev.Peer)
			detail := "to " + peer + ": " + a.describePath(ev.New)
			a.log.Info("path changed", "peer", peer, "from", ev.Old.Kind, "to", ev.New.Kind, "path", a.describePath(ev.New))
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := a.store.RecordEvent(cctx, raftstore.Event{Kind: raftstore.EventPathChanged, Node: a.cfg.Name,
				From: ev.Old.Kind.String(), To: ev.New.Kind.String(), Detail: detail})
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

func (a *Agent) describePath(p nat.PathInfo) string {
	switch p.Kind {
	case nat.PathDirect:
		return "direct " + p.Addr.String()
	case nat.PathRelay:
		return "via " + a.nameByKey(p.Via)
	}
	return "unreachable"
}

// Netcheck reports what the underlay allows, through this node's socket.
func (a *Agent) Netcheck(ctx context.Context, extra []string) (*api.Netcheck, error) {
	servers := a.stunServers(extra)
	if len(servers) == 0 {
		return nil, errors.New("no STUN servers: no member has a public address; pass --stun HOST:PORT")
	}
	return netcheck(ctx, a.bind, servers, uint16(a.cfg.ListenPort)), nil
}

func netcheck(ctx context.Context, b *nat.Bind, servers []netip.AddrPort, port uint16) *api.Netcheck {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rep := b.Netcheck(ctx, servers)
	out := &api.Netcheck{UDP: rep.UDP, Mapping: mappingName(rep.Mapping), LANAddresses: []string{}, Results: []api.STUNResult{}}
	if rep.Public.IsValid() {
		out.Public = rep.Public.String()
	}
	if lan, err := nat.LocalCandidates(port); err == nil {
		for _, ap := range lan {
			out.LANAddresses = append(out.LANAddresses, ap.String())
		}
	}
	for _, r := range rep.Results {
		res := api.STUNResult{Server: r.Server.String(), RTTMillis: float64(r.RTT.Microseconds()) / 1000}
		if r.Mapped.IsValid() {
			res.Mapped = r.Mapped.String()
		}
		if r.Err != nil {
			res.Error = r.Err.Error()
		}
		out.Results = append(out.Results, res)
	}
	return out
}

func mappingName(m nat.MappingBehavior) string {
	switch m {
	case nat.MappingEndpointIndependent:
		return "endpoint-independent"
	case nat.MappingEndpointDependent:
		return "endpoint-dependent"
	}
	return "unknown"
}

// StandaloneNetcheck runs netcheck without an agent: a throwaway key and
// socket (ephemeral port) in a userspace device, so the Bind's receive
// path runs exactly as in the daemon.
func StandaloneNetcheck(ctx context.Context, stun []string, log *slog.Logger) (*api.Netcheck, error) {
	servers := parseEndpoints(stun)
	if len(servers) == 0 {
		return nil, errors.New("no STUN servers: pass --stun HOST:PORT (there is no public default), or run netcheck where an agent runs (--data-dir)")
	}
	key, err := mesh.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	b, err := nat.New(nat.Config{PrivateKey: key}, log)
	if err != nil {
		return nil, err
	}
	dev, err := mesh.New(mesh.Config{
		Mode: mesh.ModeUserspace, PrivateKey: key, Address: netip.MustParseAddr("172.24.255.254"), Bind: b,
	}, log)
	if err != nil {
		b.Close()
		return nil, err
	}
	defer dev.Close()
	return netcheck(ctx, b, servers, uint16(dev.ListenPort())), nil
}

// meshPingPort is a UDP echo on every node's mesh IP for `runos-agent ping`.
const meshPingPort = NodeAPIPort

// startPingEcho answers mesh pings; the echo rides WireGuard over whatever
// path the Bind chose, so its round trip is the overlay's.
func (a *Agent) startPingEcho() error {
	pc, err := a.dev.Net().ListenPacket("udp", netip.AddrPortFrom(a.cfg.MeshIP, meshPingPort).String())
	if err != nil {
		return fmt.Errorf("ping echo: %w", err)
	}
	done := make(chan struct{})
	a.closers = append(a.closers, func() error {
		err := pc.Close()
		<-done
		return err
	})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
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
		return nil, fmt.Errorf("%w: %s is this node", errBadRequest, name)
	}
	key, err := mesh.ParseKey(target.PublicKey)
	if err != nil {
		return nil, err
	}
	res := &api.PingResult{Node: name, Seq: seq}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := a.dev.Net().DialContext(ctx, "udp", netip.AddrPortFrom(target.MeshIP, meshPingPort).String())
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	msg := fmt.Appendf(nil, "runos-ping %d %d", seq, time.Now().UnixNano())
	start := time.Now()
	buf := make([]byte, 64)
	if _, err = conn.Write(msg); err == nil {
		_, err = conn.Read(buf)
	}
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
	res.RTTMillis = float64(time.Since(start).Microseconds()) / 1000
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

// withGossipCandidates adds to each node's recorded endpoints the ones its
// latest heartbeat announced, so a remapped NAT is tried at once rather
// than after the next Raft update (which needs a quorum).
func (a *Agent) withGossipCandidates(nodes []*raftstore.Node) []*raftstore.Node {
	out := make([]*raftstore.Node, len(nodes))
	for i, n := range nodes {
		out[i] = n
		cands := a.health.Candidates(n.Name)
		if len(cands) == 0 {
			continue
		}
		c := *n
		c.Endpoints = slices.Clone(n.Endpoints)
		for _, ep := range cands {
			if !slices.Contains(c.Endpoints, ep) {
				c.Endpoints = append(c.Endpoints, ep)
			}
		}
		out[i] = &c
	}
	return out
}

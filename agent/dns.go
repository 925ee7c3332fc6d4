package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/kubehost/clusterdns"
	"github.com/runos/runos-agent/meshdns"
	"github.com/runos/runos-agent/raftstore"
)

// The node resolver (package meshdns): NODE.<zone> and OSID.<zone> from
// this node's copy of the state, cluster.local handed to managed
// Kubernetes' cluster DNS in process, everything else forwarded. It is
// the node's only DNS server: managed Kubernetes' pods use it too.

// DNSConfig is how the node resolver runs.
type DNSConfig struct {
	// Off keeps the resolver from listening, except while managed
	// Kubernetes runs on this node: its pods resolve through it (kubelet's
	// clusterDNS is the mesh IP), so it then listens on the mesh IP alone
	// (neither wg1 nor Loopback).
	Off bool
	// Port on the mesh (and wg1) addresses (default 53).
	Port int
	// Loopback are extra "ip:port" addresses on the host's loopback, for
	// the host's own resolver in userspace mode, where the mesh IP is not
	// on the host.
	Loopback []string
	// Upstreams are the resolvers for names outside the cluster ("ip" or
	// "ip:port"; default: the host's resolv.conf).
	Upstreams []string
}

// dnsAllow are the sources the resolver serves: the mesh (wg1 devices
// included), the pods, and the host itself. Everything else is REFUSED:
// the mesh IP is reachable from more places than the cluster.
var dnsAllow = []netip.Prefix{
	raftstore.MeshPrefix, raftstore.PodPrefix,
	netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"),
}

// dnsRetry is how often listen addresses that could not be bound (port 53
// taken by another resolver) are tried again.
const dnsRetry = 10 * time.Second

func (a *Agent) newDNS() error {
	if a.dnsCfg.Port == 0 {
		a.dnsCfg.Port = 53
	}
	for _, l := range a.dnsCfg.Loopback {
		ap, err := netip.ParseAddrPort(l)
		if err != nil || !ap.Addr().IsLoopback() {
			return fmt.Errorf("dns: loopback listen address %q: want a loopback ip:port", l)
		}
	}
	s, err := meshdns.New(meshdns.Config{Allow: dnsAllow, Upstreams: a.dnsCfg.Upstreams}, a.dev.Net(), a.log)
	if err != nil {
		return err
	}
	a.dns = s
	a.closers = append(a.closers, s.Close)
	a.refreshDNS()
	if a.dnsCfg.Off {
		a.log.Info("DNS resolver off (--dns=false): it listens only while managed Kubernetes runs on this node, on the mesh IP, for the pods (kubelet's clusterDNS)",
			"addr", netip.AddrPortFrom(a.cfg.MeshIP, uint16(a.dnsCfg.Port)))
	}
	return nil
}

// startDNS binds the resolver's addresses; a failure is logged and
// retried by dnsLoop, not fatal: the node works without its resolver.
func (a *Agent) startDNS(ctx context.Context) {
	a.dns.SetListenAddrs(a.dnsListenAddrs())
	a.setDNSListenErr(a.dns.Start(ctx))
	a.goLoop(ctx, a.dnsLoop)
}

// SetDNSExtraListen adds addresses of this node (its wg1 address) the
// resolver listens on besides the mesh IP, on the same port; nil removes
// them.
func (a *Agent) SetDNSExtraListen(addrs []netip.Addr) {
	a.dnsMu.Lock()
	a.dnsExtra = slices.Clone(addrs)
	a.dnsMu.Unlock()
	a.setDNSListenErr(a.dns.SetListenAddrs(a.dnsListenAddrs()))
}

func (a *Agent) dnsListenAddrs() []netip.AddrPort {
	port := uint16(a.dnsCfg.Port)
	out := []netip.AddrPort{netip.AddrPortFrom(a.cfg.MeshIP, port)}
	a.dnsMu.Lock()
	defer a.dnsMu.Unlock()
	if a.dnsCfg.Off {
		if len(a.dnsMounted) == 0 {
			return nil
		}
		return out
	}
	for _, ip := range a.dnsExtra {
		out = append(out, netip.AddrPortFrom(ip, port))
	}
	for _, l := range a.dnsCfg.Loopback {
		out = append(out, netip.MustParseAddrPort(l)) // checked by newDNS
	}
	return out
}

func (a *Agent) setDNSListenErr(err error) {
	a.dnsMu.Lock()
	defer a.dnsMu.Unlock()
	if err != nil && (a.dnsListenErr == nil || err.Error() != a.dnsListenErr.Error()) {
		a.log.Warn("DNS resolver: not listening on every address (retrying)", "err", err)
	}
	a.dnsListenErr = err
}

// dnsLoop keeps the zone and its names equal to the state, and retries
// addresses that could not be bound.
func (a *Agent) dnsLoop(ctx context.Context) {
	for {
		changed := a.store.Changed()
		a.refreshDNS()
		a.dnsMu.Lock()
		failed := a.dnsListenErr != nil
		a.dnsMu.Unlock()
		if failed {
			a.setDNSListenErr(a.dns.SetListenAddrs(a.dnsListenAddrs()))
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-time.After(dnsRetry):
		}
	}
}

// refreshDNS reads only the zone's names, not a copy of the whole state:
// it runs on every state change, on every node.
func (a *Agent) refreshDNS() {
	zone, names := a.store.DNSNames()
	if err := a.dns.SetZone(zone); err != nil {
		a.log.Warn("DNS zone", "zone", zone, "err", err)
	}
	a.dns.SetRecords(names)
}

// mountClusterDNS is kubehost's MountDNS: managed Kubernetes' cluster DNS
// answers cluster.local inside the node resolver, which listens for it
// even when off.
func (a *Agent) mountClusterDNS(domain string, h *clusterdns.Handler) {
	var mh meshdns.Handler // a nil *Handler would be a non-nil Handler
	if h != nil {
		mh = h
	}
	if err := a.dns.Mount(domain, mh); err != nil {
		a.log.Warn("mounting cluster DNS", "domain", domain, "err", err)
		return
	}
	a.dnsMu.Lock()
	a.dnsMounted = slices.DeleteFunc(a.dnsMounted, func(d string) bool { return d == domain })
	if h != nil {
		a.dnsMounted = append(a.dnsMounted, domain)
	}
	a.dnsMu.Unlock()
	if !a.dnsCfg.Off {
		return
	}
	listen := a.dnsListenAddrs()
	if h != nil {
		a.log.Info("DNS resolver off (--dns=false), but listening for managed Kubernetes' pods", "addrs", listen)
	} else {
		a.log.Info("DNS resolver off (--dns=false): managed Kubernetes stopped, not listening")
	}
	a.setDNSListenErr(a.dns.SetListenAddrs(listen))
}

// DNSStatus reports this node's resolver.
func (a *Agent) DNSStatus() *api.DNSStatus {
	st, _ := a.store.State()
	out := &api.DNSStatus{Zone: st.EffectiveDNSZone()}
	a.dnsMu.Lock()
	out.Mounted = slices.Clone(a.dnsMounted)
	if a.dnsListenErr != nil {
		out.ListenError = a.dnsListenErr.Error()
	}
	a.dnsMu.Unlock()
	sort.Strings(out.Mounted)
	if out.Enabled = !a.dnsCfg.Off || len(out.Mounted) > 0; !out.Enabled {
		return out
	}
	for _, ap := range a.dns.Addrs() {
		out.Listen = append(out.Listen, ap.String())
	}
	out.Upstreams = a.dns.Upstreams()
	out.Names = len(st.DNSNames())
	stats := a.dns.Stats()
	out.Queries, out.CacheEntries = stats.Queries, stats.CacheEntries
	return out
}

// SetDNSZone changes the cluster's zone (every node follows its state).
func (a *Agent) SetDNSZone(ctx context.Context, req api.DNSZoneRequest) (*api.DNSStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		return nil, err
	}
	if req.Zone != "" {
		if _, err := raftstore.NormalizeDNSZone(req.Zone); err != nil {
			return nil, fmt.Errorf("%w: %w", httpapi.ErrBadRequest, err)
		}
	}
	res, err := a.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpSetDNSZone, DNS: &raftstore.DNSCmd{Zone: req.Zone}})
	if err == nil {
		err = res.Error()
	}
	if errors.Is(err, raftstore.ErrDNSZone) {
		err = fmt.Errorf("%w: %w", httpapi.ErrBadRequest, err)
	}
	if err != nil {
		return nil, err
	}
	a.refreshDNS()
	return a.DNSStatus(), nil
}

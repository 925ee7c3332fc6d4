package nat

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"time"
)

// cgnat is RFC 6598 shared address space: behind a carrier NAT, not public.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// IsPublic reports whether peers anywhere could reach ip. (The mesh,
// 172.24.0.0/16, is inside the private 172.16.0.0/12.)
func IsPublic(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsGlobalUnicast() && !ip.IsPrivate() && !cgnat.Contains(ip)
}

// ParseEndpoints resolves host:port strings to addresses (names through
// DNS, IPv4 only, 2 s each); unusable ones are skipped.
func ParseEndpoints(eps []string) []netip.AddrPort {
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

// OffersRelay decides --relay: "on" and "off" are explicit; "auto" (or
// anything else) offers relaying when the node is publicly reachable: an
// advertised public address, or a STUN-reflexive address that is one of
// its own, i.e. no NAT.
func OffersRelay(mode string, advertised []netip.AddrPort, reflexive netip.AddrPort) bool {
	switch mode {
	case "on":
		return true
	case "off":
		return false
	}
	for _, ap := range advertised {
		if IsPublic(ap.Addr()) {
			return true
		}
		if reflexive.IsValid() && ap == reflexive {
			return true
		}
	}
	return false
}

// STUNServers are the configured servers (--stun) and then the members'
// public addresses (every member answers STUN on its WireGuard port),
// without repeats. There is no public default.
func STUNServers(configured, memberEndpoints []string) []netip.AddrPort {
	var out []netip.AddrPort
	add := func(ap netip.AddrPort) {
		if ap.IsValid() && !slices.Contains(out, ap) {
			out = append(out, ap)
		}
	}
	for _, ap := range ParseEndpoints(configured) {
		add(ap)
	}
	for _, ap := range ParseEndpoints(memberEndpoints) {
		if IsPublic(ap.Addr()) {
			add(ap)
		}
	}
	return out
}

// Candidates is what this node tells the others to probe, and whether it
// offers relaying (relayMode as OffersRelay takes it): its advertised
// addresses and its STUN-reflexive one, learned through the Bind's socket
// from servers (the Bind must be open).
func (b *Bind) Candidates(ctx context.Context, advertised []string, relayMode string, servers []netip.AddrPort) (eps []string, relay bool) {
	parsed := ParseEndpoints(advertised)
	eps = slices.Clone(advertised)
	var refl netip.AddrPort
	if len(servers) > 0 {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := b.Reflexive(sctx, servers)
		cancel()
		if err != nil {
			b.log.Debug("no reflexive address", "err", err)
		} else {
			refl = r
			if !slices.Contains(eps, r.String()) && !slices.Contains(parsed, r) {
				eps = append(eps, r.String())
			}
		}
	}
	return eps, OffersRelay(relayMode, parsed, refl)
}

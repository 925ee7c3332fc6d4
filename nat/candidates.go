package nat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
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
		} else if err := anyCandidate.Check(r); err != nil {
			// A STUN server (any member answers STUN) could claim anything.
			b.log.Warn("ignoring a bad reflexive address", "err", err)
		} else {
			refl = r
			if !slices.Contains(eps, r.String()) && !slices.Contains(parsed, r) {
				eps = append(eps, r.String())
			}
		}
	}
	return eps, OffersRelay(relayMode, parsed, refl)
}

// thisNetwork is 0.0.0.0/8: "this host on this network", never a
// destination.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// CandidatePolicy says which underlay addresses a node accepts as another
// member's candidates. Whatever a member advertises (at join, in its
// record, by gossip) is checked against the receiving node's policy, so a
// member cannot point the others' WireGuard at their own loopback services
// or at addresses no packet can reach.
type CandidatePolicy struct {
	// AllowLoopback accepts 127.0.0.0/8 and ::1: only for a node whose own
	// underlay is loopback (dev clusters and tests, all on one host).
	AllowLoopback bool
	// AllowIPv6 accepts IPv6 candidates: for a node that has an IPv6
	// underlay address itself.
	AllowIPv6 bool
}

// PolicyFor is the policy of a node advertising own (host:port, as
// --advertise takes them): loopback only if every own address is loopback,
// IPv6 only if one is IPv6.
func PolicyFor(own []string) CandidatePolicy {
	var p CandidatePolicy
	loop := len(own) > 0
	for _, ep := range own {
		ap, err := netip.ParseAddrPort(ep)
		if err != nil {
			loop = false
			continue
		}
		a := ap.Addr().Unmap()
		loop = loop && a.IsLoopback()
		p.AllowIPv6 = p.AllowIPv6 || a.Is6()
	}
	p.AllowLoopback = loop
	return p
}

// Check reports why ap is not an acceptable candidate, or nil.
func (p CandidatePolicy) Check(ap netip.AddrPort) error {
	a := ap.Addr().Unmap()
	switch {
	case !ap.IsValid():
		return errors.New("invalid address")
	case ap.Port() == 0:
		return fmt.Errorf("%s: port 0", ap)
	case a.IsUnspecified() || (a.Is4() && thisNetwork.Contains(a)):
		return fmt.Errorf("%s: unspecified address", ap)
	case a.IsMulticast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast():
		return fmt.Errorf("%s: multicast address", ap)
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%s: broadcast address", ap)
	case a.Zone() != "" || (a.Is6() && a.IsLinkLocalUnicast()):
		return fmt.Errorf("%s: link-local IPv6 address (meaningless on another host)", ap)
	case a.IsLoopback() && !p.AllowLoopback:
		return fmt.Errorf("%s: loopback address from another host", ap)
	case a.Is6() && !p.AllowIPv6:
		return fmt.Errorf("%s: IPv6 address, and this node's underlay is IPv4", ap)
	}
	return nil
}

// Filter returns the acceptable candidates of aps (unmapped) and what was
// wrong with the others.
func (p CandidatePolicy) Filter(aps []netip.AddrPort) (ok []netip.AddrPort, bad []error) {
	for _, ap := range aps {
		if err := p.Check(ap); err != nil {
			bad = append(bad, err)
			continue
		}
		ok = append(ok, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	return ok, bad
}

// FilterStrings is Filter for host:port strings as records and gossip
// carry them; a string that is not an IP:port is kept only if it is a
// host name with a port (resolved later by ParseEndpoints, whose results
// are filtered again).
func (p CandidatePolicy) FilterStrings(eps []string) (ok []string, bad []error) {
	for _, ep := range eps {
		if ap, err := netip.ParseAddrPort(ep); err == nil {
			if err := p.Check(ap); err != nil {
				bad = append(bad, err)
				continue
			}
			ok = append(ok, ep)
			continue
		}
		host, port, err := net.SplitHostPort(ep)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n <= 0 || n > 65535 || host == "" || strings.ContainsAny(host, "%/") {
			bad = append(bad, fmt.Errorf("%q: not host:port", ep))
			continue
		}
		ok = append(ok, ep)
	}
	return ok, bad
}

// anyCandidate is the policy SetPeers applies itself: what is never a
// usable destination whoever the receiver is. Loopback and family are the
// caller's policy.
var anyCandidate = CandidatePolicy{AllowLoopback: true, AllowIPv6: true}

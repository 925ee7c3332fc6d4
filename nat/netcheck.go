package nat

import (
	"net/netip"
	"time"
)

// STUNResult is one STUN server's answer (or failure).
type STUNResult struct {
	Server netip.AddrPort
	Mapped netip.AddrPort // zero on failure
	RTT    time.Duration
	Err    error
}

// MappingBehavior is how this node's NAT maps its socket to public
// addresses (RFC 4787 terms, as far as two STUN servers can tell).
type MappingBehavior uint8

const (
	// MappingUnknown: fewer than two servers at different addresses answered.
	MappingUnknown MappingBehavior = iota
	// MappingEndpointIndependent: every server saw the same address ("easy"
	// NAT, or no NAT): peers can reach the STUN-reflexive candidate.
	MappingEndpointIndependent
	// MappingEndpointDependent: servers saw different addresses ("hard" NAT):
	// the reflexive candidate is useless to peers; expect relaying.
	MappingEndpointDependent
)

func (m MappingBehavior) String() string {
	switch m {
	case MappingEndpointIndependent:
		return "endpoint-independent"
	case MappingEndpointDependent:
		return "endpoint-dependent"
	}
	return "unknown"
}

// NetcheckReport summarizes STUN results.
type NetcheckReport struct {
	UDP     bool           // at least one server answered
	Public  netip.AddrPort // the first answer's mapped address
	Mapping MappingBehavior
	Results []STUNResult
}

// Netcheck summarizes results; it is pure. Mapping behaviour needs answers
// from servers at two different IP addresses: two ports of one host can sit
// behind the same NAT mapping decision and prove nothing.
func Netcheck(results []STUNResult) NetcheckReport {
	r := NetcheckReport{Results: results}
	seen := map[netip.Addr]netip.AddrPort{}
	for _, res := range results {
		if res.Err != nil || !res.Mapped.IsValid() {
			continue
		}
		if !r.UDP {
			r.UDP, r.Public = true, res.Mapped
		}
		if _, ok := seen[res.Server.Addr()]; !ok {
			seen[res.Server.Addr()] = res.Mapped
		}
	}
	if len(seen) < 2 {
		return r
	}
	r.Mapping = MappingEndpointIndependent
	for _, m := range seen {
		if m != r.Public {
			r.Mapping = MappingEndpointDependent
		}
	}
	return r
}

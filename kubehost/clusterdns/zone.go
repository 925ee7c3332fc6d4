package clusterdns

import (
	"strings"

	"github.com/miekg/dns"
)

// answerZone answers q, a name under the cluster domain. The shapes that
// exist are the domain itself, svc.DOMAIN, NAMESPACE.svc.DOMAIN (empty
// non-terminals: NOERROR without records) and SERVICE.NAMESPACE.svc.DOMAIN;
// everything else is NXDOMAIN. Pod names and SRV records are not served.
func (s *Server) answerZone(req *dns.Msg, q dns.Question) *dns.Msg {
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		return reply(req, dns.RcodeRefused)
	}
	switch q.Qtype {
	case dns.TypeAXFR, dns.TypeIXFR:
		return reply(req, dns.RcodeRefused)
	}
	if sl, ok := s.cfg.Lookup.(SyncedLookup); ok && !sl.Synced() {
		return reply(req, dns.RcodeServerFailure)
	}
	resp := reply(req, dns.RcodeSuccess)
	resp.Authoritative = true
	labels := dns.SplitDomainName(strings.ToLower(q.Name))
	if len(labels) < s.nDomain {
		// IsSubDomain and SplitDomainName disagree on odd escapes.
		return s.negative(resp, dns.RcodeNameError)
	}
	rel := labels[:len(labels)-s.nDomain]
	switch {
	case len(rel) == 0:
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			soa := s.soa()
			soa.Hdr.Name = q.Name // as asked: 0x20-randomising resolvers compare case
			resp.Answer = append(resp.Answer, soa)
			return resp
		}
		return s.negative(resp, dns.RcodeSuccess)
	case len(rel) == 1 && rel[0] == "svc":
		return s.negative(resp, dns.RcodeSuccess)
	case len(rel) == 2 && rel[1] == "svc":
		if nl, ok := s.cfg.Lookup.(NamespaceLookup); ok && nl.Namespace(rel[0]) {
			return s.negative(resp, dns.RcodeSuccess)
		}
		return s.negative(resp, dns.RcodeNameError)
	case len(rel) == 3 && rel[2] == "svc":
		ips, ok := s.cfg.Lookup.Service(rel[1], rel[0])
		if !ok {
			return s.negative(resp, dns.RcodeNameError)
		}
		hdr := func(t uint16) dns.RR_Header {
			return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: s.ttl}
		}
		for _, ip := range ips {
			ip = ip.Unmap()
			switch {
			case ip.Is4() && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY):
				resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: ip.AsSlice()})
			case ip.Is6() && (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY):
				resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: ip.AsSlice()})
			}
		}
		if len(resp.Answer) == 0 {
			return s.negative(resp, dns.RcodeSuccess)
		}
		return resp
	default:
		return s.negative(resp, dns.RcodeNameError)
	}
}

// negative turns resp into NXDOMAIN or NODATA, with the SOA in the
// authority section so resolvers know how long to cache it (RFC 2308).
func (s *Server) negative(resp *dns.Msg, rcode int) *dns.Msg {
	resp.Rcode = rcode
	resp.Answer = nil
	resp.Ns = append(resp.Ns, s.soa())
	return resp
}

// soa is built per answer: packing writes into an RR's header, so answers
// in flight must not share one.
func (s *Server) soa() *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: s.domain, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.ttl},
		Ns:      "ns.dns." + s.domain,
		Mbox:    "hostmaster." + s.domain,
		Serial:  s.serial,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  s.ttl,
	}
}

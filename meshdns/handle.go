package meshdns

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// zoneData is the zone and its names, replaced whole.
type zoneData struct {
	name    string // canonical: lower case, fully qualified
	nLabels int
	names   map[string][]netip.Addr // by lower-case label
	ttl     uint32
	serial  uint32
}

func newZoneData(zone string, names map[string][]netip.Addr, ttl uint32) (*zoneData, error) {
	z := dns.CanonicalName(zone)
	if _, ok := dns.IsDomainName(z); !ok || z == "." || len(z) > 200 {
		return nil, fmt.Errorf("meshdns: invalid zone %q", zone)
	}
	lower := make(map[string][]netip.Addr, len(names))
	for k, v := range names {
		lower[strings.ToLower(k)] = v
	}
	return &zoneData{name: z, nLabels: dns.CountLabel(z), names: lower, ttl: ttl,
		serial: uint32(time.Now().Unix())}, nil
}

// ValidZone checks a zone name before it is set.
func ValidZone(zone string) error {
	_, err := newZoneData(zone, nil, 0)
	if err == nil && !strings.Contains(strings.Trim(zone, "."), ".") {
		// A single label would shadow a top-level domain for every client.
		err = fmt.Errorf("meshdns: zone %q must have at least two labels", zone)
	}
	return err
}

// Answer computes the answer to req from src; tcp selects the size limit.
// A nil answer means drop (nothing sensible to say: a response, not a
// query).
func (s *Server) Answer(src netip.Addr, tcp bool, req *dns.Msg) *dns.Msg {
	if req.Response {
		s.stats.dropped.Add(1)
		return nil
	}
	if !s.allowed(src) {
		s.stats.refused.Add(1)
		return reply(req, dns.RcodeRefused)
	}
	if req.Opcode != dns.OpcodeQuery {
		s.stats.failed.Add(1)
		return reply(req, dns.RcodeNotImplemented)
	}
	if len(req.Question) != 1 {
		s.stats.failed.Add(1)
		return reply(req, dns.RcodeFormatError)
	}
	opt := req.IsEdns0()
	if opt != nil && opt.Version() != 0 {
		s.stats.failed.Add(1)
		resp := reply(req, dns.RcodeBadVers)
		resp.SetEdns0(ednsSize, opt.Do())
		return resp
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	var resp *dns.Msg
	zd := s.zone.Load()
	if dns.IsSubDomain(zd.name, name) {
		resp = s.answerZone(zd, req, q)
		if opt != nil {
			resp.SetEdns0(ednsSize, opt.Do())
		}
		s.stats.count(resp.Rcode, &s.stats.zone)
	} else if h := s.mount(name); h != nil {
		resp = h.Answer(src, tcp, req)
		s.stats.count(resp.Rcode, &s.stats.mounted)
	} else {
		resp = s.forward(req)
	}
	size := dns.MaxMsgSize
	if !tcp {
		size = dns.MinMsgSize
		if opt != nil {
			size = max(int(opt.UDPSize()), dns.MinMsgSize)
		}
	}
	resp.Truncate(size)
	return resp
}

// mount is the handler of the longest mounted domain holding name.
func (s *Server) mount(name string) Handler {
	m := *s.mounts.Load()
	if len(m) == 0 {
		return nil
	}
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		if h, ok := m[name[off:]]; ok {
			return h
		}
	}
	return nil
}

func (s *Server) allowed(a netip.Addr) bool {
	for _, p := range s.cfg.Allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// answerZone answers q, a name in the zone: the apex (SOA and NS),
// LABEL.<zone> for a node or a workload, NXDOMAIN for everything else.
func (s *Server) answerZone(zd *zoneData, req *dns.Msg, q dns.Question) *dns.Msg {
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		return reply(req, dns.RcodeRefused)
	}
	switch q.Qtype {
	case dns.TypeAXFR, dns.TypeIXFR:
		return reply(req, dns.RcodeRefused)
	}
	resp := reply(req, dns.RcodeSuccess)
	resp.Authoritative = true
	labels := dns.SplitDomainName(strings.ToLower(q.Name))
	if len(labels) < zd.nLabels {
		return negative(zd, resp, dns.RcodeNameError) // odd escapes
	}
	rel := labels[:len(labels)-zd.nLabels]
	hdr := func(t uint16) dns.RR_Header {
		// As asked: 0x20-randomising resolvers compare case.
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: zd.ttl}
	}
	switch len(rel) {
	case 0:
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			soa := zd.soa()
			soa.Hdr.Name = q.Name
			resp.Answer = append(resp.Answer, soa)
		}
		if q.Qtype == dns.TypeNS || q.Qtype == dns.TypeANY {
			resp.Answer = append(resp.Answer, &dns.NS{Hdr: hdr(dns.TypeNS), Ns: "ns." + zd.name})
		}
		if len(resp.Answer) == 0 {
			return negative(zd, resp, dns.RcodeSuccess)
		}
		return resp
	case 1:
		ips, ok := zd.names[rel[0]]
		if !ok {
			return negative(zd, resp, dns.RcodeNameError)
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
			return negative(zd, resp, dns.RcodeSuccess) // NODATA
		}
		return resp
	}
	return negative(zd, resp, dns.RcodeNameError)
}

// negative turns resp into NXDOMAIN or NODATA, with the zone's SOA in the
// authority section so resolvers know how long to cache it (RFC 2308).
func negative(zd *zoneData, resp *dns.Msg, rcode int) *dns.Msg {
	resp.Rcode = rcode
	resp.Answer = nil
	resp.Ns = append(resp.Ns, zd.soa())
	return resp
}

// soa is built per answer: packing writes into an RR's header, so answers
// in flight must not share one.
func (zd *zoneData) soa() *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zd.name, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: zd.ttl},
		Ns:      "ns." + zd.name,
		Mbox:    "hostmaster." + zd.name,
		Serial:  zd.serial,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  zd.ttl,
	}
}

// reply is an answer to req without records.
func reply(req *dns.Msg, rcode int) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetRcode(req, rcode)
	resp.RecursionAvailable = true
	return resp
}

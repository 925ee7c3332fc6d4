package meshdns

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Authority answers the names of one zone as its authoritative server: A
// and AAAA records from addresses, NXDOMAIN and NODATA with the zone's SOA
// (RFC 2308), zone transfers refused. The node's zone uses it, and so do
// mounted domains (clusterdns).
type Authority struct {
	zone    string // canonical: lower case, fully qualified
	nLabels int
	ns      string // the SOA's primary server
	apexNS  bool   // the apex answers NS with ns
	ttl     uint32 // of records, the SOA and negative answers
	serial  uint32
}

// NewAuthority checks zone. ns, a name relative to the zone ("ns" is
// ns.ZONE), is the SOA's primary server, and with apexNS the apex's NS
// record. The SOA's serial is the time of the call.
func NewAuthority(zone string, ttl uint32, ns string, apexNS bool) (*Authority, error) {
	z := dns.CanonicalName(zone)
	if _, ok := dns.IsDomainName(z); !ok || z == "." || len(z) > 200 {
		return nil, fmt.Errorf("meshdns: invalid zone %q", zone)
	}
	return &Authority{zone: z, nLabels: dns.CountLabel(z), ns: ns + "." + z, apexNS: apexNS, ttl: ttl,
		serial: uint32(time.Now().Unix())}, nil
}

// Zone is the zone's name, fully qualified and in lower case.
func (a *Authority) Zone() string { return a.zone }

// Answer answers req, whose one question is under the zone, from find:
// given the labels left of the zone (lower case; none for the apex), it
// returns the name's addresses and RcodeSuccess (none of the type asked:
// NODATA), or RcodeNameError, or another rcode to answer as it is.
func (a *Authority) Answer(req *dns.Msg, find func(rel []string) ([]netip.Addr, int)) *dns.Msg {
	q := req.Question[0]
	if (q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY) || q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		return reply(req, dns.RcodeRefused)
	}
	labels := dns.SplitDomainName(strings.ToLower(q.Name))
	if len(labels) < a.nLabels {
		return a.negative(req, dns.RcodeNameError) // IsSubDomain and SplitDomainName disagree on odd escapes
	}
	rel := labels[:len(labels)-a.nLabels]
	ips, rcode := find(rel)
	switch rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return a.negative(req, rcode)
	default:
		return reply(req, rcode)
	}
	resp := reply(req, dns.RcodeSuccess)
	resp.Authoritative = true
	hdr := func(t uint16) dns.RR_Header {
		// As asked: 0x20-randomising resolvers compare case.
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: a.ttl}
	}
	if len(rel) == 0 {
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			soa := a.soa()
			soa.Hdr.Name = q.Name
			resp.Answer = append(resp.Answer, soa)
		}
		if a.apexNS && (q.Qtype == dns.TypeNS || q.Qtype == dns.TypeANY) {
			resp.Answer = append(resp.Answer, &dns.NS{Hdr: hdr(dns.TypeNS), Ns: a.ns})
		}
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
		return a.negative(req, dns.RcodeSuccess) // NODATA
	}
	return resp
}

// negative is NXDOMAIN or NODATA, with the zone's SOA in the authority
// section so resolvers know how long to cache it (RFC 2308).
func (a *Authority) negative(req *dns.Msg, rcode int) *dns.Msg {
	resp := reply(req, rcode)
	resp.Authoritative = true
	resp.Ns = append(resp.Ns, a.soa())
	return resp
}

// soa is built per answer: packing writes into an RR's header, so answers
// in flight must not share one.
func (a *Authority) soa() *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: a.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: a.ttl},
		Ns:      a.ns,
		Mbox:    "hostmaster." + a.zone,
		Serial:  a.serial,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  a.ttl,
	}
}

// zoneData is the node's zone and its names, replaced whole.
type zoneData struct {
	*Authority
	names map[string][]netip.Addr // by lower-case label
}

func newZoneData(zone string, names map[string][]netip.Addr, ttl uint32) (*zoneData, error) {
	auth, err := NewAuthority(zone, ttl, "ns", true)
	if err != nil {
		return nil, err
	}
	lower := make(map[string][]netip.Addr, len(names))
	for k, v := range names {
		lower[strings.ToLower(k)] = v
	}
	return &zoneData{Authority: auth, names: lower}, nil
}

// find is the zone's Authority lookup: the apex, and LABEL.<zone> for a
// node or a workload.
func (zd *zoneData) find(rel []string) ([]netip.Addr, int) {
	switch len(rel) {
	case 0:
		return nil, dns.RcodeSuccess
	case 1:
		if ips, ok := zd.names[rel[0]]; ok {
			return ips, dns.RcodeSuccess
		}
	}
	return nil, dns.RcodeNameError
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
	name := strings.ToLower(req.Question[0].Name)
	var resp *dns.Msg
	forwarded := false
	if zd := s.zone.Load(); dns.IsSubDomain(zd.zone, name) {
		resp = zd.Answer(req, zd.find)
		s.stats.count(resp.Rcode, &s.stats.zone)
	} else if h := s.mount(name); h != nil {
		resp = h.Answer(req)
		s.stats.count(resp.Rcode, &s.stats.mounted)
	} else {
		resp, forwarded = s.forward(req), true
	}
	if opt != nil && !forwarded { // an upstream's answer has its own
		resp.SetEdns0(ednsSize, opt.Do())
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

// reply is an answer to req without records.
func reply(req *dns.Msg, rcode int) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetRcode(req, rcode)
	resp.RecursionAvailable = true
	return resp
}

package meshdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/miekg/dns"
)

// counters are the server's query counts by result.
type counters struct {
	zone, zoneNX  atomic.Uint64 // answered from the zone: records or NODATA; NXDOMAIN
	mounted       atomic.Uint64 // handed to a mounted domain
	forwarded     atomic.Uint64 // answered by an upstream (cache miss)
	cached        atomic.Uint64 // answered from the cache
	coalesced     atomic.Uint64 // answered by an upstream exchange of an identical question
	servfail      atomic.Uint64 // no upstream answered (or none configured)
	refused       atomic.Uint64 // source outside the cluster's networks
	failed        atomic.Uint64 // malformed or unsupported query
	dropped       atomic.Uint64 // not a query at all
	cacheEvicted  atomic.Uint64
	upstreamFails atomic.Uint64 // exchanges with one upstream that failed
}

// count adds a zone or mount answer to its counter.
func (c *counters) count(rcode int, ok *atomic.Uint64) {
	if ok == &c.zone && rcode == dns.RcodeNameError {
		c.zoneNX.Add(1)
		return
	}
	ok.Add(1)
}

// Stats are the server's counters since New.
type Stats struct {
	// Queries by result: "local" (answered from the zone, records or
	// NODATA), "local_nxdomain", "kubernetes" (a mounted domain),
	// "forwarded" (an upstream answered; a cache miss), "cached",
	// "coalesced" (answered by the upstream exchange of an identical
	// question already in flight), "servfail" (no upstream answered),
	// "refused" (source outside the cluster), "error" (malformed or
	// unsupported query), "dropped".
	Queries map[string]uint64
	// Waiting is the number of client queries waiting on an upstream now,
	// whether they asked it or joined an identical question in flight.
	Waiting int
	// CacheEntries is the number of cached answers now; CacheEvictions
	// counts live ones pushed out because the cache was full.
	CacheEntries   int
	CacheEvictions uint64
	// UpstreamFailures counts failed exchanges with one upstream (each
	// then tried the next).
	UpstreamFailures uint64
}

// Stats reads the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	st := Stats{
		Queries: map[string]uint64{
			"local": c.zone.Load(), "local_nxdomain": c.zoneNX.Load(), "kubernetes": c.mounted.Load(),
			"forwarded": c.forwarded.Load(), "cached": c.cached.Load(), "coalesced": c.coalesced.Load(), "servfail": c.servfail.Load(),
			"refused": c.refused.Load(), "error": c.failed.Load(), "dropped": c.dropped.Load(),
		},
		Waiting:          int(s.waiting.Load()),
		CacheEvictions:   c.cacheEvicted.Load(),
		UpstreamFailures: c.upstreamFails.Load(),
	}
	if s.cache != nil {
		st.CacheEntries = s.cache.len()
	}
	return st
}

// flight is one upstream exchange that identical questions share. Only
// one copy of a question is ever in flight: each copy would be another
// query ID and port for a forged answer to hit (the birthday attack on
// resolvers), and a burst of pods asking one name costs the upstream one
// query.
type flight struct {
	done chan struct{}
	resp *dns.Msg // nil: no upstream answered; set before done closes, never handed out
}

// forward answers req from the cache, from an identical question in
// flight, or from the upstreams.
func (s *Server) forward(req *dns.Msg) *dns.Msg {
	key := cacheKeyOf(req)
	if s.cache != nil {
		if resp := s.cache.get(key, req, s.cfg.Now()); resp != nil {
			s.stats.cached.Add(1)
			return resp
		}
	}
	if len(s.upstreams) == 0 {
		s.stats.servfail.Add(1)
		return reply(req, dns.RcodeServerFailure)
	}
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	s.flightsMu.Lock()
	if f, ok := s.flights[key]; ok {
		s.flightsMu.Unlock()
		var resp *dns.Msg
		select {
		case <-f.done:
			resp = f.resp
		case <-s.ctx.Done(): // Close; the forward ends as well
		}
		if resp == nil {
			s.stats.servfail.Add(1)
			return reply(req, dns.RcodeServerFailure)
		}
		s.stats.coalesced.Add(1)
		return sharedAnswer(resp, req)
	}
	f := &flight{done: make(chan struct{})}
	s.flights[key] = f
	s.flightsMu.Unlock()

	resp := s.ask(req, key)
	s.flightsMu.Lock()
	delete(s.flights, key)
	s.flightsMu.Unlock()
	f.resp = resp
	close(f.done)
	if resp == nil {
		s.stats.servfail.Add(1)
		return reply(req, dns.RcodeServerFailure)
	}
	s.stats.forwarded.Add(1)
	return resp.Copy()
}

// ask asks the upstreams req, in order starting with the last one that
// answered, and caches the answer; the first answer wins (whatever its
// rcode: only a transport failure moves on). nil: none answered.
func (s *Server) ask(req *dns.Msg, key cacheKey) *dns.Msg {
	select {
	case s.fwdSem <- struct{}{}:
		defer func() { <-s.fwdSem }()
	default:
		s.log.Debug("too many forwarded queries in flight", "name", req.Question[0].Name)
		return nil
	}
	n := len(s.upstreams)
	out := req.Copy()
	// Our own ID towards the upstream: the client's is not random enough
	// to stand in for ours against spoofed answers.
	out.Id = dns.Id()
	start := int(s.nextUp.Load()) % n
	self := *s.self.Load()
	for i := range n {
		idx := (start + i) % n
		if self[s.upstreams[idx]] {
			continue
		}
		resp, err := s.exchange(s.upstreams[idx], out)
		if err != nil {
			s.stats.upstreamFails.Add(1)
			s.log.Debug("upstream failed", "upstream", s.upstreams[idx], "name", out.Question[0].Name, "err", err)
			if s.ctx.Err() != nil {
				break
			}
			continue
		}
		if i > 0 {
			s.nextUp.Store(uint32(idx))
		}
		resp.Id = req.Id
		if s.cache != nil {
			if ev := s.cache.put(key, resp, s.cfg.Now()); ev {
				s.stats.cacheEvicted.Add(1)
			}
		}
		return resp
	}
	return nil
}

// sharedAnswer is msg, an answer to an identical question, as the answer
// to req: its ID, its question as it spelled it (DNS 0x20), and no OPT
// record if req had none (RFC 6891 6.1.1).
func sharedAnswer(msg, req *dns.Msg) *dns.Msg {
	resp := msg.Copy()
	resp.Id = req.Id
	resp.Question = []dns.Question{req.Question[0]}
	if req.IsEdns0() == nil {
		resp.Extra = slices.DeleteFunc(resp.Extra, func(rr dns.RR) bool { return rr.Header().Rrtype == dns.TypeOPT })
	}
	return resp
}

// exchange asks one upstream over UDP, then over TCP if the UDP answer was
// truncated, all within ForwardTimeout.
func (s *Server) exchange(upstream string, m *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ForwardTimeout)
	defer cancel()
	resp, err := exchangeNet(ctx, "udp", upstream, m)
	if err == nil && resp.Truncated {
		resp, err = exchangeNet(ctx, "tcp", upstream, m)
	}
	if err != nil {
		return nil, err
	}
	if !resp.Response || resp.Opcode != m.Opcode || len(resp.Question) != 1 ||
		!sameQuestion(resp.Question[0], m.Question[0]) {
		return nil, errors.New("answer does not match the question")
	}
	return resp, nil
}

func sameQuestion(a, b dns.Question) bool {
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && dns.CanonicalName(a.Name) == dns.CanonicalName(b.Name)
}

func exchangeNet(ctx context.Context, network, addr string, m *dns.Msg) (*dns.Msg, error) {
	c := &dns.Client{Net: network, UDPSize: dns.MaxMsgSize}
	conn, err := c.DialContext(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// The client obeys the context's deadline only; closing the socket
	// also ends the exchange when Close cancels.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, m, conn)
	return resp, err
}

// NormalizeUpstreams turns "ip" and "ip:port" into "ip:port".
func NormalizeUpstreams(in []string) ([]string, error) {
	var out []string
	for _, u := range in {
		if ap, err := netip.ParseAddrPort(u); err == nil {
			out = append(out, ap.String())
			continue
		}
		a, err := netip.ParseAddr(u)
		if err != nil {
			return nil, fmt.Errorf("meshdns: upstream %q: not an IP or IP:port", u)
		}
		out = append(out, netip.AddrPortFrom(a, 53).String())
	}
	return out, nil
}

// ResolvedUpstreams is where systemd-resolved lists the host's real
// upstream resolvers when /etc/resolv.conf points at its stub.
const ResolvedUpstreams = "/run/systemd/resolve/resolv.conf"

// UpstreamsFromResolvConf reads the nameservers of the first of paths that
// names any. Loopback nameservers are left out: on a node whose resolver is
// a local stub (systemd-resolved at 127.0.0.53, configured to send the zone
// here, or this server itself on 127.0.0.x), forwarding to it could loop.
func UpstreamsFromResolvConf(paths ...string) ([]string, error) {
	var errs []error
	for _, p := range paths {
		cc, err := dns.ClientConfigFromFile(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var out []string
		for _, srv := range cc.Servers {
			ap, err := netip.ParseAddrPort(net.JoinHostPort(srv, cc.Port))
			if err != nil || ap.Addr().Unmap().IsLoopback() {
				continue
			}
			if !slices.Contains(out, ap.String()) {
				out = append(out, ap.String())
			}
		}
		if len(out) > 0 {
			return out, nil
		}
	}
	return nil, errors.Join(errs...)
}

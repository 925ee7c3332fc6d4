package clusterdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/miekg/dns"
)

// forward relays req to the upstreams, in order starting with the last one
// that answered, and returns the first answer (whatever its rcode; only a
// transport failure moves on to the next). None answering: SERVFAIL.
func (s *Server) forward(req *dns.Msg) *dns.Msg {
	n := len(s.upstreams)
	if n == 0 {
		return reply(req, dns.RcodeServerFailure)
	}
	select {
	case s.fwdSem <- struct{}{}:
		defer func() { <-s.fwdSem }()
	default:
		s.log.Debug("too many forwarded queries in flight", "name", req.Question[0].Name)
		return reply(req, dns.RcodeServerFailure)
	}
	out := req.Copy()
	// Our own ID towards the upstream: the client's is not random enough
	// to stand in for ours against spoofed answers.
	out.Id = dns.Id()
	start := int(s.nextUp.Load()) % n
	for i := range n {
		idx := (start + i) % n
		resp, err := s.exchange(s.upstreams[idx], out)
		if err != nil {
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
		return resp
	}
	return reply(req, dns.RcodeServerFailure)
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

// normalizeUpstreams turns "ip" and "ip:port" into "ip:port".
func normalizeUpstreams(in []string) ([]string, error) {
	var out []string
	for _, u := range in {
		if ap, err := netip.ParseAddrPort(u); err == nil {
			out = append(out, ap.String())
			continue
		}
		a, err := netip.ParseAddr(u)
		if err != nil {
			return nil, fmt.Errorf("clusterdns: upstream %q: not an IP or IP:port", u)
		}
		out = append(out, netip.AddrPortFrom(a, 53).String())
	}
	return out, nil
}

// upstreamsFromResolvConf reads the nameservers of a resolv.conf, leaving
// out the addresses this server listens on: forwarding to itself would
// loop every unknown name until the timeout. A wildcard listen address
// stands for every local address, all of 127/8 included.
func upstreamsFromResolvConf(path string, listen []string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, err
	}
	own := map[netip.AddrPort]bool{}
	wildcard := map[uint16]bool{} // ports bound on every local address
	for _, l := range listen {
		ap, err := netip.ParseAddrPort(l)
		if err != nil {
			continue
		}
		if ap.Addr().IsUnspecified() {
			wildcard[ap.Port()] = true
			continue
		}
		own[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = true
	}
	local := map[netip.Addr]bool{}
	if len(wildcard) > 0 {
		addrs, _ := net.InterfaceAddrs()
		for _, ia := range addrs {
			if p, err := netip.ParsePrefix(ia.String()); err == nil {
				local[p.Addr().Unmap()] = true
			}
		}
	}
	var out []string
	for _, srv := range cc.Servers {
		ap, err := netip.ParseAddrPort(net.JoinHostPort(srv, cc.Port))
		if err != nil {
			continue
		}
		a := ap.Addr().Unmap()
		if own[netip.AddrPortFrom(a, ap.Port())] ||
			(wildcard[ap.Port()] && (a.IsLoopback() || local[a.WithZone("")])) {
			continue
		}
		if !slices.Contains(out, ap.String()) {
			out = append(out, ap.String())
		}
	}
	return out, nil
}

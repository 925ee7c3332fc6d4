package meshdns_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/runos/runos-agent/meshdns"
	"github.com/runos/runos-agent/meshdns/dnstest"
)

// Attack: a host outside the cluster's networks uses the node's resolver,
// to learn the cluster's names (the zone's, Kubernetes' services) or as an open resolver (amplification,
// cache snooping, reaching the host's private upstreams). Every query from
// such a source is REFUSED, none reaches the upstream, and answers to
// clients inside the cluster are unaffected.
//
// The outsider is 127.0.0.9: the server allows only the cluster's
// networks and 127.0.0.1, so a second loopback address stands for a
// source on the internet without leaving the machine.
func TestAttackOpenResolverRefused(t *testing.T) {
	up := dnstest.StartUpstream(t, map[string][]netip.Addr{"example.com.": dnstest.IPs("192.0.2.1")})
	s, addr := start(t, meshdns.Config{
		Upstreams: []string{up.Addr},
		Allow: []netip.Prefix{netip.MustParsePrefix("172.24.0.0/16"), netip.MustParsePrefix("172.25.0.0/16"),
			netip.MustParsePrefix("127.0.0.1/32")},
	})
	s.SetRecords(records())
	l := dnstest.NewLookup()
	l.Set("default", "web", dnstest.IPs("10.96.0.10")...)
	mountCluster(t, s, l)
	outsider := func(network string) *dns.Client {
		c := &dns.Client{Net: network, Timeout: 10 * time.Second}
		if network == "udp" {
			c.Dialer = &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9)}}
		} else {
			c.Dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9)}}
		}
		return c
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"node-a.runos.internal.", "example.com.", "runos.internal.", "web.default.svc.cluster.local."} {
			r := exchange(t, outsider(network), addr, name, dns.TypeA)
			if r.Rcode != dns.RcodeRefused || len(r.Answer)+len(r.Ns)+len(r.Extra) != 0 {
				t.Fatalf("%s %s from outside the cluster: %v, want REFUSED without records", network, name, r)
			}
		}
	}
	if n := up.UDPQueries.Load() + up.TCPQueries.Load(); n != 0 {
		t.Fatalf("the upstream got %d queries from an outsider's requests", n)
	}
	if got := s.Stats().Queries["refused"]; got != 8 {
		t.Fatalf("refused count %d, want 8", got)
	}
	// Insiders are served as before.
	if r := query(t, "udp", addr, "example.com.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("insider: %v", r)
	}
	if r := query(t, "tcp", addr, "node-a.runos.internal.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("insider: %v", r)
	}
}

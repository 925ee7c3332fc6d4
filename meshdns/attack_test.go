package meshdns_test

import (
	"net"
	"net/netip"
	"slices"
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

// Attack: cache poisoning by the birthday paradox. A client in the cluster
// (any pod) asks the node's resolver the same uncached name many times at
// once, while an off-path accomplice sprays forged answers at the
// resolver's upstream sockets. Each forwarded copy is one more random
// query ID and port a forgery may hit, so the odds grow with the copies.
// Identical questions in flight are asked upstream once; every client gets
// that one answer, with its own ID and its own spelling of the name.
func TestAttackBirthdayOneQueryInFlight(t *testing.T) {
	up := dnstest.StartUpstream(t, map[string][]netip.Addr{"bank.example.": dnstest.IPs("192.0.2.7")})
	s, addr := start(t, meshdns.Config{Upstreams: []string{up.Addr}})
	release := up.Hold(t)
	const clients = 32
	type answer struct {
		asked string
		r     *dns.Msg
		err   error
	}
	answers := make(chan answer, clients)
	for i := range clients {
		name := "bank.example."
		if i%2 == 1 {
			name = "BaNk.ExAmPlE." // DNS 0x20: another spelling of the same question
		}
		go func() {
			m := new(dns.Msg)
			m.SetQuestion(name, dns.TypeA)
			r, _, err := (&dns.Client{Timeout: 10 * time.Second}).Exchange(m, addr)
			answers <- answer{name, r, err}
		}()
	}
	// The upstream holds its answer: every client's query waits in the
	// resolver, forwarded or joined to one in flight.
	for deadline := time.Now().Add(10 * time.Second); s.Stats().Waiting < clients; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d queries waiting on the upstream", s.Stats().Waiting, clients)
		}
	}
	if n := up.UDPQueries.Load() + up.TCPQueries.Load(); n != 1 {
		t.Errorf("%d identical questions in flight reached the upstream as %d queries, want 1", clients, n)
	}
	release()
	for range clients {
		a := <-answers
		if a.err != nil {
			t.Fatalf("client asking %s: %v", a.asked, a.err)
		}
		if !slices.Equal(dnstest.AnswerIPs(a.r), []string{"192.0.2.7"}) || a.r.Question[0].Name != a.asked {
			t.Fatalf("client asking %s got %v", a.asked, a.r)
		}
	}
	if st := s.Stats(); st.Queries["forwarded"]+st.Queries["coalesced"] != clients {
		t.Errorf("stats %+v: want %d answers forwarded or coalesced", st.Queries, clients)
	}
}

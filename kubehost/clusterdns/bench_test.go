package clusterdns_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/runos/runos-agent/kubehost/clusterdns"
	"github.com/runos/runos-agent/kubehost/clusterdns/dnstest"
)

// BenchmarkQuery measures queries/s over UDP on loopback for a cluster
// name (answered from the Lookup) and for a forwarded name (a round trip to
// an upstream on loopback, which answers from memory), in the same run:
// "serial" is one client waiting for each answer, "parallel" GOMAXPROCS
// clients at once.
func BenchmarkQuery(b *testing.B) {
	l := dnstest.NewLookup()
	l.Set("default", "web", ips("10.96.0.10")...)
	up := dnstest.StartUpstream(b, map[string][]netip.Addr{"example.com.": ips("192.0.2.1")})
	_, addr := start(b, clusterdns.Config{Lookup: l, Upstreams: []string{up.Addr}})

	for _, c := range []struct{ name, qname, want string }{
		{"cluster", "web.default.svc.cluster.local.", "10.96.0.10"},
		{"forwarded", "example.com.", "192.0.2.1"},
	} {
		run := func(b *testing.B, parallel bool) {
			client := &dns.Client{Net: "udp", Timeout: 10 * time.Second}
			loop := func(next func() bool) {
				conn, err := client.Dial(addr)
				if err != nil {
					b.Error(err)
					return
				}
				defer conn.Close()
				m := new(dns.Msg)
				m.SetQuestion(c.qname, dns.TypeA)
				for next() {
					m.Id = dns.Id()
					r, _, err := client.ExchangeWithConn(m, conn)
					if err != nil {
						b.Error(err)
						return
					}
					if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != c.want {
						b.Errorf("answer %v", r)
						return
					}
				}
			}
			b.ResetTimer()
			if parallel {
				b.RunParallel(func(pb *testing.PB) { loop(pb.Next) })
			} else {
				loop(b.Loop)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
		}
		b.Run(c.name+"/serial", func(b *testing.B) { run(b, false) })
		b.Run(c.name+"/parallel", func(b *testing.B) { run(b, true) })
	}
}

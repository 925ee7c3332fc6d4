package meshdns_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/runos/runos-agent/meshdns"
	"github.com/runos/runos-agent/meshdns/dnstest"
)

// BenchmarkQuery measures one node's resolver over UDP on loopback, one
// client waiting for each answer (dnsperf-style, concurrency 1), side by
// side in one run:
//
//   - zone: NODE.runos.internal, answered from the records;
//   - cluster: SERVICE.NAMESPACE.svc.cluster.local, answered by the
//     mounted cluster DNS handler;
//   - forwarded: a name outside the zone with the cache off, so every
//     query is a round trip to the upstream (a cache miss);
//   - cached: the same name with the cache on;
//   - upstream: the same query straight to the upstream, the path a
//     client would take without this resolver.
//
// The upstream is a miekg/dns server on 127.0.0.1 answering from memory,
// so "forwarded" minus "upstream" is this resolver's own cost.
func BenchmarkQuery(b *testing.B) {
	up := dnstest.StartUpstream(b, map[string][]netip.Addr{"example.com.": dnstest.IPs("192.0.2.1")})
	cached, cachedAddr := start(b, meshdns.Config{Upstreams: []string{up.Addr}})
	cached.SetRecords(records())
	l := dnstest.NewLookup()
	l.Set("default", "web", dnstest.IPs("10.96.0.10")...)
	mountCluster(b, cached, l)
	_, missAddr := start(b, meshdns.Config{Upstreams: []string{up.Addr}, CacheSize: -1})

	for _, c := range []struct{ name, addr, qname, want string }{
		{"zone", cachedAddr, "node-a.runos.internal.", "172.24.0.1"},
		{"cluster", cachedAddr, "web.default.svc.cluster.local.", "10.96.0.10"},
		{"forwarded", missAddr, "example.com.", "192.0.2.1"},
		{"cached", cachedAddr, "example.com.", "192.0.2.1"},
		{"upstream", up.Addr, "example.com.", "192.0.2.1"},
	} {
		b.Run(c.name, func(b *testing.B) {
			client := &dns.Client{Net: "udp", Timeout: 10 * time.Second}
			conn, err := client.Dial(c.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			m := new(dns.Msg)
			m.SetQuestion(c.qname, dns.TypeA)
			lat := make([]time.Duration, 0, 1<<16)
			for b.Loop() {
				m.Id = dns.Id()
				t0 := time.Now()
				r, _, err := client.ExchangeWithConn(m, conn)
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != c.want {
					b.Fatalf("answer %v", r)
				}
			}
			b.ReportMetric(float64(len(lat))/b.Elapsed().Seconds(), "queries/s")
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
		})
	}
}

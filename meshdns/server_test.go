package meshdns_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/runos/runos-agent/kubehost/clusterdns"
	"github.com/runos/runos-agent/meshdns"
	"github.com/runos/runos-agent/meshdns/dnstest"
)

// Every test leaves no goroutine behind: listeners, forwards in flight.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clusterNets are the agent's allowed sources plus loopback.
var clusterNets = []netip.Prefix{
	netip.MustParsePrefix("172.24.0.0/16"), netip.MustParsePrefix("172.25.0.0/16"), netip.MustParsePrefix("127.0.0.0/8"),
}

// emptyResolvConf is a resolv.conf without nameservers: no upstreams.
func emptyResolvConf(t testing.TB) string {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte("search example.org\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// start runs a server on a random port of 127.0.0.1; defaults: cluster
// networks allowed, no upstreams.
func start(t testing.TB, cfg meshdns.Config) (*meshdns.Server, string) {
	t.Helper()
	if cfg.Allow == nil {
		cfg.Allow = clusterNets
	}
	if cfg.Upstreams == nil && cfg.ResolvConf == "" {
		cfg.ResolvConf = emptyResolvConf(t)
	}
	s, err := meshdns.New(cfg, nil, dnstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.SetListenAddrs([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, s.Addrs()[0].String()
}

func exchange(t testing.TB, c *dns.Client, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", c.Net, name, dns.TypeToString[qtype], err)
	}
	return r
}

func query(t testing.TB, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	return exchange(t, &dns.Client{Net: network, Timeout: 10 * time.Second}, addr, name, qtype)
}

func soaOf(t testing.TB, r *dns.Msg) *dns.SOA {
	t.Helper()
	if len(r.Ns) != 1 {
		t.Fatalf("authority section %v, want one SOA", r.Ns)
	}
	soa, ok := r.Ns[0].(*dns.SOA)
	if !ok {
		t.Fatalf("authority %v is not a SOA", r.Ns[0])
	}
	return soa
}

func records() map[string][]netip.Addr {
	return map[string][]netip.Addr{
		"node-a":      dnstest.IPs("172.24.0.1"),
		"node-b":      dnstest.IPs("172.24.0.2"),
		"pg-x2abc":    dnstest.IPs("10.96.4.7"),                // a Service's ClusterIP
		"kafka-y3def": dnstest.IPs("172.25.1.5", "172.25.2.8"), // headless: the pods
		"empty-z4ghj": nil,                                     // headless, no pod ready
	}
}

// Nodes and workloads resolve in the zone over UDP and TCP, names match
// without regard to case, unknown names are NXDOMAIN and a name with only
// A records answers AAAA with NODATA, both with the zone's SOA.
func TestZoneNames(t *testing.T) {
	s, addr := start(t, meshdns.Config{})
	s.SetRecords(records())
	for _, network := range []string{"udp", "tcp"} {
		for name, want := range map[string][]string{
			"node-a.runos.internal.":      {"172.24.0.1"},
			"NODE-B.Runos.Internal.":      {"172.24.0.2"},
			"pg-x2abc.runos.internal.":    {"10.96.4.7"},
			"kafka-y3def.runos.internal.": {"172.25.1.5", "172.25.2.8"},
		} {
			r := query(t, network, addr, name, dns.TypeA)
			if r.Rcode != dns.RcodeSuccess || !r.Authoritative || !slices.Equal(dnstest.AnswerIPs(r), want) {
				t.Fatalf("%s %s: %v, want %v", network, name, r, want)
			}
			if r.Answer[0].Header().Name != name || r.Answer[0].Header().Ttl != 5 {
				t.Fatalf("%s: record %v, want the name as asked and TTL 5", name, r.Answer[0])
			}
		}
		r := query(t, network, addr, "node-a.runos.internal.", dns.TypeAAAA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || soaOf(t, r).Hdr.Name != "runos.internal." {
			t.Fatalf("AAAA of an A-only name: %v, want NODATA with the SOA", r)
		}
		r = query(t, network, addr, "empty-z4ghj.runos.internal.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
			t.Fatalf("headless without pods: %v, want NODATA", r)
		}
		for _, name := range []string{"nope.runos.internal.", "a.node-a.runos.internal.", "ns.runos.internal."} {
			r = query(t, network, addr, name, dns.TypeA)
			if r.Rcode != dns.RcodeNameError || !r.Authoritative {
				t.Fatalf("%s: %v, want NXDOMAIN", name, r)
			}
			if soa := soaOf(t, r); soa.Ns != "ns.runos.internal." || soa.Minttl != 5 {
				t.Fatalf("%s: SOA %v", name, soa)
			}
		}
		r = query(t, network, addr, "runos.internal.", dns.TypeSOA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != dns.TypeSOA {
			t.Fatalf("apex SOA: %v", r)
		}
	}
	st := s.Stats()
	if st.Queries["local"] == 0 || st.Queries["local_nxdomain"] != 6 {
		t.Fatalf("stats %v", st.Queries)
	}
}

// The zone is the cluster's setting: after SetZone the names move, and the
// old zone is no longer answered here (it is forwarded; no upstream here,
// so SERVFAIL).
func TestSetZone(t *testing.T) {
	s, addr := start(t, meshdns.Config{})
	s.SetRecords(records())
	if err := s.SetZone("lab.example"); err != nil {
		t.Fatal(err)
	}
	if r := query(t, "udp", addr, "node-a.lab.example.", dns.TypeA); !slices.Equal(dnstest.AnswerIPs(r), []string{"172.24.0.1"}) {
		t.Fatalf("new zone: %v", r)
	}
	if r := query(t, "udp", addr, "node-a.runos.internal.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("old zone: %v, want SERVFAIL (forwarded, no upstream)", r)
	}
	for _, bad := range []string{"", "internal", "a..b", "."} {
		if err := meshdns.ValidZone(bad); err == nil {
			t.Errorf("ValidZone(%q) accepted", bad)
		}
	}
	if err := meshdns.ValidZone("home.arpa"); err != nil {
		t.Error(err)
	}
}

// fakeClock is the cache's clock in tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Names outside the zone go to the upstream once, then come from the
// cache with their TTL counted down until it runs out; answers without a
// TTL to honour (NXDOMAIN without SOA) are not cached.
func TestForwardCacheHonoursTTL(t *testing.T) {
	up := dnstest.StartUpstream(t, map[string][]netip.Addr{"example.com.": dnstest.IPs("192.0.2.1")}) // TTL 60
	clk := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	s, addr := start(t, meshdns.Config{Upstreams: []string{up.Addr}, Now: clk.Now})

	r := query(t, "udp", addr, "example.com.", dns.TypeA)
	if !slices.Equal(dnstest.AnswerIPs(r), []string{"192.0.2.1"}) || r.Answer[0].Header().Ttl != 60 {
		t.Fatalf("forwarded: %v", r)
	}
	clk.Advance(45 * time.Second)
	r = query(t, "udp", addr, "EXAMPLE.com.", dns.TypeA)
	if got := up.UDPQueries.Load(); got != 1 {
		t.Fatalf("upstream asked %d times within the TTL, want 1", got)
	}
	if r.Answer[0].Header().Ttl != 15 || r.Question[0].Name != "EXAMPLE.com." {
		t.Fatalf("cached answer %v: want TTL 15 and the question as asked", r)
	}
	clk.Advance(15 * time.Second)
	query(t, "udp", addr, "example.com.", dns.TypeA)
	if got := up.UDPQueries.Load(); got != 2 {
		t.Fatalf("upstream asked %d times after the TTL ran out, want 2", got)
	}
	for range 2 {
		if r := query(t, "udp", addr, "nope.example.", dns.TypeA); r.Rcode != dns.RcodeNameError {
			t.Fatalf("unknown upstream name: %v", r)
		}
	}
	if got := up.UDPQueries.Load(); got != 4 {
		t.Fatalf("upstream asked %d times, want 4 (NXDOMAIN without SOA is not cached)", got)
	}
	st := s.Stats()
	if st.Queries["forwarded"] != 4 || st.Queries["cached"] != 1 || st.CacheEntries != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A dead upstream is skipped for the next one; with none answering, or
// one that never answers, the client gets SERVFAIL, not silence, and the
// zone still answers.
func TestForwardFailover(t *testing.T) {
	dead := dnstest.StartUpstream(t, nil)
	dead.Close()
	up := dnstest.StartUpstream(t, map[string][]netip.Addr{"example.com.": dnstest.IPs("192.0.2.1")})
	_, addr := start(t, meshdns.Config{Upstreams: []string{dead.Addr, up.Addr}, CacheSize: -1})
	if r := query(t, "udp", addr, "example.com.", dns.TypeA); !slices.Equal(dnstest.AnswerIPs(r), []string{"192.0.2.1"}) {
		t.Fatalf("%v", r)
	}
	s2, addr2 := start(t, meshdns.Config{Upstreams: []string{dead.Addr}})
	s2.SetRecords(records())
	for _, network := range []string{"udp", "tcp"} {
		if r := query(t, network, addr2, "example.com.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("%s: %v, want SERVFAIL", network, r)
		}
	}
	if r := query(t, "udp", addr2, "node-a.runos.internal.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("zone with the upstreams dead: %v", r)
	}
	silent := dnstest.StartSilent(t)
	_, addr3 := start(t, meshdns.Config{Upstreams: []string{silent.Addr}, ForwardTimeout: 100 * time.Millisecond})
	if r := query(t, "udp", addr3, "example.com.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("silent upstream: %v, want SERVFAIL after the forward timeout", r)
	}
}

// Forwarded answers pass through as the upstream gave them (not
// authoritative, its TTL, the question as asked). An upstream answer
// truncated over UDP is asked again over TCP; a TCP client gets all of
// it, a UDP client what fits, flagged truncated.
func TestForwardTruncated(t *testing.T) {
	var many []netip.Addr
	for i := range 100 {
		many = append(many, netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}))
	}
	up := dnstest.StartUpstream(t, map[string][]netip.Addr{"example.com.": dnstest.IPs("192.0.2.1"), "big.example.": many})
	_, addr := start(t, meshdns.Config{Upstreams: []string{up.Addr}, CacheSize: -1})
	r := query(t, "tcp", addr, "Example.COM.", dns.TypeA)
	if !slices.Equal(dnstest.AnswerIPs(r), []string{"192.0.2.1"}) || r.Authoritative || r.Answer[0].Header().Ttl != 60 || r.Question[0].Name != "Example.COM." {
		t.Fatalf("forwarded answer not passed through: %v", r)
	}
	r = query(t, "tcp", addr, "big.example.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || r.Truncated || len(r.Answer) != 100 {
		t.Fatalf("big answer over TCP: rcode %s truncated %v answers %d", dns.RcodeToString[r.Rcode], r.Truncated, len(r.Answer))
	}
	if up.TCPQueries.Load() == 0 {
		t.Fatal("no TCP retry to the upstream after its truncated UDP answer")
	}
	r = query(t, "udp", addr, "big.example.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || !r.Truncated || len(r.Answer) == 0 || len(r.Answer) >= 100 {
		t.Fatalf("big answer over UDP: rcode %s truncated %v answers %d", dns.RcodeToString[r.Rcode], r.Truncated, len(r.Answer))
	}
}

// Close does not wait out the forward timeout: the query in flight is
// aborted and its client gets SERVFAIL.
func TestCloseAbortsForward(t *testing.T) {
	silent := dnstest.StartSilent(t)
	s, addr := start(t, meshdns.Config{Upstreams: []string{silent.Addr}, ForwardTimeout: time.Hour})
	got := make(chan *dns.Msg, 1)
	go func() {
		m := new(dns.Msg)
		m.SetQuestion("example.com.", dns.TypeA)
		r, _, _ := (&dns.Client{Timeout: time.Minute}).Exchange(m, addr)
		got <- r
	}()
	<-silent.Got
	s.Close()
	if r := <-got; r == nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("query in flight at Close: %v, want SERVFAIL", r)
	}
	s.Close() // idempotent
}

// The listen set is reconciled: an address added later is served, one
// removed stops being served, and the others are untouched.
func TestSetListenAddrs(t *testing.T) {
	s, addr := start(t, meshdns.Config{})
	s.SetRecords(records())
	first := netip.MustParseAddrPort(addr)
	second := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), first.Port())
	if err := s.SetListenAddrs([]netip.AddrPort{first, second}); err != nil {
		t.Fatal(err)
	}
	if got := s.Addrs(); len(got) != 2 {
		t.Fatalf("addrs %v", got)
	}
	for _, a := range []string{addr, second.String()} {
		if r := query(t, "tcp", a, "node-a.runos.internal.", dns.TypeA); len(r.Answer) != 1 {
			t.Fatalf("%s: %v", a, r)
		}
	}
	if err := s.SetListenAddrs([]netip.AddrPort{second}); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		t.Fatalf("%s still accepts after it was removed", addr)
	}
	if r := query(t, "udp", second.String(), "node-a.runos.internal.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("%v", r)
	}
	// A taken address is an error naming it; the rest is served.
	other, err := net.ListenPacket("udp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	taken := netip.MustParseAddrPort(other.LocalAddr().String())
	if err := s.SetListenAddrs([]netip.AddrPort{second, taken}); err == nil {
		t.Fatal("binding a taken address succeeded")
	}
	if got := s.Addrs(); len(got) != 1 || got[0] != second {
		t.Fatalf("addrs %v, want only %v", got, second)
	}
	// UDP free but TCP taken: an error, and the UDP port is left free.
	tl, err := net.Listen("tcp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	tcpTaken := netip.MustParseAddrPort(tl.Addr().String())
	if err := s.SetListenAddrs([]netip.AddrPort{second, tcpTaken}); err == nil {
		t.Fatalf("binding %v with its TCP port taken succeeded", tcpTaken)
	}
	pc, err := net.ListenPacket("udp", tcpTaken.String())
	if err != nil {
		t.Fatalf("UDP %v still bound after the failed bind: %v", tcpTaken, err)
	}
	pc.Close()
}

// IPv6 addresses are served like IPv4 ones.
func TestListenIPv6(t *testing.T) {
	s, _ := start(t, meshdns.Config{Allow: append(clusterNets, netip.MustParsePrefix("::1/128"))})
	s.SetRecords(records())
	if err := s.SetListenAddrs([]netip.AddrPort{netip.MustParseAddrPort("[::1]:0")}); err != nil {
		t.Fatal(err)
	}
	a6 := s.Addrs()[0].String()
	for _, network := range []string{"udp", "tcp"} {
		if r := query(t, network, a6, "node-a.runos.internal.", dns.TypeA); len(r.Answer) != 1 {
			t.Fatalf("%s %s: %v", network, a6, r)
		}
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	stub := filepath.Join(dir, "stub.conf")
	real := filepath.Join(dir, "real.conf")
	os.WriteFile(stub, []byte("nameserver 127.0.0.53\noptions edns0\n"), 0o600)
	os.WriteFile(real, []byte("nameserver 192.0.2.53\nnameserver 127.0.0.1\nnameserver 2001:db8::53\nnameserver 192.0.2.53\n"), 0o600)
	got, err := meshdns.UpstreamsFromResolvConf(stub, real)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"192.0.2.53:53", "[2001:db8::53]:53"}; !slices.Equal(got, want) {
		t.Fatalf("upstreams %v, want %v (loopback stubs skipped)", got, want)
	}
	if _, err := meshdns.New(meshdns.Config{}, nil, dnstest.Logger()); err == nil {
		t.Fatal("New without Allow succeeded")
	}
	if _, err := meshdns.New(meshdns.Config{Allow: clusterNets, Upstreams: []string{"resolver.example"}}, nil, dnstest.Logger()); err == nil {
		t.Fatal("New with a host name as upstream succeeded")
	}
	// Explicit upstreams: port 53 by default.
	s, err := meshdns.New(meshdns.Config{Allow: clusterNets, Upstreams: []string{"10.1.1.1", "10.1.1.2:5353", "fd00::1"}}, nil, dnstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, want := s.Upstreams(), []string{"10.1.1.1:53", "10.1.1.2:5353", "[fd00::1]:53"}; !slices.Equal(got, want) {
		t.Fatalf("explicit upstreams %v, want %v", got, want)
	}
}

// mountCluster mounts a cluster DNS handler over l for cluster.local.
func mountCluster(t testing.TB, s *meshdns.Server, l clusterdns.Lookup) {
	t.Helper()
	kd, err := clusterdns.New(clusterdns.Config{Lookup: l})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Mount(kd.Domain(), kd); err != nil {
		t.Fatal(err)
	}
}

// Kubernetes' cluster domain is mounted in process: its names are
// answered by the cluster DNS handler over UDP and TCP, the zone and
// forwarding are unaffected, and after unmounting they are forwarded like
// any other name.
func TestMountClusterDNS(t *testing.T) {
	up := dnstest.StartUpstream(t, map[string][]netip.Addr{"example.com.": dnstest.IPs("192.0.2.1")})
	s, addr := start(t, meshdns.Config{Upstreams: []string{up.Addr}})
	s.SetRecords(records())
	l := dnstest.NewLookup()
	l.Set("default", "web", dnstest.IPs("10.96.0.10")...)
	mountCluster(t, s, l)
	for _, network := range []string{"udp", "tcp"} {
		if r := query(t, network, addr, "web.default.svc.cluster.local.", dns.TypeA); !slices.Equal(dnstest.AnswerIPs(r), []string{"10.96.0.10"}) || !r.Authoritative {
			t.Fatalf("%s: %v", network, r)
		}
		if r := query(t, network, addr, "nope.default.svc.Cluster.Local.", dns.TypeA); r.Rcode != dns.RcodeNameError || soaOf(t, r).Hdr.Name != "cluster.local." {
			t.Fatalf("%s: %v", network, r)
		}
	}
	if r := query(t, "udp", addr, "node-a.runos.internal.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("%v", r)
	}
	if r := query(t, "udp", addr, "example.com.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("%v", r)
	}
	if up.UDPQueries.Load() != 1 {
		t.Fatalf("upstream got %d queries, want only example.com", up.UDPQueries.Load())
	}
	if err := s.Mount("cluster.local", nil); err != nil {
		t.Fatal(err)
	}
	if r := query(t, "udp", addr, "web.default.svc.cluster.local.", dns.TypeA); r.Rcode != dns.RcodeNameError || up.UDPQueries.Load() != 2 {
		t.Fatalf("after unmount: %v (upstream queries %d)", r, up.UDPQueries.Load())
	}
	if got := s.Stats().Queries["kubernetes"]; got != 4 {
		t.Fatalf("kubernetes count %d", got)
	}
}

// A headless service with more pods than fit in 512 bytes: UDP says
// truncated (or fits the EDNS size the client offers), TCP has them all.
func TestTruncation(t *testing.T) {
	s, addr := start(t, meshdns.Config{})
	l := dnstest.NewLookup()
	var many []netip.Addr
	for i := range 100 {
		many = append(many, netip.AddrFrom4([4]byte{172, 25, 1, byte(i + 1)}))
	}
	l.Set("default", "big", many...)
	mountCluster(t, s, l)
	const name = "big.default.svc.cluster.local."

	r := query(t, "udp", addr, name, dns.TypeA)
	if !r.Truncated || len(r.Answer) >= 100 {
		t.Errorf("UDP without EDNS: truncated %v, %d answers", r.Truncated, len(r.Answer))
	}
	r = query(t, "tcp", addr, name, dns.TypeA)
	if r.Truncated || len(r.Answer) != 100 {
		t.Errorf("TCP: truncated %v, %d answers", r.Truncated, len(r.Answer))
	}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(4096, false)
	r, _, err := (&dns.Client{Net: "udp", UDPSize: 4096}).Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 100 || r.IsEdns0() == nil {
		t.Errorf("UDP with EDNS 4096: truncated %v, %d answers, OPT %v", r.Truncated, len(r.Answer), r.IsEdns0())
	}
}

// A host resolver that lists this server among its upstreams (the
// systemd-resolved drop-in puts the mesh IP in /run/systemd/resolve/
// resolv.conf) does not make it forward to itself.
func TestNeverForwardsToItself(t *testing.T) {
	up := dnstest.StartUpstream(t, map[string][]netip.Addr{"example.com.": dnstest.IPs("192.0.2.1")})
	s, err := meshdns.New(meshdns.Config{Allow: clusterNets, Upstreams: []string{"127.0.0.4:5353", up.Addr}}, nil, dnstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.SetListenAddrs([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.4:5353")})
	if err := s.Start(context.Background()); err != nil {
		t.Skipf("127.0.0.4:5353 is taken: %v", err)
	}
	if r := query(t, "udp", "127.0.0.4:5353", "example.com.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("%v", r)
	}
	if st := s.Stats(); st.UpstreamFailures != 0 || st.Queries["forwarded"] != 1 {
		t.Fatalf("stats %+v: asked itself", st)
	}
}

// Clients that joined an identical question in flight share its fate: an
// upstream that never answers gives each of them SERVFAIL once the one
// forward times out, and Close ends their wait too. Questions that differ
// in type or DNSSEC bit are asked on their own.
func TestForwardSharedFailure(t *testing.T) {
	silent := dnstest.StartSilent(t)
	s, addr := start(t, meshdns.Config{Upstreams: []string{silent.Addr}, ForwardTimeout: 300 * time.Millisecond})
	ask := func(n int, build func(i int) *dns.Msg) <-chan *dns.Msg {
		got := make(chan *dns.Msg, n)
		for i := range n {
			go func() {
				r, _, err := (&dns.Client{Timeout: 10 * time.Second}).Exchange(build(i), addr)
				if err != nil {
					t.Errorf("query %d: %v", i, err)
				}
				got <- r
			}()
		}
		return got
	}
	question := func(name string, qtype uint16, do bool) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if do {
			m.SetEdns0(1232, true)
		}
		return m
	}
	got := ask(8, func(int) *dns.Msg { return question("example.com.", dns.TypeA, false) })
	for range 8 {
		if r := <-got; r == nil || r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("a query sharing a timed-out forward: %v, want SERVFAIL", r)
		}
	}
	if n := len(silent.Got); n != 1 {
		t.Errorf("the upstream got %d queries for 8 identical questions, want 1", n)
	}

	// A, AAAA, and A with the DO bit are three questions.
	for len(silent.Got) > 0 {
		<-silent.Got
	}
	got = ask(6, func(i int) *dns.Msg {
		return [...]*dns.Msg{question("example.com.", dns.TypeA, false), question("example.com.", dns.TypeAAAA, false),
			question("example.com.", dns.TypeA, true)}[i%3]
	})
	for range 6 {
		<-got
	}
	if n := len(silent.Got); n != 3 {
		t.Errorf("the upstream got %d queries for 3 distinct questions asked twice each, want 3", n)
	}

	// Close answers the joined clients as well as the one forwarding.
	s2, addr2 := start(t, meshdns.Config{Upstreams: []string{silent.Addr}, ForwardTimeout: time.Hour})
	addr = addr2
	got = ask(4, func(int) *dns.Msg { return question("example.net.", dns.TypeA, false) })
	for deadline := time.Now().Add(10 * time.Second); s2.Stats().Waiting < 4; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 4 queries waiting", s2.Stats().Waiting)
		}
	}
	s2.Close()
	for range 4 {
		if r := <-got; r == nil || r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("a query waiting at Close: %v, want SERVFAIL", r)
		}
	}
	if st := s.Stats(); st.Queries["servfail"] != 14 || st.Queries["coalesced"] != 0 {
		t.Errorf("stats %+v: want every failed query counted as servfail", st.Queries)
	}
}

// A client that sent no OPT record gets none back, even when the answer
// it is served was fetched for a client that did (RFC 6891 6.1.1).
func TestSharedAnswerMatchesTheClientsEDNS(t *testing.T) {
	up := dnstest.StartUpstream(t, map[string][]netip.Addr{"example.com.": dnstest.IPs("192.0.2.1")})
	_, addr := start(t, meshdns.Config{Upstreams: []string{up.Addr}})
	m := new(dns.Msg)
	m.SetQuestion("example.com.", dns.TypeA)
	m.SetEdns0(1232, false)
	r, _, err := (&dns.Client{Timeout: 10 * time.Second}).Exchange(m, addr)
	if err != nil || r.IsEdns0() == nil {
		t.Fatalf("EDNS client: %v, %v: want an OPT record back", r, err)
	}
	r = query(t, "udp", addr, "example.com.", dns.TypeA)
	if up.UDPQueries.Load() != 1 || len(r.Answer) != 1 {
		t.Fatalf("second client: %v (upstream asked %d times), want the cached answer", r, up.UDPQueries.Load())
	}
	if r.IsEdns0() != nil {
		t.Errorf("a client without EDNS got an OPT record: %v", r)
	}
}

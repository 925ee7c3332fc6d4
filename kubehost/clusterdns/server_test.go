package clusterdns_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/runos/runos-agent/kubehost/clusterdns"
	"github.com/runos/runos-agent/kubehost/clusterdns/dnstest"
)

// Every test leaves no goroutine behind: listeners, forwards in flight,
// the informers of KubeLookup.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func logger() *slog.Logger {
	if os.Getenv("RUNOS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// emptyResolvConf is a resolv.conf without nameservers: no upstreams.
func emptyResolvConf(t testing.TB) string {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(p, []byte("search example.org\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// start runs a server on a random loopback port; defaults: the fake
// lookup, loopback allowed, no upstreams.
func start(t testing.TB, cfg clusterdns.Config) (*clusterdns.Server, string) {
	t.Helper()
	if cfg.Listen == nil {
		cfg.Listen = []string{"127.0.0.1:0"}
	}
	if cfg.Allow == nil {
		cfg.Allow = loopback
	}
	if cfg.Upstreams == nil && cfg.ResolvConf == "" {
		cfg.ResolvConf = emptyResolvConf(t)
	}
	s, err := clusterdns.New(cfg, logger())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, s.Addrs()[0]
}

func query(t testing.TB, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: network, Timeout: 10 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return r
}

func answerIPs(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		}
	}
	slices.Sort(out)
	return out
}

func ips(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// expect checks rcode and the addresses answered.
func expect(t *testing.T, r *dns.Msg, rcode int, want ...string) {
	t.Helper()
	if r.Rcode != rcode {
		t.Fatalf("%s: rcode %s, want %s\n%v", r.Question[0].Name, dns.RcodeToString[r.Rcode], dns.RcodeToString[rcode], r)
	}
	if got := answerIPs(r); !slices.Equal(got, want) {
		t.Fatalf("%s: answers %v, want %v\n%v", r.Question[0].Name, got, want, r)
	}
}

// expectNegative checks an NXDOMAIN or NODATA answer carries the zone's SOA
// with the TTL as negative-caching time (RFC 2308).
func expectNegative(t *testing.T, r *dns.Msg, rcode int, zone string, ttl uint32) {
	t.Helper()
	expect(t, r, rcode)
	if !r.Authoritative {
		t.Errorf("%s: not authoritative", r.Question[0].Name)
	}
	if len(r.Ns) != 1 {
		t.Fatalf("%s: authority %v, want the SOA", r.Question[0].Name, r.Ns)
	}
	soa, ok := r.Ns[0].(*dns.SOA)
	if !ok || soa.Hdr.Name != zone || soa.Minttl != ttl || soa.Hdr.Ttl != ttl {
		t.Errorf("%s: authority %v, want SOA of %s with TTL %d", r.Question[0].Name, r.Ns[0], zone, ttl)
	}
}

func TestClusterNames(t *testing.T) {
	l := dnstest.NewLookup()
	l.Set("default", "kubernetes", ips("10.96.0.1")...)
	l.Set("default", "web", ips("10.96.0.10")...)
	l.Set("db", "pg", ips("172.25.1.7", "172.25.2.9")...) // headless, two ready pods
	l.Set("db", "empty")                                  // headless, no ready pod
	l.Set("v6", "web", ips("fd00::10", "10.96.0.11")...)  // dual stack
	_, addr := start(t, clusterdns.Config{Lookup: l})
	const zone = "cluster.local."

	r := query(t, "udp", addr, "kubernetes.default.svc.cluster.local.", dns.TypeA)
	expect(t, r, dns.RcodeSuccess, "10.96.0.1")
	if !r.Authoritative || !r.RecursionAvailable || r.Answer[0].Header().Ttl != 5 {
		t.Errorf("flags/TTL: %v", r)
	}
	// Names are case-insensitive; the question comes back as asked.
	r = query(t, "udp", addr, "Web.DEFAULT.svc.Cluster.Local.", dns.TypeA)
	expect(t, r, dns.RcodeSuccess, "10.96.0.10")
	if r.Answer[0].Header().Name != "Web.DEFAULT.svc.Cluster.Local." {
		t.Errorf("answer owner %q", r.Answer[0].Header().Name)
	}
	expect(t, query(t, "udp", addr, "pg.db.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess, "172.25.1.7", "172.25.2.9")
	expect(t, query(t, "udp", addr, "web.v6.svc.cluster.local.", dns.TypeAAAA), dns.RcodeSuccess, "fd00::10")
	expect(t, query(t, "udp", addr, "web.v6.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess, "10.96.0.11")

	// Known names without records of the type: NOERROR, nothing, SOA.
	for _, c := range []struct {
		name  string
		qtype uint16
	}{
		{"web.default.svc.cluster.local.", dns.TypeAAAA},
		{"web.default.svc.cluster.local.", dns.TypeMX},
		{"empty.db.svc.cluster.local.", dns.TypeA},
		{"default.svc.cluster.local.", dns.TypeA}, // a namespace with services
		{"svc.cluster.local.", dns.TypeA},
		{"cluster.local.", dns.TypeA},
	} {
		expectNegative(t, query(t, "udp", addr, c.name, c.qtype), dns.RcodeSuccess, zone, 5)
	}
	r = query(t, "udp", addr, "cluster.local.", dns.TypeSOA)
	if soa, ok := r.Answer[0].(*dns.SOA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || !ok || soa.Hdr.Name != zone {
		t.Errorf("apex SOA: %v", r)
	}

	// Unknown names under the domain: NXDOMAIN with the SOA, for every type.
	for _, name := range []string{
		"nope.default.svc.cluster.local.",
		"web.nope.svc.cluster.local.",
		"nope.svc.cluster.local.", // a namespace without services
		"x.web.default.svc.cluster.local.",
		"web.default.pod.cluster.local.",
		"google.com.cluster.local.",
		"google.com.svc.cluster.local.", // search-path expansion of google.com
	} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV} {
			expectNegative(t, query(t, "udp", addr, name, qt), dns.RcodeNameError, zone, 5)
		}
	}

	// TCP answers the same.
	expect(t, query(t, "tcp", addr, "pg.db.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess, "172.25.1.7", "172.25.2.9")
	expectNegative(t, query(t, "tcp", addr, "nope.default.svc.cluster.local.", dns.TypeA), dns.RcodeNameError, zone, 5)

	// Changes in the Lookup show at once (no cache in the server).
	l.Delete("default", "web")
	expectNegative(t, query(t, "udp", addr, "web.default.svc.cluster.local.", dns.TypeA), dns.RcodeNameError, zone, 5)
}

func TestDomainAndTTL(t *testing.T) {
	l := dnstest.NewLookup()
	l.Set("ns", "svc1", ips("10.0.0.1")...)
	_, addr := start(t, clusterdns.Config{Lookup: l, Domain: "Mesh.Example", TTL: 30 * time.Second})
	r := query(t, "udp", addr, "svc1.ns.svc.mesh.example.", dns.TypeA)
	expect(t, r, dns.RcodeSuccess, "10.0.0.1")
	if r.Answer[0].Header().Ttl != 30 {
		t.Errorf("TTL %d, want 30", r.Answer[0].Header().Ttl)
	}
	expectNegative(t, query(t, "udp", addr, "svc2.ns.svc.mesh.example.", dns.TypeA), dns.RcodeNameError, "mesh.example.", 30)
	// cluster.local is just another name now: forwarded, and with no
	// upstream that is SERVFAIL.
	expect(t, query(t, "udp", addr, "svc1.ns.svc.cluster.local.", dns.TypeA), dns.RcodeServerFailure)
}

// A headless service with more pods than fit in 512 bytes: UDP says
// truncated (or fits the EDNS size the client offers), TCP has them all.
func TestTruncation(t *testing.T) {
	l := dnstest.NewLookup()
	var many []netip.Addr
	for i := range 100 {
		many = append(many, netip.AddrFrom4([4]byte{172, 25, 1, byte(i + 1)}))
	}
	l.Set("default", "big", many...)
	_, addr := start(t, clusterdns.Config{Lookup: l})
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

// Sources outside Allow get REFUSED for every name, and nothing is
// forwarded for them (no open resolver).
func TestRefused(t *testing.T) {
	l := dnstest.NewLookup()
	l.Set("default", "web", ips("10.96.0.10")...)
	up := dnstest.StartUpstream(t, map[string][]netip.Addr{"example.com.": ips("192.0.2.1")})
	_, addr := start(t, clusterdns.Config{
		Lookup:    l,
		Upstreams: []string{up.Addr},
		Allow:     []netip.Prefix{netip.MustParsePrefix("172.24.0.0/16"), netip.MustParsePrefix("172.25.0.0/16")},
	})
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"web.default.svc.cluster.local.", "example.com.", "nope.default.svc.cluster.local."} {
			r := query(t, network, addr, name, dns.TypeA)
			if r.Rcode != dns.RcodeRefused || len(r.Answer)+len(r.Ns) != 0 {
				t.Errorf("%s %s: %v, want REFUSED and nothing else", network, name, r)
			}
		}
	}
	if n := up.UDPQueries.Load() + up.TCPQueries.Load(); n != 0 {
		t.Errorf("upstream saw %d queries from a refused client", n)
	}
}

func TestForward(t *testing.T) {
	var many []netip.Addr
	for i := range 100 {
		many = append(many, netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}))
	}
	up := dnstest.StartUpstream(t, map[string][]netip.Addr{
		"example.com.": ips("192.0.2.1"),
		"big.example.": many,
	})
	l := dnstest.NewLookup()
	_, addr := start(t, clusterdns.Config{Lookup: l, Upstreams: []string{up.Addr}})

	r := query(t, "udp", addr, "Example.COM.", dns.TypeA)
	expect(t, r, dns.RcodeSuccess, "192.0.2.1")
	if r.Authoritative || r.Answer[0].Header().Ttl != 60 || r.Question[0].Name != "Example.COM." {
		t.Errorf("forwarded answer not passed through: %v", r)
	}
	expect(t, query(t, "tcp", addr, "example.com.", dns.TypeA), dns.RcodeSuccess, "192.0.2.1")
	expect(t, query(t, "udp", addr, "nope.example.", dns.TypeA), dns.RcodeNameError)

	// The upstream truncates over UDP: the server retries over TCP, and
	// passes the whole answer to a TCP client.
	beforeTCP := up.TCPQueries.Load()
	r = query(t, "tcp", addr, "big.example.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || r.Truncated || len(r.Answer) != 100 {
		t.Errorf("big answer over TCP: rcode %s truncated %v answers %d", dns.RcodeToString[r.Rcode], r.Truncated, len(r.Answer))
	}
	if up.TCPQueries.Load() == beforeTCP {
		t.Errorf("no TCP retry to the upstream after its truncated UDP answer")
	}
	// A UDP client gets what fits, flagged truncated.
	r = query(t, "udp", addr, "big.example.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || !r.Truncated || len(r.Answer) == 0 || len(r.Answer) >= 100 {
		t.Errorf("big answer over UDP: rcode %s truncated %v answers %d", dns.RcodeToString[r.Rcode], r.Truncated, len(r.Answer))
	}
}

func TestForwardFailures(t *testing.T) {
	l := dnstest.NewLookup()
	l.Set("default", "web", ips("10.96.0.10")...)
	up := dnstest.StartUpstream(t, map[string][]netip.Addr{"example.com.": ips("192.0.2.1")})
	dead := dnstest.StartUpstream(t, nil)
	dead.Close()

	// The first upstream is dead: the next one answers.
	_, addr := start(t, clusterdns.Config{Lookup: l, Upstreams: []string{dead.Addr, up.Addr}})
	expect(t, query(t, "udp", addr, "example.com.", dns.TypeA), dns.RcodeSuccess, "192.0.2.1")

	// All dead: SERVFAIL; cluster names still work.
	up.Close()
	expect(t, query(t, "udp", addr, "example.com.", dns.TypeA), dns.RcodeServerFailure)
	expect(t, query(t, "tcp", addr, "example.com.", dns.TypeA), dns.RcodeServerFailure)
	expect(t, query(t, "udp", addr, "web.default.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess, "10.96.0.10")

	// An upstream that never answers: SERVFAIL after ForwardTimeout.
	silent := dnstest.StartSilent(t)
	_, addr = start(t, clusterdns.Config{Lookup: l, Upstreams: []string{silent.Addr}, ForwardTimeout: 100 * time.Millisecond})
	expect(t, query(t, "udp", addr, "example.com.", dns.TypeA), dns.RcodeServerFailure)

	// No upstream at all (resolv.conf without nameservers): SERVFAIL.
	_, addr = start(t, clusterdns.Config{Lookup: l})
	expect(t, query(t, "udp", addr, "example.com.", dns.TypeA), dns.RcodeServerFailure)
}

// Close does not wait out the forward timeout: the query in flight is
// aborted and its client gets SERVFAIL.
func TestCloseAbortsForward(t *testing.T) {
	silent := dnstest.StartSilent(t)
	s, err := clusterdns.New(clusterdns.Config{
		Listen: []string{"127.0.0.1:0"}, Lookup: dnstest.NewLookup(), Allow: loopback,
		Upstreams: []string{silent.Addr}, ForwardTimeout: time.Hour,
	}, logger())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := make(chan *dns.Msg, 1)
	go func() {
		m := new(dns.Msg)
		m.SetQuestion("example.com.", dns.TypeA)
		r, _, _ := (&dns.Client{Timeout: time.Minute}).Exchange(m, s.Addrs()[0])
		got <- r
	}()
	<-silent.Got
	s.Close()
	if r := <-got; r == nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("query in flight at Close: %v, want SERVFAIL", r)
	}
	s.Close() // idempotent
}

func TestListen(t *testing.T) {
	l := dnstest.NewLookup()
	l.Set("default", "web", ips("10.96.0.10")...)
	_, addr := start(t, clusterdns.Config{Lookup: l, Listen: []string{"127.0.0.1:0", "[::1]:0"}})

	// A second server on the same address: Start fails, naming the cause.
	s2, err := clusterdns.New(clusterdns.Config{Listen: []string{addr}, Lookup: l, Allow: loopback, ResolvConf: emptyResolvConf(t)}, logger())
	if err != nil {
		t.Fatal(err)
	}
	err = s2.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), addr) {
		t.Fatalf("Start on a taken address: %v", err)
	}
	s2.Close()
	expect(t, query(t, "udp", addr, "web.default.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess, "10.96.0.10")

	// UDP free but TCP taken: Start fails and leaves the UDP port free.
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	taken := tl.Addr().String()
	s3, _ := clusterdns.New(clusterdns.Config{Listen: []string{"127.0.0.1:0", taken}, Lookup: l, Allow: loopback, ResolvConf: emptyResolvConf(t)}, logger())
	if err := s3.Start(context.Background()); err == nil {
		t.Fatalf("Start with TCP %s taken succeeded", taken)
	}
	s3.Close()
	pc, err := net.ListenPacket("udp", taken)
	if err != nil {
		t.Fatalf("UDP %s still bound after the failed Start: %v", taken, err)
	}
	pc.Close()
}

func TestListenIPv6(t *testing.T) {
	l := dnstest.NewLookup()
	l.Set("default", "web", ips("10.96.0.10")...)
	s, _ := start(t, clusterdns.Config{Lookup: l, Listen: []string{"127.0.0.1:0", "[::1]:0"}})
	a6 := s.Addrs()[1]
	if !strings.HasPrefix(a6, "[::1]:") {
		t.Fatalf("addrs %v", s.Addrs())
	}
	expect(t, query(t, "udp", a6, "web.default.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess, "10.96.0.10")
	expect(t, query(t, "tcp", a6, "web.default.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess, "10.96.0.10")
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("nameserver 172.24.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.2\nnameserver fd00::53\noptions ndots:2\n"), 0o600)
	for _, c := range []struct {
		listen []string
		want   string
	}{
		{[]string{"172.24.0.1:53"}, "10.0.0.2:53 [fd00::53]:53"},
		{[]string{"172.24.0.1:5353"}, "172.24.0.1:53 10.0.0.2:53 [fd00::53]:53"},
		{[]string{"[fd00::53]:53", "10.0.0.2:53"}, "172.24.0.1:53"},
	} {
		s, err := clusterdns.New(clusterdns.Config{Listen: c.listen, Lookup: dnstest.NewLookup(), Allow: loopback, ResolvConf: p}, logger())
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(s.Upstreams(), " "); got != c.want {
			t.Errorf("listen %v: upstreams %q, want %q", c.listen, got, c.want)
		}
	}
	// A wildcard listener is every local address, loopback included.
	os.WriteFile(p, []byte("nameserver 127.0.0.53\nnameserver 127.0.0.1\nnameserver 192.0.2.53\n"), 0o600)
	s, _ := clusterdns.New(clusterdns.Config{Listen: []string{"0.0.0.0:53"}, Lookup: dnstest.NewLookup(), Allow: loopback, ResolvConf: p}, logger())
	if got := strings.Join(s.Upstreams(), " "); got != "192.0.2.53:53" {
		t.Errorf("wildcard listener: upstreams %q", got)
	}
	// Explicit upstreams: port 53 by default.
	s, _ = clusterdns.New(clusterdns.Config{Listen: []string{"127.0.0.1:0"}, Lookup: dnstest.NewLookup(), Allow: loopback, Upstreams: []string{"10.1.1.1", "10.1.1.2:5353", "fd00::1"}}, logger())
	if got := fmt.Sprint(s.Upstreams()); got != "[10.1.1.1:53 10.1.1.2:5353 [fd00::1]:53]" {
		t.Errorf("explicit upstreams: %s", got)
	}
}

func TestNewRejects(t *testing.T) {
	ok := clusterdns.Config{Listen: []string{"127.0.0.1:0"}, Lookup: dnstest.NewLookup(), Allow: loopback}
	for name, mod := range map[string]func(*clusterdns.Config){
		"bad listen":     func(c *clusterdns.Config) { c.Listen = []string{"localhost:53"} },
		"no lookup":      func(c *clusterdns.Config) { c.Lookup = nil },
		"no allow":       func(c *clusterdns.Config) { c.Allow = nil },
		"bad upstream":   func(c *clusterdns.Config) { c.Upstreams = []string{"dns.google"} },
		"bad domain":     func(c *clusterdns.Config) { c.Domain = "a..b" },
		"root as domain": func(c *clusterdns.Config) { c.Domain = "." },
	} {
		c := ok
		mod(&c)
		if _, err := clusterdns.New(c, logger()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := clusterdns.New(ok, nil); err == nil {
		t.Error("nil logger accepted")
	}
}

// syncing is a Lookup that has not listed the cluster yet.
type syncing struct{ *dnstest.Lookup }

func (syncing) Synced() bool { return false }

func TestNotSynced(t *testing.T) {
	l := dnstest.NewLookup()
	l.Set("default", "web", ips("10.96.0.10")...)
	_, addr := start(t, clusterdns.Config{Lookup: syncing{l}})
	// SERVFAIL, which clients retry, rather than an NXDOMAIN they believe.
	expect(t, query(t, "udp", addr, "nope.default.svc.cluster.local.", dns.TypeA), dns.RcodeServerFailure)
}

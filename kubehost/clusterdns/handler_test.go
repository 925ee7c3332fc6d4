package clusterdns_test

import (
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/runos/runos-agent/kubehost/clusterdns"
	"github.com/runos/runos-agent/meshdns/dnstest"
)

// Every test leaves no goroutine behind: the informers of KubeLookup.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ask puts one question to h, as the node resolver hands it on.
func ask(h *clusterdns.Handler, name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return h.Answer(m)
}

// newHandler is a handler of the default domain over l.
func newHandler(t testing.TB, l clusterdns.Lookup) *clusterdns.Handler {
	t.Helper()
	h, err := clusterdns.New(clusterdns.Config{Lookup: l})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// expect checks rcode and the addresses answered.
func expect(t *testing.T, r *dns.Msg, rcode int, want ...string) {
	t.Helper()
	if r.Rcode != rcode {
		t.Fatalf("%s: rcode %s, want %s\n%v", r.Question[0].Name, dns.RcodeToString[r.Rcode], dns.RcodeToString[rcode], r)
	}
	if got := dnstest.AnswerIPs(r); !slices.Equal(got, want) {
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
	l.Set("default", "kubernetes", dnstest.IPs("10.96.0.1")...)
	l.Set("default", "web", dnstest.IPs("10.96.0.10")...)
	l.Set("db", "pg", dnstest.IPs("172.25.1.7", "172.25.2.9")...) // headless, two ready pods
	l.Set("db", "empty")                                          // headless, no ready pod
	l.Set("v6", "web", dnstest.IPs("fd00::10", "10.96.0.11")...)  // dual stack
	h := newHandler(t, l)
	const zone = "cluster.local."

	r := ask(h, "kubernetes.default.svc.cluster.local.", dns.TypeA)
	expect(t, r, dns.RcodeSuccess, "10.96.0.1")
	if !r.Authoritative || !r.RecursionAvailable || r.Answer[0].Header().Ttl != 5 {
		t.Errorf("flags/TTL: %v", r)
	}
	// Names are case-insensitive; the question comes back as asked.
	r = ask(h, "Web.DEFAULT.svc.Cluster.Local.", dns.TypeA)
	expect(t, r, dns.RcodeSuccess, "10.96.0.10")
	if r.Answer[0].Header().Name != "Web.DEFAULT.svc.Cluster.Local." {
		t.Errorf("answer owner %q", r.Answer[0].Header().Name)
	}
	expect(t, ask(h, "pg.db.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess, "172.25.1.7", "172.25.2.9")
	expect(t, ask(h, "web.v6.svc.cluster.local.", dns.TypeAAAA), dns.RcodeSuccess, "fd00::10")
	expect(t, ask(h, "web.v6.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess, "10.96.0.11")

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
		expectNegative(t, ask(h, c.name, c.qtype), dns.RcodeSuccess, zone, 5)
	}
	r = ask(h, "cluster.local.", dns.TypeSOA)
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
			expectNegative(t, ask(h, name, qt), dns.RcodeNameError, zone, 5)
		}
	}

	// Changes in the Lookup show at once (no cache in the handler).
	l.Delete("default", "web")
	expectNegative(t, ask(h, "web.default.svc.cluster.local.", dns.TypeA), dns.RcodeNameError, zone, 5)
}

func TestDomainAndTTL(t *testing.T) {
	l := dnstest.NewLookup()
	l.Set("ns", "svc1", dnstest.IPs("10.0.0.1")...)
	h, err := clusterdns.New(clusterdns.Config{Lookup: l, Domain: "Mesh.Example", TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r := ask(h, "svc1.ns.svc.mesh.example.", dns.TypeA)
	expect(t, r, dns.RcodeSuccess, "10.0.0.1")
	if r.Answer[0].Header().Ttl != 30 {
		t.Errorf("TTL %d, want 30", r.Answer[0].Header().Ttl)
	}
	expectNegative(t, ask(h, "svc2.ns.svc.mesh.example.", dns.TypeA), dns.RcodeNameError, "mesh.example.", 30)
	if h.Domain() != "mesh.example." {
		t.Errorf("domain %q", h.Domain())
	}
}

func TestNewRejects(t *testing.T) {
	ok := clusterdns.Config{Lookup: dnstest.NewLookup()}
	for name, mod := range map[string]func(*clusterdns.Config){
		"no lookup":      func(c *clusterdns.Config) { c.Lookup = nil },
		"bad domain":     func(c *clusterdns.Config) { c.Domain = "a..b" },
		"root as domain": func(c *clusterdns.Config) { c.Domain = "." },
	} {
		c := ok
		mod(&c)
		if _, err := clusterdns.New(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// syncing is a Lookup that has not listed the cluster yet.
type syncing struct{ *dnstest.Lookup }

func (syncing) Synced() bool { return false }

func TestNotSynced(t *testing.T) {
	l := dnstest.NewLookup()
	l.Set("default", "web", dnstest.IPs("10.96.0.10")...)
	h := newHandler(t, syncing{l})
	// SERVFAIL, which clients retry, rather than an NXDOMAIN they believe.
	expect(t, ask(h, "nope.default.svc.cluster.local.", dns.TypeA), dns.RcodeServerFailure)
}

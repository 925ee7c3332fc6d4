package meshdns_test

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"

	"github.com/runos/runos-agent/meshdns"
	"github.com/runos/runos-agent/meshdns/dnstest"
)

// recorder is a dns.ResponseWriter that keeps what the handler wrote.
type recorder struct {
	remote net.Addr
	msgs   []*dns.Msg
}

func (r *recorder) LocalAddr() net.Addr         { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (r *recorder) RemoteAddr() net.Addr        { return r.remote }
func (r *recorder) WriteMsg(m *dns.Msg) error   { r.msgs = append(r.msgs, m); return nil }
func (r *recorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *recorder) Close() error                { return nil }
func (r *recorder) TsigStatus() error           { return nil }
func (r *recorder) TsigTimersOnly(bool)         {}
func (r *recorder) Hijack()                     {}

func fuzzSeeds() [][]byte {
	var out [][]byte
	add := func(m *dns.Msg) {
		b, err := m.Pack()
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	for _, name := range []string{
		"node-a.runos.internal.", "pg-x2abc.runos.internal.", "kafka-y3def.runos.internal.", "empty-z4ghj.runos.internal.",
		"runos.internal.", "nope.runos.internal.", "a.b.runos.internal.", `no\.de-a.runos.internal.`,
		"web.default.svc.cluster.local.", "pg.db.svc.cluster.local.", "empty.db.svc.cluster.local.",
		"cluster.local.", "svc.cluster.local.", "default.svc.cluster.local.", "nope.svc.cluster.local.",
		"a.b.c.d.svc.cluster.local.", `we\.b.default.svc.cluster.local.`, "example.com.", "nope.example.", ".",
	} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeANY, dns.TypeSOA, dns.TypeNS, dns.TypeSRV, dns.TypeAXFR} {
			m := new(dns.Msg)
			m.SetQuestion(name, qt)
			add(m)
			m.SetEdns0(1232, true)
			add(m)
		}
	}
	for _, name := range []string{"node-a.runos.internal.", "web.default.svc.cluster.local."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Question[0].Qclass = dns.ClassCHAOS
		add(m)
		m = new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.SetEdns0(1232, false)
		m.IsEdns0().SetVersion(1)
		add(m)
	}
	m := new(dns.Msg)
	m.SetNotify("cluster.local.")
	add(m)
	m = new(dns.Msg)
	m.SetNotify("runos.internal.")
	add(m)
	m = new(dns.Msg)
	m.SetQuestion("node-a.runos.internal.", dns.TypeA)
	m.Response = true
	add(m)
	m = new(dns.Msg)
	m.Id = 7
	add(m) // no question
	return out
}

// FuzzHandle feeds arbitrary packed messages to the resolver, with the
// zone's names and a mounted cluster.local, from an allowed source (UDP
// and TCP) and a refused one: it never panics; it
// drops what is not a query and answers everything else with a message
// that packs within the client's size limit, matches the query and only
// carries records for the name asked.
func FuzzHandle(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	up := dnstest.StartUpstream(f, map[string][]netip.Addr{"example.com.": dnstest.IPs("192.0.2.1")})
	s, err := meshdns.New(meshdns.Config{Allow: clusterNets, Upstreams: []string{up.Addr}}, nil, dnstest.Logger())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	s.SetRecords(records())
	l := dnstest.NewLookup()
	l.Set("default", "web", dnstest.IPs("10.96.0.10", "fd00::10")...)
	l.Set("db", "pg", dnstest.IPs("172.25.1.7", "172.25.2.9")...)
	l.Set("db", "empty")
	mountCluster(f, s, l)
	okRcodes := []int{dns.RcodeSuccess, dns.RcodeNameError, dns.RcodeServerFailure, dns.RcodeRefused,
		dns.RcodeNotImplemented, dns.RcodeFormatError, dns.RcodeBadVers}

	f.Fuzz(func(t *testing.T, data []byte) {
		req := new(dns.Msg)
		if req.Unpack(data) != nil {
			return // the server drops what does not unpack
		}
		for _, c := range []struct {
			src     net.Addr
			refused bool
		}{
			{&net.UDPAddr{IP: net.IPv4(172, 24, 0, 9), Port: 4000}, false},
			{&net.TCPAddr{IP: net.IPv4(172, 25, 3, 4), Port: 4000}, false},
			{&net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 4000}, true},
		} {
			src := c.src
			w := &recorder{remote: src}
			s.ServeDNS(w, req.Copy())
			if req.Response {
				if len(w.msgs) != 0 {
					t.Fatalf("answered a response: %v", w.msgs[0])
				}
				continue
			}
			if len(w.msgs) != 1 {
				t.Fatalf("%d answers written", len(w.msgs))
			}
			resp := w.msgs[0]
			b, err := resp.Pack()
			if err != nil {
				t.Fatalf("answer does not pack: %v\n%v", err, resp)
			}
			limit := dns.MaxMsgSize
			if _, udp := src.(*net.UDPAddr); udp {
				limit = dns.MinMsgSize
				if opt := req.IsEdns0(); opt != nil {
					limit = max(limit, int(opt.UDPSize()))
				}
			}
			if len(b) > limit {
				t.Fatalf("answer of %d bytes over a %d byte limit", len(b), limit)
			}
			back := new(dns.Msg)
			if err := back.Unpack(b); err != nil {
				t.Fatalf("answer does not unpack: %v", err)
			}
			if !resp.Response || resp.Id != req.Id || resp.Opcode != req.Opcode {
				t.Fatalf("header does not match the query: %v", resp)
			}
			if !slices.Contains(okRcodes, resp.Rcode) {
				t.Fatalf("rcode %d", resp.Rcode)
			}
			if c.refused {
				if resp.Rcode != dns.RcodeRefused || len(resp.Answer)+len(resp.Ns) != 0 {
					t.Fatalf("refused source got %v", resp)
				}
				continue
			}
			if len(req.Question) > 0 {
				if len(resp.Question) != 1 || resp.Question[0] != req.Question[0] {
					t.Fatalf("question %v, asked %v", resp.Question, req.Question)
				}
				for _, rr := range resp.Answer {
					if !equalFold(rr.Header().Name, req.Question[0].Name) {
						t.Fatalf("answer for %q to a question for %q", rr.Header().Name, req.Question[0].Name)
					}
				}
			}
		}
	})
}

func equalFold(a, b string) bool { return dns.CanonicalName(a) == dns.CanonicalName(b) }

// Package dnstest has test doubles for the node resolver (meshdns) and
// the cluster DNS it mounts (clusterdns): a fake cluster Lookup, and
// upstream DNS servers on loopback.
package dnstest

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// Logger discards, or logs everything to stderr with RUNOS_TEST_LOG set.
func Logger() *slog.Logger {
	if os.Getenv("RUNOS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// IPs parses addresses.
func IPs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// AnswerIPs are the addresses of the A and AAAA records of r, sorted.
func AnswerIPs(r *dns.Msg) []string {
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

// Lookup is an in-memory clusterdns.Lookup (and NamespaceLookup), safe for
// concurrent use.
type Lookup struct {
	mu       sync.Mutex
	services map[string][]netip.Addr // guarded by mu; by "namespace/name"
	ns       map[string]int          // guarded by mu; services per namespace
}

// NewLookup returns an empty Lookup.
func NewLookup() *Lookup {
	return &Lookup{services: map[string][]netip.Addr{}, ns: map[string]int{}}
}

// Set adds or replaces a service; ips are its ClusterIP, or the ready
// endpoints of a headless service (none is allowed).
func (l *Lookup) Set(namespace, name string, ips ...netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := namespace + "/" + name
	if _, ok := l.services[key]; !ok {
		l.ns[namespace]++
	}
	l.services[key] = append([]netip.Addr{}, ips...)
}

// Delete removes a service.
func (l *Lookup) Delete(namespace, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := namespace + "/" + name
	if _, ok := l.services[key]; ok {
		delete(l.services, key)
		if l.ns[namespace]--; l.ns[namespace] == 0 {
			delete(l.ns, namespace)
		}
	}
}

// Service implements clusterdns.Lookup.
func (l *Lookup) Service(namespace, name string) ([]netip.Addr, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ips, ok := l.services[namespace+"/"+name]
	return ips, ok
}

// Namespace implements clusterdns.NamespaceLookup.
func (l *Lookup) Namespace(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ns[name] > 0
}

// Upstream is an authoritative-looking DNS server on 127.0.0.1 (UDP and
// TCP on one port) standing in for the host's resolver.
type Upstream struct {
	// Addr is "127.0.0.1:PORT".
	Addr string
	// UDPQueries and TCPQueries count the queries received.
	UDPQueries, TCPQueries atomic.Int64

	records map[string][]netip.Addr
	servers []*dns.Server
	once    sync.Once
	// gate, while set, holds every answer until it is closed (Hold).
	gate atomic.Pointer[chan struct{}]
}

// Hold makes the upstream receive and count queries but keep its answers
// until the returned release is called (idempotent; t.Cleanup calls it
// too): many queries are then in flight at once.
func (u *Upstream) Hold(t testing.TB) (release func()) {
	g := make(chan struct{})
	u.gate.Store(&g)
	var once sync.Once
	release = func() {
		once.Do(func() {
			u.gate.CompareAndSwap(&g, nil)
			close(g)
		})
	}
	t.Cleanup(release)
	return release
}

// StartUpstream serves records (by fully qualified, lower-case name): A
// queries get the IPv4 addresses, other types of known names NOERROR
// without records, unknown names NXDOMAIN. Answers over UDP are truncated
// to the client's size, so a name with many addresses exercises the TCP
// retry. Stopped by t.Cleanup or Close.
func StartUpstream(t testing.TB, records map[string][]netip.Addr) *Upstream {
	t.Helper()
	u := &Upstream{records: records}
	var pc net.PacketConn
	var ln net.Listener
	for try := 0; ; try++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if try == 20 {
			t.Fatal(err)
		}
	}
	u.Addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: u}, {Listener: ln, Handler: u}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		u.servers = append(u.servers, srv)
	}
	t.Cleanup(u.Close)
	return u
}

// Close stops the server; queries to Addr then fail at once (ICMP port
// unreachable on UDP, connection refused on TCP). Idempotent.
func (u *Upstream) Close() {
	u.once.Do(func() {
		for _, srv := range u.servers {
			srv.Shutdown()
		}
	})
}

// ServeDNS implements dns.Handler.
func (u *Upstream) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	if udp {
		u.UDPQueries.Add(1)
	} else {
		u.TCPQueries.Add(1)
	}
	if g := u.gate.Load(); g != nil {
		<-*g
	}
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = true
	q := req.Question[0]
	ips, ok := u.records[dns.CanonicalName(q.Name)]
	if !ok {
		resp.Rcode = dns.RcodeNameError
	}
	for _, ip := range ips {
		if ip.Is4() && q.Qtype == dns.TypeA {
			resp.Answer = append(resp.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   ip.AsSlice(),
			})
		}
	}
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(1232, opt.Do()) // as a resolver that speaks EDNS does
	}
	if udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		resp.Truncate(size)
	}
	w.WriteMsg(resp)
}

// Silent is a UDP socket on 127.0.0.1 that reads queries and never answers:
// an upstream that times out. Each query's arrival is sent on Got (dropped
// when nobody receives).
type Silent struct {
	Addr string
	Got  chan struct{}
	pc   net.PacketConn
	done chan struct{}
}

// StartSilent starts a Silent upstream, stopped by t.Cleanup.
func StartSilent(t testing.TB) *Silent {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Silent{Addr: pc.LocalAddr().String(), Got: make(chan struct{}, 16), pc: pc, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 65536)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			select {
			case s.Got <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-s.done
	})
	return s
}

// Package meshdns is the node's DNS resolver: one listener per address
// (the node's wg0 mesh IP, its wg1 address when it runs one, optionally a
// loopback address for the host's own resolver), UDP and TCP, that
// dispatches each query by name:
//
//   - names in the cluster's zone (default runos.internal): NODE.<zone> and
//     OSID.<zone>, answered from records the agent derives from its local
//     Raft state, so they resolve with the cloud and the leader gone;
//   - mounted domains (cluster.local when Kubernetes is managed), handed to
//     their Handler in process (package clusterdns);
//   - everything else, forwarded to the host's upstream resolvers, with a
//     cache that honours TTLs.
//
// It is not an open resolver: queries whose source is outside
// Config.Allow (the cluster's networks) are REFUSED.
package meshdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// DefaultZone is the cluster's zone when none is set.
const DefaultZone = "runos.internal"

// Net opens listeners: mesh.Net (kernel or netstack) or the host's stack.
type Net interface {
	Listen(network, address string) (net.Listener, error)
	ListenPacket(network, address string) (net.PacketConn, error)
}

// HostNet is the host's network stack.
type HostNet struct{}

func (HostNet) Listen(network, address string) (net.Listener, error) {
	return net.Listen(network, address)
}

func (HostNet) ListenPacket(network, address string) (net.PacketConn, error) {
	return net.ListenPacket(network, address)
}

// Handler answers the names of a mounted domain (clusterdns.Handler).
type Handler interface {
	// Answer returns the answer to req, a query the server has checked
	// (source allowed, opcode QUERY, one question, under the domain, EDNS
	// version 0). The server adds EDNS and truncates. It must not return
	// nil.
	Answer(req *dns.Msg) *dns.Msg
}

// Config configures a Server.
type Config struct {
	// Zone is the cluster's zone (default DefaultZone); SetZone changes it.
	Zone string
	// Allow are the client source prefixes served (required); others get
	// REFUSED. The agent passes the mesh (wg1 included), pod and loopback
	// prefixes.
	Allow []netip.Prefix
	// Upstreams are the resolvers ("ip" or "ip:port") for names outside
	// the zone and the mounts. Empty: the nameservers of ResolvConf, minus
	// loopback addresses on the DNS port (this server, or a stub that
	// forwards to it). None: such names get SERVFAIL; there is no public
	// default.
	Upstreams []string
	// ResolvConf is read for the default Upstreams (default
	// /etc/resolv.conf, then ResolvedUpstreams when that names only
	// loopback stubs).
	ResolvConf string
	// TTL of the zone's records and of its negative answers (default 5 s).
	TTL time.Duration
	// ForwardTimeout bounds one exchange with one upstream (default 2 s).
	ForwardTimeout time.Duration
	// CacheSize bounds the cached forwarded answers (default 10000; -1:
	// no cache).
	CacheSize int
	// MaxCacheTTL caps how long a forwarded answer is kept (default 1 h).
	MaxCacheTTL time.Duration
	// Now is the cache's clock (nil: time.Now).
	Now func() time.Time
}

const (
	// maxForwards bounds forwarded queries in flight (each holds a
	// goroutine and a socket up to ForwardTimeout); beyond it: SERVFAIL.
	maxForwards = 1024
	// ednsSize is the UDP payload size we advertise (DNS flag day 2020).
	ednsSize = 1232
	// readBufSize is the UDP read buffer per query.
	readBufSize = 4096
)

// Server is the node's resolver.
type Server struct {
	cfg       Config
	log       *slog.Logger
	net       Net
	upstreams []string // host:port; read-only after New
	nextUp    atomic.Uint32
	fwdSem    chan struct{}
	cache     *cache
	stats     counters

	// flights are the upstream exchanges under way, by question: an
	// identical question joins one instead of asking again (flight).
	flightsMu sync.Mutex
	flights   map[cacheKey]*flight // guarded by flightsMu
	waiting   atomic.Int64         // client queries waiting on an upstream

	// zone is the zone and its records; replaced whole, read per query.
	zone atomic.Pointer[zoneData]
	// mounts are the mounted domains, by canonical name; replaced whole.
	mounts atomic.Pointer[map[string]Handler]
	// self are the bound addresses ("ip:port"), never forwarded to: a
	// host resolver that lists this server among its upstreams (a
	// systemd-resolved drop-in) would otherwise loop. Replaced whole.
	self atomic.Pointer[map[string]bool]

	// ctx is cancelled by Close, aborting forwarded queries in flight.
	ctx    context.Context
	cancel context.CancelFunc

	// listenMu serialises SetListenAddrs, Start and Close (binding can be
	// slow; mu is not held meanwhile).
	listenMu sync.Mutex
	mu       sync.Mutex
	started  bool                           // guarded by mu
	closed   bool                           // guarded by mu
	want     []netip.AddrPort               // guarded by mu; the listen set asked for
	bound    map[netip.AddrPort]*listenPair // guarded by mu
	wg       sync.WaitGroup
}

// listenPair is one address served on UDP and TCP.
type listenPair struct {
	udp, tcp *dns.Server
}

// New checks cfg and fixes the upstreams; Start listens. n is where
// listeners are opened (nil: the host's stack); loopback addresses are
// always bound on the host's stack.
func New(cfg Config, n Net, log *slog.Logger) (*Server, error) {
	if log == nil {
		return nil, errors.New("meshdns: logger is required")
	}
	if len(cfg.Allow) == 0 {
		return nil, errors.New("meshdns: Allow is required (the prefixes of the clients to serve)")
	}
	if n == nil {
		n = HostNet{}
	}
	if cfg.Zone == "" {
		cfg.Zone = DefaultZone
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 5 * time.Second
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = 2 * time.Second
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = 10000
	}
	if cfg.MaxCacheTTL <= 0 {
		cfg.MaxCacheTTL = time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{
		cfg:     cfg,
		log:     log.With("component", "meshdns"),
		net:     n,
		fwdSem:  make(chan struct{}, maxForwards),
		flights: map[cacheKey]*flight{},
		bound:   map[netip.AddrPort]*listenPair{},
	}
	if cfg.CacheSize > 0 {
		s.cache = newCache(cfg.CacheSize, cfg.MaxCacheTTL)
	}
	zd, err := newZoneData(cfg.Zone, nil, s.ttl())
	if err != nil {
		return nil, err
	}
	s.zone.Store(zd)
	s.mounts.Store(&map[string]Handler{})
	s.self.Store(&map[string]bool{})
	if len(cfg.Upstreams) > 0 {
		s.upstreams, err = NormalizeUpstreams(cfg.Upstreams)
		if err != nil {
			return nil, err
		}
	} else {
		paths := []string{cfg.ResolvConf}
		if cfg.ResolvConf == "" {
			paths = []string{"/etc/resolv.conf", ResolvedUpstreams}
		}
		s.upstreams, err = UpstreamsFromResolvConf(paths...)
		if err != nil || len(s.upstreams) == 0 {
			s.log.Warn("no upstream resolvers: names outside the cluster get SERVFAIL", "resolv_conf", cfg.ResolvConf, "err", err)
		}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

func (s *Server) ttl() uint32 { return uint32(s.cfg.TTL / time.Second) }

// Upstreams are the resolvers forwarded names go to.
func (s *Server) Upstreams() []string { return slices.Clone(s.upstreams) }

// SetZone changes the cluster's zone, keeping the records.
func (s *Server) SetZone(zone string) error {
	cur := s.zone.Load()
	zd, err := newZoneData(zone, cur.names, s.ttl())
	if err != nil {
		return err
	}
	if zd.zone == cur.zone {
		return nil
	}
	s.zone.Store(zd)
	return nil
}

// Zone is the zone served, fully qualified.
func (s *Server) Zone() string { return s.zone.Load().zone }

// SetRecords replaces the zone's names: label (a node name or an OSID)
// to its addresses. Labels are matched without regard to case.
func (s *Server) SetRecords(names map[string][]netip.Addr) {
	cur := s.zone.Load()
	zd, _ := newZoneData(cur.zone, names, s.ttl()) // the zone name was checked when set
	if maps.EqualFunc(zd.names, cur.names, slices.Equal) {
		return // the SOA serial moves only when the zone does
	}
	s.zone.Store(zd)
}

// Mount hands the names under domain to h (nil h: unmount; such names are
// forwarded again).
func (s *Server) Mount(domain string, h Handler) error {
	d := dns.CanonicalName(domain)
	if _, ok := dns.IsDomainName(d); !ok || d == "." {
		return fmt.Errorf("meshdns: invalid domain %q", domain)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := maps.Clone(*s.mounts.Load())
	if h == nil {
		delete(m, d)
	} else {
		m[d] = h
	}
	s.mounts.Store(&m)
	return nil
}

// Start binds the listen set asked for so far (SetListenAddrs) and returns
// its bind errors; addresses that failed are retried by the next
// SetListenAddrs. The server runs until Close, not until ctx ends.
func (s *Server) Start(ctx context.Context) error {
	s.listenMu.Lock()
	defer s.listenMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("meshdns: closed")
	}
	if s.started {
		s.mu.Unlock()
		return errors.New("meshdns: already started")
	}
	s.started = true
	s.mu.Unlock()
	return s.reconcileListeners()
}

// SetListenAddrs makes the server listen (UDP and TCP) on exactly addrs:
// new ones are bound, others closed. Before Start it only records them.
// The error lists the addresses that could not be bound (taken, or not on
// this host yet); a later call retries them.
func (s *Server) SetListenAddrs(addrs []netip.AddrPort) error {
	s.listenMu.Lock()
	defer s.listenMu.Unlock()
	s.mu.Lock()
	s.want = slices.Clone(addrs)
	started, closed := s.started, s.closed
	s.mu.Unlock()
	if !started || closed {
		return nil
	}
	return s.reconcileListeners()
}

// reconcileListeners binds and closes listeners to match want. Called
// with listenMu held.
func (s *Server) reconcileListeners() error {
	s.mu.Lock()
	want := map[netip.AddrPort]bool{}
	for _, a := range s.want {
		want[netip.AddrPortFrom(a.Addr().Unmap(), a.Port())] = true
	}
	var stop []*listenPair
	for a, p := range s.bound {
		if !want[a] {
			stop = append(stop, p)
			delete(s.bound, a)
		}
	}
	var add []netip.AddrPort
	for a := range want {
		if _, ok := s.bound[a]; !ok {
			add = append(add, a)
		}
	}
	s.mu.Unlock()
	defer s.updateSelf()
	for _, p := range stop {
		p.shutdown()
	}
	slices.SortFunc(add, func(a, b netip.AddrPort) int { return a.Compare(b) })
	var errs []error
	for _, a := range add {
		p, err := s.bind(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("listen %s: %w", a, err))
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			p.shutdown()
			return errors.New("meshdns: closed")
		}
		s.bound[a] = p
		s.mu.Unlock()
		s.log.Info("DNS listening", "addr", a, "zone", s.Zone())
	}
	return errors.Join(errs...)
}

func (p *listenPair) shutdown() {
	p.udp.Shutdown()
	p.tcp.Shutdown()
	// miekg/dns's Shutdown returns when its read loop signals it is done,
	// before that loop's deferred Close of the socket: a bind of the same
	// port right after (a listener moved from :0 to the port it got) found
	// it taken. Closing here makes the port free on return.
	p.udp.PacketConn.Close()
	p.tcp.Listener.Close()
}

func (s *Server) updateSelf() {
	m := map[string]bool{}
	for _, a := range s.Addrs() {
		m[a.String()] = true
	}
	s.self.Store(&m)
}

// bind serves UDP and TCP on a; port 0 picks a free port, the same for
// both (the bound address is then in Addrs, under a's key).
func (s *Server) bind(a netip.AddrPort) (*listenPair, error) {
	n := s.net
	if a.Addr().IsLoopback() {
		// The host's own resolver, on the host's stack in either mode.
		n = HostNet{}
	}
	var pc net.PacketConn
	var ln net.Listener
	for try := 0; ; try++ {
		var err error
		pc, err = n.ListenPacket("udp", a.String())
		if err != nil {
			return nil, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err = n.Listen("tcp", netip.AddrPortFrom(a.Addr(), uint16(port)).String())
		if err == nil {
			break
		}
		pc.Close()
		if a.Port() != 0 || try == 20 {
			return nil, err
		}
	}
	p := &listenPair{
		udp: &dns.Server{PacketConn: pc, Handler: s, UDPSize: readBufSize},
		tcp: &dns.Server{Listener: ln, Handler: s, ReadTimeout: 5 * time.Second, IdleTimeout: func() time.Duration { return 10 * time.Second }},
	}
	if err := s.serve(p.udp); err != nil {
		pc.Close()
		ln.Close()
		return nil, err
	}
	if err := s.serve(p.tcp); err != nil {
		p.udp.Shutdown()
		ln.Close()
		return nil, err
	}
	return p, nil
}

// serve runs srv and returns once it serves, or with the error that
// stopped it first.
func (s *Server) serve(srv *dns.Server) error {
	started := make(chan struct{})
	failed := make(chan error, 1)
	srv.NotifyStartedFunc = func() { close(started) }
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := srv.ActivateAndServe()
		select {
		case <-started:
			if err != nil && s.ctx.Err() == nil {
				s.log.Debug("DNS listener ended", "err", err)
			}
		default:
			failed <- err
		}
	}()
	select {
	case <-started:
		return nil
	case err := <-failed:
		if err == nil {
			err = errors.New("stopped before serving")
		}
		return err
	}
}

// Addrs are the bound addresses (UDP and TCP share each), sorted.
func (s *Server) Addrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.AddrPort
	for _, p := range s.bound {
		ap, err := netip.ParseAddrPort(p.udp.PacketConn.LocalAddr().String())
		if err == nil {
			out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		}
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return out
}

// Close stops serving and waits for the queries in flight (forwarded ones
// are aborted). Idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	bound := s.bound
	s.bound = map[netip.AddrPort]*listenPair{}
	s.mu.Unlock()
	for _, p := range bound {
		p.shutdown()
	}
	// A SetListenAddrs binding right now sees closed and shuts its pair.
	s.listenMu.Lock()
	s.listenMu.Unlock() //nolint:staticcheck // waits for it
	s.wg.Wait()
	return nil
}

// ServeDNS answers one query (dns.Handler).
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	var src netip.AddrPort
	tcp := false
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		src = a.AddrPort()
	case *net.TCPAddr:
		src, tcp = a.AddrPort(), true
	}
	resp := s.Answer(src.Addr().Unmap(), tcp, req)
	if resp == nil {
		return
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("write DNS answer", "client", src, "err", err)
	}
}

// Package clusterdns is the cluster DNS server the agent runs on each node's
// mesh address, port 53, for the pods of that node (kubelet's clusterDNS
// points at it). It answers SERVICE.NAMESPACE.svc.DOMAIN from a Lookup
// (normally a KubeLookup over the cluster's Services and EndpointSlices)
// and forwards every other name to the host's resolvers.
//
// It is not an open resolver: queries from sources outside Config.Allow
// are REFUSED, since the mesh address is reachable from more places than
// the node's pods.
//
// Without Listen addresses it is a handler only: the node's resolver
// (package meshdns), which owns port 53 on the node's addresses, hands it
// the names under the domain (Answer).
package clusterdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Lookup is the source of the names under the cluster domain.
type Lookup interface {
	// Service returns the ClusterIP(s) of NAME.NAMESPACE (ok=false if
	// unknown); for a headless service, the ready endpoint IPs (possibly
	// none). The caller must not modify the returned slice.
	Service(namespace, name string) (ips []netip.Addr, ok bool)
}

// NamespaceLookup is optionally implemented by a Lookup that knows which
// namespaces have services. NAMESPACE.svc.DOMAIN then answers NOERROR
// without records for those and NXDOMAIN for the others; without it, such
// names are NXDOMAIN. This matters for musl's resolver, which stops walking
// the search list at the first NOERROR-without-records answer.
type NamespaceLookup interface {
	Namespace(name string) bool
}

// SyncedLookup is optionally implemented by a Lookup that starts empty and
// fills asynchronously (KubeLookup). Until Synced, names under the domain
// get SERVFAIL, which clients retry, rather than an NXDOMAIN they may
// believe.
type SyncedLookup interface {
	Synced() bool
}

// Config configures a Server.
type Config struct {
	// Listen are "ip:port" addresses, each served on UDP and TCP. Port 0
	// picks a free port, the same for both. None: Start binds nothing and
	// the server answers only through Answer (mounted in meshdns).
	Listen []string
	// Domain is the cluster domain (default "cluster.local").
	Domain string
	// Lookup answers names under Domain (required).
	Lookup Lookup
	// Upstreams are the resolvers ("ip" or "ip:port") for names outside
	// Domain. Empty: the nameservers of ResolvConf, minus this server's own
	// listen addresses. None at all: such names get SERVFAIL.
	Upstreams []string
	// Allow are the client source prefixes served (required); others get
	// REFUSED. The agent passes the mesh, pod and loopback prefixes.
	Allow []netip.Prefix
	// TTL of the records answered from Lookup and of negative answers
	// (default 5 s).
	TTL time.Duration
	// ForwardTimeout bounds one exchange with one upstream, UDP and the TCP
	// retry after truncation together (default 2 s).
	ForwardTimeout time.Duration
	// ResolvConf is read for the default Upstreams (default
	// /etc/resolv.conf).
	ResolvConf string
}

// DefaultDomain is the cluster domain when Config.Domain is empty.
const DefaultDomain = "cluster.local"

const (
	// maxForwards bounds the forwarded queries in flight: each holds a
	// goroutine and a socket for up to ForwardTimeout, and a pod looping on
	// a dead name must not exhaust the agent. Beyond it: SERVFAIL.
	maxForwards = 1024
	// ednsSize is the UDP payload size we advertise (the DNS flag day 2020
	// value: no IP fragmentation on common paths).
	ednsSize = 1232
	// readBufSize is the UDP read buffer per query.
	readBufSize = 4096
)

// Server is the cluster DNS server.
type Server struct {
	cfg       Config
	log       *slog.Logger
	domain    string // canonical: lower case, fully qualified
	nDomain   int    // labels in domain
	ttl       uint32
	serial    uint32
	upstreams []string // host:port; read-only after New
	nextUp    atomic.Uint32
	fwdSem    chan struct{}

	// ctx is cancelled by Close, aborting forwarded queries in flight.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	started bool          // guarded by mu
	closed  bool          // guarded by mu
	servers []*dns.Server // guarded by mu
	addrs   []string      // guarded by mu; bound addresses, in Listen order
	wg      sync.WaitGroup
}

// New checks cfg and fixes the upstreams; Start listens.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if log == nil {
		return nil, errors.New("clusterdns: logger is required")
	}
	for _, a := range cfg.Listen {
		if _, err := netip.ParseAddrPort(a); err != nil {
			return nil, fmt.Errorf("clusterdns: listen address %q: %w", a, err)
		}
	}
	if cfg.Lookup == nil {
		return nil, errors.New("clusterdns: Lookup is required")
	}
	if len(cfg.Allow) == 0 {
		return nil, errors.New("clusterdns: Allow is required (the prefixes of the clients to serve)")
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	domain := dns.CanonicalName(cfg.Domain)
	if _, ok := dns.IsDomainName(domain); !ok || domain == "." {
		return nil, fmt.Errorf("clusterdns: invalid domain %q", cfg.Domain)
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 5 * time.Second
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = 2 * time.Second
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	s := &Server{
		cfg:     cfg,
		log:     log.With("component", "clusterdns"),
		domain:  domain,
		nDomain: dns.CountLabel(domain),
		ttl:     uint32(cfg.TTL / time.Second),
		serial:  uint32(time.Now().Unix()),
		fwdSem:  make(chan struct{}, maxForwards),
	}
	var err error
	if len(cfg.Upstreams) > 0 {
		s.upstreams, err = normalizeUpstreams(cfg.Upstreams)
		if err != nil {
			return nil, err
		}
	} else if len(cfg.Listen) > 0 {
		// Mounted (no Listen), the node resolver forwards other names itself.
		s.upstreams, err = upstreamsFromResolvConf(cfg.ResolvConf, cfg.Listen)
		if err != nil {
			s.log.Warn("no upstream resolvers: names outside the cluster domain get SERVFAIL", "resolv_conf", cfg.ResolvConf, "err", err)
		}
	}
	if len(s.upstreams) == 0 && err == nil && len(cfg.Listen) > 0 {
		s.log.Warn("no upstream resolvers: names outside the cluster domain get SERVFAIL", "resolv_conf", cfg.ResolvConf)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Domain is the cluster domain served, fully qualified.
func (s *Server) Domain() string { return s.domain }

// Upstreams are the resolvers names outside the domain are forwarded to.
func (s *Server) Upstreams() []string { return append([]string(nil), s.upstreams...) }

// Start binds UDP and TCP on every Listen address and returns once all are
// served; a bind failure (port 53 taken) is its error, and nothing stays
// bound then. The server runs until Close, not until ctx ends.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("clusterdns: closed")
	}
	if s.started {
		return errors.New("clusterdns: already started")
	}
	s.started = true
	for _, a := range s.cfg.Listen {
		pc, ln, err := listen(a)
		if err != nil {
			s.shutdownLocked()
			return fmt.Errorf("clusterdns: listen %s: %w", a, err)
		}
		s.addrs = append(s.addrs, pc.LocalAddr().String())
		for _, srv := range []*dns.Server{
			{PacketConn: pc, Handler: s, UDPSize: readBufSize},
			{Listener: ln, Handler: s},
		} {
			if err := s.serve(srv); err != nil {
				if srv.PacketConn != nil {
					ln.Close()
				}
				s.shutdownLocked()
				return fmt.Errorf("clusterdns: serve %s: %w", a, err)
			}
		}
	}
	s.log.Info("cluster DNS listening", "addrs", s.addrs, "domain", s.domain, "upstreams", s.upstreams)
	return nil
}

// listen binds UDP and TCP on the same address; with port 0, on the same
// free port (retrying when TCP finds the UDP port taken).
func listen(addr string) (net.PacketConn, net.Listener, error) {
	ap := netip.MustParseAddrPort(addr) // checked in New
	for try := 0; ; try++ {
		pc, err := net.ListenPacket("udp", ap.String())
		if err != nil {
			return nil, nil, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ap.Addr(), uint16(port)).String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if ap.Port() != 0 || try == 20 {
			return nil, nil, err
		}
	}
}

// serve runs srv and returns once it serves, or with the error that
// stopped it first. Called with mu held.
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
			if err != nil && !s.isClosed() {
				s.log.Error("cluster DNS listener failed", "err", err)
			}
		default:
			failed <- err
		}
	}()
	select {
	case <-started:
		s.servers = append(s.servers, srv)
		return nil
	case err := <-failed:
		if srv.PacketConn != nil {
			srv.PacketConn.Close()
		}
		if srv.Listener != nil {
			srv.Listener.Close()
		}
		if err == nil {
			err = errors.New("stopped before serving")
		}
		return err
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Addrs are the bound addresses (UDP and TCP share each), in Listen order.
func (s *Server) Addrs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.addrs...)
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
	s.shutdownLocked()
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// shutdownLocked cancels forwards and stops the listeners; the caller then
// waits on wg (without mu: a listener goroutine takes mu when it ends).
func (s *Server) shutdownLocked() {
	s.cancel()
	for _, srv := range s.servers {
		srv.Shutdown()
	}
	s.servers = nil
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
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("write DNS answer", "client", src, "err", err)
	}
}

// Answer computes the answer to req from src; tcp selects the size limit.
// It is the whole server minus the sockets: ServeDNS calls it, and so does
// the node resolver that mounts the domain.
func (s *Server) Answer(src netip.Addr, tcp bool, req *dns.Msg) *dns.Msg {
	if !s.allowed(src) {
		return reply(req, dns.RcodeRefused)
	}
	if req.Opcode != dns.OpcodeQuery {
		return reply(req, dns.RcodeNotImplemented)
	}
	if len(req.Question) != 1 {
		return reply(req, dns.RcodeFormatError)
	}
	opt := req.IsEdns0()
	if opt != nil && opt.Version() != 0 {
		resp := reply(req, dns.RcodeBadVers)
		resp.SetEdns0(ednsSize, opt.Do())
		return resp
	}
	q := req.Question[0]
	var resp *dns.Msg
	if dns.IsSubDomain(s.domain, strings.ToLower(q.Name)) {
		resp = s.answerZone(req, q)
		if opt != nil {
			resp.SetEdns0(ednsSize, opt.Do())
		}
	} else {
		resp = s.forward(req)
	}
	size := dns.MaxMsgSize
	if !tcp {
		size = dns.MinMsgSize
		if opt != nil {
			size = max(int(opt.UDPSize()), dns.MinMsgSize)
		}
	}
	resp.Truncate(size)
	return resp
}

func (s *Server) allowed(a netip.Addr) bool {
	for _, p := range s.cfg.Allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// reply is an answer to req without records.
func reply(req *dns.Msg, rcode int) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetRcode(req, rcode)
	resp.RecursionAvailable = true
	return resp
}

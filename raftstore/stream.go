package raftstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/runos/runos-agent/mesh"
)

// defaultHandshakeTimeout bounds a TLS handshake on the stream layer: long
// enough for a member behind a relay on a slow link, short enough that a
// silent client does not hold a goroutine and a socket for long.
const defaultHandshakeTimeout = 10 * time.Second

// MemberSources are the source addresses Raft, memberlist and the node API
// serve: the mesh, less the wg1 user-access range carved out of it. The pod
// network lies outside the mesh prefix and is refused with everything else.
func MemberSources() mesh.Sources {
	return mesh.Sources{Allow: []netip.Prefix{MeshPrefix}, Deny: []netip.Prefix{UserAccessPrefix}}
}

// StreamConfig configures a StreamLayer.
type StreamConfig struct {
	// Net is the overlay to listen and dial on. Required.
	Net mesh.Net
	// Addr is the node's mesh IP and Raft port (7947 in production) to
	// listen on. Required, and a specific address, since it is also what
	// the node advertises to its peers. Port 0 picks a free port.
	Addr netip.AddrPort
	// Sources are the peer addresses served; connections from elsewhere
	// are closed on accept and counted (Dropped). Required.
	Sources mesh.Sources
	// ServerTLS and ClientTLS make every connection mutual TLS: accepted
	// ones as server, dialed ones as client. Both or neither; with neither
	// the layer speaks plain TCP, which only tests and the benchmark that
	// compares the two want (Store requires TLS). The configs decide who
	// is a member: pki.AddressedConfig with the cluster state's check.
	ServerTLS *tls.Config
	ClientTLS *tls.Config
	// HandshakeTimeout bounds each TLS handshake (default 10 s).
	HandshakeTimeout time.Duration
}

// StreamLayer carries Raft's RPCs over the mesh: it listens on the node's
// mesh IP and dials peers through mesh.Net, so consensus traffic travels
// inside WireGuard whether the overlay is a kernel TUN or a userspace
// netstack. WireGuard alone does not make a peer a member: in kernel mode
// any local process or pod reaches the mesh IP. So connections are mutual
// TLS, and only from member source addresses.
//
// It also owns every connection it accepts or dials and closes them all on
// Close. raft.NetworkTransport closes only its listener when it shuts down:
// handlers of inbound connections stay blocked in Read until the peer hangs
// up, and pooled outbound connections stay open. Closing them here makes a
// Raft shutdown actually release its goroutines and sockets, which matters
// when many nodes share one test process.
type StreamLayer struct {
	net       mesh.Net
	ln        *mesh.SourceListener
	serverTLS *tls.Config // nil: plain TCP
	clientTLS *tls.Config
	hsTimeout time.Duration

	closeOnce sync.Once
	closeErr  error
	// dialCtx ends when the layer closes, so a dial to a peer that is not
	// there (a joiner not yet up) does not hold up a shutdown.
	dialCtx    context.Context
	cancelDial context.CancelFunc

	mu     sync.Mutex
	closed bool                     // guarded by mu
	conns  map[*streamConn]struct{} // guarded by mu
}

var _ raft.StreamLayer = (*StreamLayer)(nil)

// NewStreamLayer listens for Raft connections on cfg.Addr through cfg.Net.
// Addr reports the address, with the port resolved.
func NewStreamLayer(cfg StreamConfig) (*StreamLayer, error) {
	if cfg.Net == nil {
		return nil, errors.New("raftstore: stream layer: mesh.Net is required")
	}
	if !cfg.Addr.IsValid() {
		return nil, errors.New("raftstore: stream layer: listen address is required")
	}
	if cfg.Addr.Addr().IsUnspecified() {
		return nil, fmt.Errorf("raftstore: stream layer: listen address %s is not advertisable; use the node's mesh IP", cfg.Addr)
	}
	if cfg.Sources.IsZero() {
		return nil, errors.New("raftstore: stream layer: Sources is required")
	}
	if (cfg.ServerTLS == nil) != (cfg.ClientTLS == nil) {
		return nil, errors.New("raftstore: stream layer: ServerTLS and ClientTLS go together")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = defaultHandshakeTimeout
	}
	ln, err := cfg.Net.Listen("tcp", cfg.Addr.String())
	if err != nil {
		return nil, fmt.Errorf("raftstore: stream layer: listen on %s: %w", cfg.Addr, err)
	}
	dialCtx, cancelDial := context.WithCancel(context.Background())
	return &StreamLayer{
		net:        cfg.Net,
		ln:         mesh.FilterListener(ln, cfg.Sources),
		serverTLS:  cfg.ServerTLS,
		clientTLS:  cfg.ClientTLS,
		hsTimeout:  cfg.HandshakeTimeout,
		conns:      make(map[*streamConn]struct{}),
		dialCtx:    dialCtx,
		cancelDial: cancelDial,
	}, nil
}

// Dropped is how many connections were refused for their source address.
func (s *StreamLayer) Dropped() uint64 { return s.ln.Dropped() }

// Accept implements net.Listener.
func (s *StreamLayer) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	if s.serverTLS == nil {
		return s.track(c, c)
	}
	// The handshake happens on the connection's first Read or Write, in
	// raft's per-connection goroutine: raft calls Accept in a loop, and a
	// client that connects and says nothing must not stall it.
	return s.track(&lazyTLS{Conn: tls.Server(c, s.serverTLS), timeout: s.hsTimeout}, c)
}

// Dial implements raft.StreamLayer. A timeout of zero or less means no
// timeout.
func (s *StreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if s.isClosed() {
		return nil, fmt.Errorf("raftstore: dial %s: %w", address, net.ErrClosed)
	}
	ctx := s.dialCtx
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := s.net.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, err
	}
	if s.clientTLS == nil {
		return s.track(c, c)
	}
	// Dialing, the handshake is done here, in the dial's time: raft
	// learns at once that the peer is not a member, rather than at its
	// first RPC.
	hsCtx, cancel := context.WithTimeout(ctx, s.hsTimeout)
	defer cancel()
	tc := tls.Client(c, s.clientTLS)
	if err := tc.HandshakeContext(hsCtx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("raftstore: dial %s: %w", address, err)
	}
	return s.track(tc, c)
}

// Addr implements net.Listener. Raft advertises it to its peers as this
// server's address.
func (s *StreamLayer) Addr() net.Addr { return s.ln.Addr() }

// Close implements net.Listener: it stops accepting and closes every
// connection the layer accepted or dialed. It is safe to call more than
// once; raft.NetworkTransport.Close calls it.
func (s *StreamLayer) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		conns := s.conns
		s.conns = nil
		s.mu.Unlock()

		s.cancelDial()
		s.closeErr = s.ln.Close()
		for c := range conns {
			// The raw connection: closing a TLS one would first try to
			// send close_notify to a peer that may not be reading.
			_ = c.raw.Close()
		}
	})
	return s.closeErr
}

func (s *StreamLayer) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers c, carried by the socket raw, so that Close can reach
// it. A connection that shows up after Close (a Dial or Accept racing with
// it) is closed at once.
func (s *StreamLayer) track(c, raw net.Conn) (net.Conn, error) {
	sc := &streamConn{Conn: c, raw: raw, s: s}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = raw.Close()
		return nil, net.ErrClosed
	}
	s.conns[sc] = struct{}{}
	s.mu.Unlock()
	return sc, nil
}

func (s *StreamLayer) untrack(sc *streamConn) {
	s.mu.Lock()
	delete(s.conns, sc) // no-op once Close has taken the map
	s.mu.Unlock()
}

// streamConn forgets itself in its StreamLayer when closed, so the set of
// tracked connections does not grow with every connection Raft ever made.
type streamConn struct {
	net.Conn          // what raft reads and writes: raw, or TLS over it
	raw      net.Conn // the socket
	s        *StreamLayer
	once     sync.Once
}

func (c *streamConn) Close() error {
	c.once.Do(func() { c.s.untrack(c) })
	return c.Conn.Close()
}

// lazyTLS is a server-side TLS connection whose handshake runs, bounded by
// timeout, on the first Read or Write. tls.Conn would handshake there by
// itself, but with no bound, and raft sets no deadline on an inbound
// connection before it reads.
type lazyTLS struct {
	*tls.Conn
	timeout time.Duration
	done    atomic.Bool // the handshake succeeded; spares a lock per call
}

func (c *lazyTLS) handshake() error {
	if c.done.Load() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	// Concurrent callers are serialised by tls.Conn, and a failed
	// handshake fails every later call alike. On timeout the context
	// closes the socket.
	if err := c.HandshakeContext(ctx); err != nil {
		return err
	}
	c.done.Store(true)
	return nil
}

func (c *lazyTLS) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *lazyTLS) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

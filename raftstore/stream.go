package raftstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/runos/runos-agent/mesh"
)

// StreamLayer carries Raft's RPCs over the mesh: it listens on the node's
// mesh IP and dials peers through mesh.Net, so consensus traffic travels
// inside WireGuard whether the overlay is a kernel TUN or a userspace
// netstack.
//
// It also owns every connection it accepts or dials and closes them all on
// Close. raft.NetworkTransport closes only its listener when it shuts down:
// handlers of inbound connections stay blocked in Read until the peer hangs
// up, and pooled outbound connections stay open. Closing them here makes a
// Raft shutdown actually release its goroutines and sockets, which matters
// when many nodes share one test process.
type StreamLayer struct {
	net mesh.Net
	ln  net.Listener

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

// NewStreamLayer listens for Raft connections on addr (the node's mesh IP and
// Raft port, 7947 in production) through n. Port 0 picks a free port; Addr
// reports it. addr must be a specific address, since it is also what the
// node advertises to its peers.
func NewStreamLayer(n mesh.Net, addr netip.AddrPort) (*StreamLayer, error) {
	if n == nil {
		return nil, errors.New("raftstore: stream layer: mesh.Net is required")
	}
	if !addr.IsValid() {
		return nil, errors.New("raftstore: stream layer: listen address is required")
	}
	if addr.Addr().IsUnspecified() {
		return nil, fmt.Errorf("raftstore: stream layer: listen address %s is not advertisable; use the node's mesh IP", addr)
	}
	ln, err := n.Listen("tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("raftstore: stream layer: listen on %s: %w", addr, err)
	}
	dialCtx, cancelDial := context.WithCancel(context.Background())
	return &StreamLayer{
		net:        n,
		ln:         ln,
		conns:      make(map[*streamConn]struct{}),
		dialCtx:    dialCtx,
		cancelDial: cancelDial,
	}, nil
}

// Accept implements net.Listener.
func (s *StreamLayer) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	return s.track(c)
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
	return s.track(c)
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
			_ = c.Conn.Close()
		}
	})
	return s.closeErr
}

func (s *StreamLayer) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers c so that Close can reach it. A connection that shows up
// after Close (a Dial or Accept racing with it) is closed at once.
func (s *StreamLayer) track(c net.Conn) (net.Conn, error) {
	sc := &streamConn{Conn: c, s: s}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = c.Close()
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
	net.Conn
	s    *StreamLayer
	once sync.Once
}

func (c *streamConn) Close() error {
	c.once.Do(func() { c.s.untrack(c) })
	return c.Conn.Close()
}

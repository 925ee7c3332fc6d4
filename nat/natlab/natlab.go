// Package natlab is a small in-memory model of networks and NAT routers,
// in the spirit of tailscale's natlab, for testing hole punching and
// relaying without root: virtual hosts with UDP sockets on virtual
// networks, joined by NATs that map endpoint-independently ("easy",
// port-restricted cone) or address-and-port-dependently ("hard",
// symmetric), both dropping unsolicited inbound packets like a home router.
//
// Delivery is synchronous and lossless unless a queue is full or a drop
// rule says so. Host.Bind gives a conn.Bind over a host's socket, so a
// nat.Bind (Config.Underlay) or wireguard-go can run on it.
package natlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
)

// World holds networks, NATs and hosts. All methods are safe for
// concurrent use.
type World struct {
	mu   sync.Mutex // guards every field of every object in the world
	drop func(from, to netip.AddrPort) bool
}

// NewWorld returns an empty world.
func NewWorld() *World { return &World{} }

// SetDrop installs a rule that drops a datagram as it is sent (with its
// original, untranslated addresses) when it returns true; nil removes it.
func (w *World) SetDrop(f func(from, to netip.AddrPort) bool) {
	w.mu.Lock()
	w.drop = f
	w.mu.Unlock()
}

// Network is one addressed network: the "internet", or a LAN behind a NAT.
type Network struct {
	w      *World
	name   string
	prefix netip.Prefix
	hosts  map[netip.Addr]*Host
	nats   map[netip.Addr]*NAT // NATs whose outside address is on this network
	gw     *NAT                // the NAT this network reaches the rest through; nil for the top
}

// NewNetwork adds a network.
func (w *World) NewNetwork(name string, prefix netip.Prefix) *Network {
	return &Network{w: w, name: name, prefix: prefix.Masked(), hosts: map[netip.Addr]*Host{}, nats: map[netip.Addr]*NAT{}}
}

// NATKind is how a NAT maps inside sockets to outside ports.
type NATKind int

const (
	// EasyNAT maps each inside socket to one outside port whatever the
	// destination (endpoint-independent mapping).
	EasyNAT NATKind = iota
	// HardNAT maps each inside socket to a new outside port per destination
	// (address-and-port-dependent mapping): STUN-learned ports are useless
	// to anyone but the STUN server.
	HardNAT
)

func (k NATKind) String() string {
	if k == HardNAT {
		return "hard"
	}
	return "easy"
}

// NAT joins an inside network to an outside one through one public
// address. Inbound datagrams pass only to a mapping that has sent to
// exactly that remote address and port.
type NAT struct {
	w        *World
	kind     NATKind
	inside   *Network
	outside  *Network
	public   netip.Addr
	byKey    map[natKey]*mapping
	byPort   map[uint16]*mapping
	nextPort uint16
}

type natKey struct {
	in     netip.AddrPort
	remote netip.AddrPort // zero for EasyNAT
}

type mapping struct {
	in   netip.AddrPort
	port uint16
	sent map[netip.AddrPort]bool
}

// NewNAT puts inside behind a NAT with address public on outside.
func (w *World) NewNAT(kind NATKind, inside, outside *Network, public netip.Addr) (*NAT, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if inside.gw != nil {
		return nil, fmt.Errorf("natlab: %s already has a NAT", inside.name)
	}
	if !outside.prefix.Contains(public) {
		return nil, fmt.Errorf("natlab: %s is not on %s", public, outside.name)
	}
	if outside.hosts[public] != nil || outside.nats[public] != nil {
		return nil, fmt.Errorf("natlab: %s is taken", public)
	}
	n := &NAT{w: w, kind: kind, inside: inside, outside: outside, public: public, nextPort: 20000}
	n.reset()
	inside.gw = n
	outside.nats[public] = n
	return n, nil
}

func (n *NAT) reset() {
	n.byKey = map[natKey]*mapping{}
	n.byPort = map[uint16]*mapping{}
}

// Public is the NAT's outside address.
func (n *NAT) Public() netip.Addr { return n.public }

// Flush forgets every mapping (a router reboot or conntrack flush); new
// mappings get new ports.
func (n *NAT) Flush() {
	n.w.mu.Lock()
	n.reset()
	n.w.mu.Unlock()
}

// outbound translates a datagram leaving the inside. Call with w.mu held.
func (n *NAT) outbound(src, dst netip.AddrPort) netip.AddrPort {
	k := natKey{in: src}
	if n.kind == HardNAT {
		k.remote = dst
	}
	m := n.byKey[k]
	if m == nil {
		for n.byPort[n.nextPort] != nil || n.nextPort < 1024 {
			n.nextPort++
		}
		m = &mapping{in: src, port: n.nextPort, sent: map[netip.AddrPort]bool{}}
		n.nextPort++
		n.byKey[k] = m
		n.byPort[m.port] = m
	}
	m.sent[dst] = true
	return netip.AddrPortFrom(n.public, m.port)
}

// inbound translates a datagram arriving at the public address, or
// reports that the firewall drops it. Call with w.mu held.
func (n *NAT) inbound(src, dst netip.AddrPort) (netip.AddrPort, bool) {
	m := n.byPort[dst.Port()]
	if m == nil || !m.sent[src] {
		return netip.AddrPort{}, false
	}
	return m.in, true
}

// Host is a machine with one address on one network.
type Host struct {
	w        *World
	name     string
	net      *Network
	addr     netip.Addr
	socks    map[uint16]*Socket
	nextPort uint16
}

// NewHost adds a host with address addr to n.
func (n *Network) NewHost(name string, addr netip.Addr) (*Host, error) {
	n.w.mu.Lock()
	defer n.w.mu.Unlock()
	if !n.prefix.Contains(addr) {
		return nil, fmt.Errorf("natlab: %s is not on %s", addr, n.name)
	}
	if n.hosts[addr] != nil || n.nats[addr] != nil {
		return nil, fmt.Errorf("natlab: %s is taken", addr)
	}
	h := &Host{w: n.w, name: name, net: n, addr: addr, socks: map[uint16]*Socket{}, nextPort: 40000}
	n.hosts[addr] = h
	return h, nil
}

// Addr is the host's address.
func (h *Host) Addr() netip.Addr { return h.addr }

// ErrClosed is returned by a closed Socket.
var ErrClosed = net.ErrClosed

// Socket is a UDP socket on a host.
type Socket struct {
	h      *Host
	port   uint16
	ch     chan packet
	closed chan struct{}
	once   sync.Once
}

type packet struct {
	from netip.AddrPort
	data []byte
}

const queueLen = 1024

// Listen opens a socket on port (0: any free one).
func (h *Host) Listen(port uint16) (*Socket, error) {
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	if port == 0 {
		for h.socks[h.nextPort] != nil {
			h.nextPort++
		}
		port = h.nextPort
		h.nextPort++
	}
	if h.socks[port] != nil {
		return nil, fmt.Errorf("natlab: %s port %d in use", h.name, port)
	}
	s := &Socket{h: h, port: port, ch: make(chan packet, queueLen), closed: make(chan struct{})}
	h.socks[port] = s
	return s, nil
}

// LocalAddr is the socket's address on its network.
func (s *Socket) LocalAddr() netip.AddrPort { return netip.AddrPortFrom(s.h.addr, s.port) }

// Close closes the socket; blocked reads return ErrClosed.
func (s *Socket) Close() error {
	s.once.Do(func() {
		s.h.w.mu.Lock()
		if s.h.socks[s.port] == s {
			delete(s.h.socks, s.port)
		}
		s.h.w.mu.Unlock()
		close(s.closed)
	})
	return nil
}

// ReadFrom blocks for the next datagram.
func (s *Socket) ReadFrom(b []byte) (int, netip.AddrPort, error) {
	select {
	case p := <-s.ch:
		return copy(b, p.data), p.from, nil
	case <-s.closed:
		return 0, netip.AddrPort{}, ErrClosed
	}
}

// WriteTo sends a datagram. Like UDP, a datagram nobody receives is not an
// error.
func (s *Socket) WriteTo(b []byte, to netip.AddrPort) error {
	select {
	case <-s.closed:
		return ErrClosed
	default:
	}
	w := s.h.w
	w.mu.Lock()
	defer w.mu.Unlock()
	from := s.LocalAddr()
	if w.drop != nil && w.drop(from, to) {
		return nil
	}
	n, src, dst := s.h.net, from, to
	for hops := 0; hops < 16; hops++ {
		if n.prefix.Contains(dst.Addr()) {
			if h := n.hosts[dst.Addr()]; h != nil {
				if rs := h.socks[dst.Port()]; rs != nil {
					select {
					case rs.ch <- packet{from: src, data: append([]byte(nil), b...)}:
					default: // queue full: dropped, as a kernel would
					}
				}
				return nil
			}
			if nat := n.nats[dst.Addr()]; nat != nil {
				in, ok := nat.inbound(src, dst)
				if !ok {
					return nil
				}
				n, dst = nat.inside, in
				continue
			}
			return nil
		}
		if n.gw == nil {
			return nil
		}
		src = n.gw.outbound(src, dst)
		n = n.gw.outside
	}
	return nil
}

// Endpoint is a natlab conn.Endpoint: a plain address.
type Endpoint struct{ netip.AddrPort }

var _ conn.Endpoint = (*Endpoint)(nil)

func (e *Endpoint) ClearSrc()           {}
func (e *Endpoint) SrcToString() string { return "" }
func (e *Endpoint) DstToString() string { return e.AddrPort.String() }
func (e *Endpoint) DstToBytes() []byte  { b, _ := e.AddrPort.MarshalBinary(); return b }
func (e *Endpoint) DstIP() netip.Addr   { return e.AddrPort.Addr() }
func (e *Endpoint) SrcIP() netip.Addr   { return netip.Addr{} }

// Bind returns a conn.Bind on h.
func (h *Host) Bind() conn.Bind { return &bind{h: h} }

type bind struct {
	h    *Host
	mu   sync.Mutex // guards sock
	sock *Socket
}

const batchSize = 32

func (b *bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sock != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	s, err := b.h.Listen(port)
	if err != nil {
		return nil, 0, err
	}
	b.sock = s
	recv := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var p packet
		select {
		case p = <-s.ch:
		case <-s.closed:
			return 0, net.ErrClosed
		}
		n := 0
		for {
			sizes[n] = copy(bufs[n], p.data)
			eps[n] = &Endpoint{p.from}
			n++
			if n == len(bufs) {
				return n, nil
			}
			select {
			case p = <-s.ch:
			default:
				return n, nil
			}
		}
	}
	return []conn.ReceiveFunc{recv}, s.port, nil
}

func (b *bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sock == nil {
		return nil
	}
	err := b.sock.Close()
	b.sock = nil
	return err
}

func (b *bind) SetMark(uint32) error { return nil }
func (b *bind) BatchSize() int       { return batchSize }

func (b *bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &Endpoint{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

var errNotOpen = errors.New("natlab: bind not open")

func (b *bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.mu.Lock()
	s := b.sock
	b.mu.Unlock()
	if s == nil {
		return errNotOpen
	}
	e, ok := ep.(*Endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	for _, buf := range bufs {
		if err := s.WriteTo(buf, e.AddrPort); err != nil {
			return err
		}
	}
	return nil
}

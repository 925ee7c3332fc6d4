// Package gossip runs memberlist over the mesh. Gossip is how members learn
// quickly that a peer came up or went away; the cluster's durable state lives
// in Raft, and gossip events only wake the reconcilers that read it.
//
// memberlist normally opens its own host sockets. Here it rides on a
// mesh.Net instead (Transport), so its traffic travels inside WireGuard in
// both the kernel and the userspace flavour of the overlay, and a test can
// run several members in one process.
package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/runos/runos-agent/mesh"
)

// DefaultPort is memberlist's port on the mesh IP, for both TCP and UDP.
const DefaultPort = 7946

const (
	// maxPacketSize is the largest UDP payload there is; reading into a
	// smaller buffer would silently truncate an oversized packet.
	maxPacketSize = 65535

	// udpRecvBufSize is what we ask of the UDP socket's receive buffer, as
	// memberlist's own transport does, so bursts of gossip are not dropped.
	udpRecvBufSize = 2 << 20

	// Backoff after a failed Accept or read, so that a persistent error
	// does not spin a core.
	baseRetryDelay = 5 * time.Millisecond
	maxRetryDelay  = time.Second

	// portAttempts bounds how often we retry when Port is 0 and the TCP
	// port the stack picked turns out to be taken for UDP.
	portAttempts = 10
)

// TransportConfig configures a Transport.
type TransportConfig struct {
	// Net is the overlay to listen and dial on. Required.
	Net mesh.Net
	// BindAddr is the node's mesh IP. Required, and not the unspecified
	// address: it is also what memberlist advertises to its peers.
	BindAddr netip.Addr
	// Port is the TCP and UDP port, DefaultPort in production. 0 picks a
	// free port (tests); Addr reports it.
	Port int
	// Sources are the peer addresses served (the mesh less wg1 in
	// production); streams and packets from elsewhere are dropped and
	// counted (Dropped). Required.
	Sources mesh.Sources
}

// Transport is a memberlist.NodeAwareTransport on a mesh.Net: packets go
// over a UDP socket from Net.ListenPacket, streams over a TCP listener from
// Net.Listen and connections from Net.DialContext. It follows memberlist's
// NetTransport, with one socket pair instead of one per bind address.
type Transport struct {
	log  *slog.Logger
	net  mesh.Net
	addr netip.AddrPort // bound address, port resolved
	ln   *mesh.SourceListener
	pc   net.PacketConn
	src  mesh.Sources

	droppedPackets atomic.Uint64 // from outside src

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn

	done         chan struct{} // closed by Shutdown
	shutdownOnce sync.Once
	wg           sync.WaitGroup
	// writing is held (read side) by every packet write, and taken by
	// Shutdown: memberlist's Shutdown does not wait for its own gossip
	// goroutines, so a write may still be in flight, and once Shutdown
	// returns the mesh under it may be torn down (a userspace netstack
	// panics on a write after its device closed).
	writing sync.RWMutex
}

var _ memberlist.NodeAwareTransport = (*Transport)(nil)

var errShutdown = errors.New("gossip: transport is shut down")

// NewTransport listens on cfg.BindAddr:cfg.Port (TCP and UDP) through
// cfg.Net and starts delivering packets and streams. A nil log discards
// the transport's messages. Call Shutdown to release it; memberlist does
// so from Memberlist.Shutdown, but if memberlist.Create fails the caller
// still owns the transport.
func NewTransport(cfg TransportConfig, log *slog.Logger) (*Transport, error) {
	if cfg.Net == nil {
		return nil, errors.New("gossip: transport: Net is required")
	}
	if !cfg.BindAddr.IsValid() {
		return nil, errors.New("gossip: transport: BindAddr is required")
	}
	if cfg.BindAddr.IsUnspecified() {
		return nil, fmt.Errorf("gossip: transport: BindAddr %s is not advertisable; use the node's mesh IP", cfg.BindAddr)
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("gossip: transport: port %d out of range", cfg.Port)
	}
	if cfg.Sources.IsZero() {
		return nil, errors.New("gossip: transport: Sources is required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bind := cfg.BindAddr.Unmap()

	ln, pc, port, err := listen(cfg.Net, bind, uint16(cfg.Port))
	if err != nil {
		return nil, err
	}
	// Best effort: a netstack socket may not offer it, and a small buffer
	// only costs dropped packets, which memberlist tolerates.
	if rb, ok := pc.(interface{ SetReadBuffer(int) error }); ok {
		for size := udpRecvBufSize; size > 0; size /= 2 {
			if rb.SetReadBuffer(size) == nil {
				break
			}
		}
	}

	t := &Transport{
		log:      log,
		net:      cfg.Net,
		addr:     netip.AddrPortFrom(bind, port),
		ln:       mesh.FilterListener(ln, cfg.Sources),
		pc:       pc,
		src:      cfg.Sources,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		done:     make(chan struct{}),
	}
	t.wg.Add(2)
	go t.acceptLoop()
	go t.readLoop()
	return t, nil
}

// listen opens the TCP listener and the UDP socket on the same port. With
// port 0 the TCP listener picks one; UDP may find it taken, so retry.
func listen(n mesh.Net, bind netip.Addr, port uint16) (net.Listener, net.PacketConn, uint16, error) {
	attempts := 1
	if port == 0 {
		attempts = portAttempts
	}
	var err error
	for range attempts {
		var ln net.Listener
		ln, err = n.Listen("tcp", netip.AddrPortFrom(bind, port).String())
		if err != nil {
			return nil, nil, 0, fmt.Errorf("gossip: transport: listen tcp %s: %w", netip.AddrPortFrom(bind, port), err)
		}
		got, perr := netip.ParseAddrPort(ln.Addr().String())
		if perr != nil {
			ln.Close()
			return nil, nil, 0, fmt.Errorf("gossip: transport: listener address %q: %w", ln.Addr(), perr)
		}
		var pc net.PacketConn
		pc, err = n.ListenPacket("udp", netip.AddrPortFrom(bind, got.Port()).String())
		if err == nil {
			return ln, pc, got.Port(), nil
		}
		ln.Close()
		err = fmt.Errorf("gossip: transport: listen udp %s: %w", netip.AddrPortFrom(bind, got.Port()), err)
	}
	return nil, nil, 0, err
}

// Dropped is how many streams and packets came from outside Sources.
func (t *Transport) Dropped() uint64 { return t.ln.Dropped() + t.droppedPackets.Load() }

// Addr is the address the transport listens on, with the port resolved if
// Port was 0.
func (t *Transport) Addr() netip.AddrPort { return t.addr }

// FinalAdvertiseAddr implements memberlist.Transport. On the mesh a node is
// reachable exactly where it listens (no NAT inside WireGuard), so this is
// always the bind address; a configured advertise address that differs is
// a mistake and is refused rather than silently ignored.
func (t *Transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip != "" {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, 0, fmt.Errorf("gossip: advertise address %q: %w", ip, err)
		}
		if a.Unmap() != t.addr.Addr() {
			return nil, 0, fmt.Errorf("gossip: advertise address %s differs from bind address %s", a, t.addr.Addr())
		}
	}
	if port != 0 && port != int(t.addr.Port()) {
		return nil, 0, fmt.Errorf("gossip: advertise port %d differs from bind port %d", port, t.addr.Port())
	}
	// AsSlice gives 4 bytes for IPv4, the form memberlist puts on the wire.
	return net.IP(t.addr.Addr().AsSlice()), int(t.addr.Port()), nil
}

// WriteTo implements memberlist.Transport.
func (t *Transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress implements memberlist.NodeAwareTransport. The address must
// be a literal "ip:port": mesh peers have no DNS names, and resolving one
// here would leak a lookup outside the mesh.
func (t *Transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	ap, err := netip.ParseAddrPort(a.Addr)
	if err != nil {
		return time.Time{}, fmt.Errorf("gossip: write to %s: %w", a.String(), err)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	t.writing.RLock()
	defer t.writing.RUnlock()
	if t.shuttingDown() {
		return time.Time{}, errShutdown
	}
	_, err = t.pc.WriteTo(b, net.UDPAddrFromAddrPort(ap))
	// Stamped after the write, like NetTransport: memberlist measures RTT
	// from here, and a late stamp errs on the short side.
	return time.Now(), err
}

// PacketCh implements memberlist.Transport.
func (t *Transport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// DialTimeout implements memberlist.Transport.
func (t *Transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (t *Transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	select {
	case <-t.done:
		return nil, fmt.Errorf("gossip: dial %s: %w", a.String(), net.ErrClosed)
	default:
	}
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return t.net.DialContext(ctx, "tcp", a.Addr)
}

// StreamCh implements memberlist.Transport.
func (t *Transport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown implements memberlist.Transport: it closes the sockets and waits
// for the transport's goroutines to exit. It is safe to call more than once.
func (t *Transport) Shutdown() error {
	t.shutdownOnce.Do(func() {
		t.writing.Lock()
		close(t.done) // no write starts after this
		t.writing.Unlock()
		// Closing the sockets wakes the loops blocked in Accept and
		// ReadFrom; done wakes those blocked handing off to memberlist,
		// which may already have stopped reading.
		_ = t.ln.Close()
		_ = t.pc.Close()
		t.wg.Wait()
	})
	return nil
}

func (t *Transport) shuttingDown() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// backoff sleeps for the next retry delay, or until Shutdown. It reports
// false if the transport is shutting down.
func (t *Transport) backoff(delay *time.Duration) bool {
	*delay = min(max(2**delay, baseRetryDelay), maxRetryDelay)
	timer := time.NewTimer(*delay)
	defer timer.Stop()
	select {
	case <-t.done:
		return false
	case <-timer.C:
		return true
	}
}

// acceptLoop hands incoming TCP connections to memberlist.
func (t *Transport) acceptLoop() {
	defer t.wg.Done()
	var delay time.Duration
	for {
		conn, err := t.ln.Accept()
		if err != nil {
			if t.shuttingDown() {
				return
			}
			if errors.Is(err, net.ErrClosed) {
				// The overlay went away under us; retrying cannot help.
				t.log.Error("gossip: listener closed; no more streams will be accepted", "addr", t.addr, "err", err)
				return
			}
			t.log.Warn("gossip: accept", "addr", t.addr, "err", err)
			if !t.backoff(&delay) {
				return
			}
			continue
		}
		delay = 0
		select {
		case t.streamCh <- conn:
		case <-t.done:
			_ = conn.Close()
			return
		}
	}
}

// readLoop hands incoming UDP packets to memberlist.
func (t *Transport) readLoop() {
	defer t.wg.Done()
	// One read buffer, and a right-sized copy per packet: memberlist keeps
	// Packet.Buf, and gossip packets are ~1.4 KB, not 64 KB.
	buf := make([]byte, maxPacketSize)
	var delay time.Duration
	for {
		n, from, err := t.pc.ReadFrom(buf)
		ts := time.Now() // as close to the read as we can, for RTT
		if err != nil {
			if t.shuttingDown() {
				return
			}
			if errors.Is(err, net.ErrClosed) {
				t.log.Error("gossip: packet socket closed; no more packets will be read", "addr", t.addr, "err", err)
				return
			}
			t.log.Warn("gossip: read packet", "addr", t.addr, "err", err)
			if !t.backoff(&delay) {
				return
			}
			continue
		}
		delay = 0
		if !t.src.ContainsAddr(from) {
			t.droppedPackets.Add(1)
			continue
		}
		if n < 1 {
			// memberlist needs at least the message type byte.
			t.log.Debug("gossip: empty packet", "from", from)
			continue
		}
		p := &memberlist.Packet{Buf: append([]byte(nil), buf[:n]...), From: from, Timestamp: ts}
		select {
		case t.packetCh <- p:
		case <-t.done:
			return
		}
	}
}

package nat

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// Defaults for Config.
const (
	DefaultProbeInterval     = 5 * time.Second
	DefaultDiscoveryInterval = 2 * time.Minute
	DefaultRelayBytesPerSec  = 64 << 20
	DefaultProbesPerSec      = 20
	DefaultSTUNPerSec        = 200
	DefaultSTUNTimeout       = 5 * time.Second
	DefaultSTUNRetransmit    = 250 * time.Millisecond
)

// ErrNoPath is returned by Send for a peer the Bind has no path to.
var ErrNoPath = errors.New("nat: no path to peer")

// ErrClosed is returned by operations that need the socket while it is closed.
var ErrClosed = errors.New("nat: bind closed")

// Config describes a Bind. PrivateKey is required.
type Config struct {
	// PrivateKey is this node's WireGuard private key: the Bind derives
	// per-peer frame keys from it. Required.
	PrivateKey [32]byte
	// Underlay is the raw socket as a conn.Bind whose endpoints are plain
	// addresses; default conn.NewStdNetBind(). The Bind owns it. Tests put
	// a natlab host's Bind (or a filtering wrapper) here.
	Underlay conn.Bind
	// Relay makes this node forward packets between members that cannot
	// reach each other (--relay on, or auto when publicly reachable).
	Relay bool

	// ProbeInterval is the keepalive probe interval on the active path
	// (it holds NAT mappings open, so keep it well under 30 s) and the
	// interval of full probing while a peer is not on a direct path.
	// Default DefaultProbeInterval.
	ProbeInterval time.Duration
	// DiscoveryInterval is how often every candidate is probed while on a
	// direct path, to find a better one. Default DefaultDiscoveryInterval.
	DiscoveryInterval time.Duration
	// PathTimeout is how long without a pong makes a path dead. Default
	// 3*ProbeInterval + ProbeInterval/2; must exceed ProbeInterval.
	PathTimeout time.Duration

	// RelayBytesPerSec limits what this node relays for each source peer
	// (burst: one second's worth). Default DefaultRelayBytesPerSec.
	RelayBytesPerSec float64
	// ProbesPerSec limits the probes answered per peer (burst: twice that).
	// Default DefaultProbesPerSec.
	ProbesPerSec float64
	// STUNPerSec limits the STUN responder overall. Default DefaultSTUNPerSec.
	STUNPerSec float64
	// STUNTimeout bounds one STUN transaction when the context has no
	// earlier deadline; STUNRetransmit is its first retransmit timeout,
	// doubled on each retry. Defaults DefaultSTUNTimeout, DefaultSTUNRetransmit.
	STUNTimeout    time.Duration
	STUNRetransmit time.Duration

	// OnPathChange, if set, is called for every change of a peer's path
	// kind, address or relay, in order, from the Bind's own goroutine with
	// no lock held. It must not block for long, nor call Close.
	OnPathChange func(PathEvent)
}

func (c Config) withDefaults() (Config, error) {
	if c.PrivateKey == ([32]byte{}) {
		return c, errors.New("nat: config: PrivateKey is required")
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"ProbeInterval", &c.ProbeInterval, DefaultProbeInterval},
		{"DiscoveryInterval", &c.DiscoveryInterval, DefaultDiscoveryInterval},
		{"PathTimeout", &c.PathTimeout, 0},
		{"STUNTimeout", &c.STUNTimeout, DefaultSTUNTimeout},
		{"STUNRetransmit", &c.STUNRetransmit, DefaultSTUNRetransmit},
	} {
		if *d.v < 0 {
			return c, fmt.Errorf("nat: config: %s %v is negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.PathTimeout == 0 {
		c.PathTimeout = 3*c.ProbeInterval + c.ProbeInterval/2
	}
	if c.PathTimeout <= c.ProbeInterval {
		return c, fmt.Errorf("nat: config: PathTimeout %v must exceed ProbeInterval %v", c.PathTimeout, c.ProbeInterval)
	}
	for _, r := range []struct {
		name string
		v    *float64
		def  float64
	}{
		{"RelayBytesPerSec", &c.RelayBytesPerSec, DefaultRelayBytesPerSec},
		{"ProbesPerSec", &c.ProbesPerSec, DefaultProbesPerSec},
		{"STUNPerSec", &c.STUNPerSec, DefaultSTUNPerSec},
	} {
		if *r.v < 0 {
			return c, fmt.Errorf("nat: config: %s is negative", r.name)
		}
		if *r.v == 0 {
			*r.v = r.def
		}
	}
	if c.Underlay == nil {
		c.Underlay = conn.NewStdNetBind()
	}
	return c, nil
}

// Bind is the node's underlay socket as a conn.Bind. Give it to
// mesh.Config.Bind (the device then owns it: wireguard-go opens it on up and
// closes it on down); feed it the cluster's members with SetPeers.
type Bind struct {
	log   *slog.Logger
	cfg   Config // with defaults; immutable
	inner conn.Bind
	priv  [32]byte
	pub   [32]byte
	id    uint64
	stats counters

	stunLimit *tokenBucket

	// Data-plane lookups: immutable maps replaced whole (under mu) and read
	// with one atomic load per batch, never locked.
	byAddr atomic.Pointer[map[netip.AddrPort]*peer] // confirmed or authenticated source addresses
	byID   atomic.Pointer[map[uint64]*peer]         // current members

	// lifeMu serializes Open and Close (which waits for the manager
	// goroutine); it is never held by anything the manager runs.
	lifeMu sync.Mutex

	// mu guards the control plane: everything below, and the fields of
	// every peer documented as "guarded by Bind.mu". Lock order: lifeMu,
	// then mu; mu is never held while sending on the socket, calling
	// OnPathChange, or taking stunMu.
	mu        sync.Mutex
	open      bool
	port      uint16
	stop      chan struct{} // closed by Close; nil while closed
	done      chan struct{} // closed when the manager exits
	kick      chan struct{} // cap 1: wake the manager now
	peers     map[[32]byte]*peer
	endpoints map[uint64]*peerEndpoint // every identity endpoint handed out; kept for the Bind's life
	pending   map[[txIDLen]byte]*pendingProbe
	events    []PathEvent

	// stunMu guards stunTx; a leaf lock.
	stunMu sync.Mutex
	stunTx map[[txIDLen]byte]chan stunMsg

	// guardMu guards guards (and their contents); a leaf lock, taken
	// with or without mu.
	guardMu sync.Mutex
	guards  map[*peer]*replayGuard // per current peer, made on first frame

	relayBufs sync.Pool // of *relayBatch
}

var _ conn.Bind = (*Bind)(nil)

// New returns a closed Bind; wireguard-go (or the caller) opens it.
func New(cfg Config, log *slog.Logger) (*Bind, error) {
	if log == nil {
		return nil, errors.New("nat: nil logger")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	b := &Bind{
		log:       log,
		cfg:       cfg,
		inner:     cfg.Underlay,
		priv:      cfg.PrivateKey,
		pub:       publicKey(cfg.PrivateKey),
		stunLimit: newTokenBucket(cfg.STUNPerSec, cfg.STUNPerSec),
		kick:      make(chan struct{}, 1),
		peers:     map[[32]byte]*peer{},
		endpoints: map[uint64]*peerEndpoint{},
		pending:   map[[txIDLen]byte]*pendingProbe{},
		stunTx:    map[[txIDLen]byte]chan stunMsg{},
	}
	b.id = peerID(b.pub)
	b.relayBufs.New = func() any { return new(relayBatch) }
	emptyAddr, emptyID := map[netip.AddrPort]*peer{}, map[uint64]*peer{}
	b.byAddr.Store(&emptyAddr)
	b.byID.Store(&emptyID)
	return b, nil
}

// PublicKey is this node's WireGuard public key.
func (b *Bind) PublicKey() [32]byte { return b.pub }

// Port is the bound underlay port, or 0 while closed.
func (b *Bind) Port() uint16 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.port
}

// Stats returns the counters.
func (b *Bind) Stats() Stats { return b.stats.snapshot() }

// Open binds the underlay and starts probing. See conn.Bind.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.lifeMu.Lock()
	defer b.lifeMu.Unlock()
	b.mu.Lock()
	if b.open {
		b.mu.Unlock()
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	b.mu.Unlock()
	fns, actual, err := b.inner.Open(port)
	if err != nil {
		return nil, 0, err
	}
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		wrapped[i] = b.makeReceive(fn)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	b.mu.Lock()
	b.open, b.port, b.stop, b.done = true, actual, stop, done
	for _, p := range b.peers {
		p.lastFull = time.Time{} // probe everything right away
	}
	b.mu.Unlock()
	go b.manage(stop, done)
	b.wake()
	b.log.Debug("nat bind open", "port", actual, "relay", b.cfg.Relay)
	return wrapped, actual, nil
}

// Close closes the underlay and stops the Bind's goroutine, waiting for it.
// It is idempotent; the Bind can be opened again (wireguard-go does so on
// down/up and when the listen port changes).
func (b *Bind) Close() error {
	b.lifeMu.Lock()
	defer b.lifeMu.Unlock()
	b.mu.Lock()
	if !b.open {
		b.mu.Unlock()
		return nil
	}
	stop, done := b.stop, b.done
	b.open, b.port, b.stop, b.done = false, 0, nil, nil
	b.mu.Unlock()
	close(stop)
	err := b.inner.Close()
	<-done
	b.stunMu.Lock()
	for tx, ch := range b.stunTx {
		close(ch)
		delete(b.stunTx, tx)
	}
	b.stunMu.Unlock()
	return err
}

// SetMark sets SO_MARK on the underlay. See conn.Bind.
func (b *Bind) SetMark(mark uint32) error { return b.inner.SetMark(mark) }

// BatchSize is the underlay's. See conn.Bind.
func (b *Bind) BatchSize() int { return b.inner.BatchSize() }

// ParseEndpoint accepts a peer identity endpoint (PeerEndpointString) or a
// plain "ip:port", which is the underlay's endpoint and bypasses path logic.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if id, ok := parsePeerAddrPort(ap); ok {
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.endpointLocked(id), nil
		}
	}
	return b.inner.ParseEndpoint(s)
}

// endpointLocked returns the one identity endpoint for id. Call with mu held.
func (b *Bind) endpointLocked(id uint64) *peerEndpoint {
	if e := b.endpoints[id]; e != nil {
		return e
	}
	var a [16]byte
	a[0] = 0x01
	for i := 0; i < 8; i++ {
		a[8+i] = byte(id >> (56 - 8*i))
	}
	dst := netip.AddrPortFrom(netip.AddrFrom16(a), peerEndpointPort)
	e := &peerEndpoint{id: id, dst: dst, str: dst.String()}
	for _, p := range b.peers {
		if p.id == id {
			e.peer.Store(p)
		}
	}
	b.endpoints[id] = e
	return e
}

// Send sends bufs to ep. For a peer identity endpoint the path is the
// peer's current route: direct costs one atomic load over the underlay's
// own Send; relay frames each packet for the relay.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	pe, ok := ep.(*peerEndpoint)
	if !ok {
		return b.inner.Send(bufs, ep)
	}
	p := pe.peer.Load()
	if p == nil {
		b.stats.dropNoPath.Add(uint64(len(bufs)))
		return ErrNoPath
	}
	r := p.route.Load()
	switch {
	case r != nil && r.kind == PathDirect:
		return b.inner.Send(bufs, r.ep)
	case r != nil && r.kind == PathRelay:
		if err := b.sendRelay(bufs, p, r); err != ErrNoPath {
			return err
		}
	}
	p.stashInitiation(bufs)
	b.stats.dropNoPath.Add(uint64(len(bufs)))
	return ErrNoPath
}

// sendTo sends one control datagram to a plain underlay address.
func (b *Bind) sendTo(dst netip.AddrPort, pkt []byte) error {
	ep, err := b.inner.ParseEndpoint(dst.String())
	if err != nil {
		return err
	}
	return b.inner.Send([][]byte{pkt}, ep)
}

// makeReceive wraps an underlay ReceiveFunc with the demultiplexer. It
// returns only once at least one WireGuard packet is ready (or on error),
// so wireguard-go never spins on batches of control traffic.
func (b *Bind) makeReceive(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for {
			n, err := fn(bufs, sizes, eps)
			if err != nil {
				return n, err
			}
			if b.demux(bufs[:n], sizes[:n], eps[:n]) > 0 {
				return n, nil
			}
		}
	}
}

// demux classifies a received batch in place: WireGuard packets stay (with
// the sender's identity endpoint when their source is a known path), all
// else is handled here and its size set to 0, which wireguard-go skips.
// It returns how many packets are left for wireguard-go.
func (b *Bind) demux(bufs [][]byte, sizes []int, eps []conn.Endpoint) int {
	byAddr := *b.byAddr.Load()
	var wg, stunN, frames, relayedWG, unknown uint64
	var now int64 // unix nanos, read once per batch when needed
	for i := range bufs {
		if sizes[i] == 0 {
			continue
		}
		pkt := bufs[i][:sizes[i]]
		switch Classify(pkt) {
		case ClassWireGuard:
			wg++
			if len(byAddr) > 0 {
				if ap, ok := endpointAddr(eps[i]); ok {
					if p := byAddr[ap]; p != nil {
						eps[i] = p.ep
						if now == 0 {
							now = time.Now().UnixNano()
						}
						if pkt[0] <= 2 { // handshake initiation or response
							p.lastHSRx.Store(now)
						}
						if r := p.route.Load(); r != nil && r.kind == PathDirect && r.addr == ap {
							p.rxDirect.Store(now)
						}
					}
				}
			}
		case ClassSTUN:
			stunN++
			sizes[i] = 0
			b.handleSTUN(pkt, eps[i])
		case ClassFrame:
			frames++
			sizes[i] = b.handleFrame(bufs[i], sizes[i], &eps[i])
			if sizes[i] > 0 {
				relayedWG++
			}
		default:
			unknown++
			sizes[i] = 0
		}
	}
	if wg > 0 {
		b.stats.rxWireGuard.Add(wg)
	}
	if stunN > 0 {
		b.stats.rxSTUN.Add(stunN)
	}
	if frames > 0 {
		b.stats.rxFrames.Add(frames)
	}
	if relayedWG > 0 {
		b.stats.rxRelayedWG.Add(relayedWG)
	}
	if unknown > 0 {
		b.stats.dropUnknown.Add(unknown)
	}
	return int(wg + relayedWG)
}

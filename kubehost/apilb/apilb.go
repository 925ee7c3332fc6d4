// Package apilb is a TCP balancer on a loopback address over the voters'
// kube-apiservers, in the spirit of k3s's agent load balancer: kubelet,
// kube-proxy and the agent talk to 127.0.0.1:6444 and keep working while
// individual control-plane nodes come and go.
//
// It forwards raw TCP (TLS passes through untouched), so the API servers'
// serving certificates must carry 127.0.0.1 among their SANs.
package apilb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"
)

// DefaultListen is the loopback address kubelet and kube-proxy are pointed at.
const DefaultListen = "127.0.0.1:6444"

// Config configures a Balancer.
type Config struct {
	// Listen is the address to accept on (DefaultListen if empty).
	Listen string
	// Backends are host:port of the API servers; may be empty at first
	// (connections are then refused until SetBackends).
	Backends []string
	// HealthInterval is the period of the TCP-connect health check (2 s).
	HealthInterval time.Duration
	// DialTimeout bounds each backend dial, health check or proxied (3 s).
	DialTimeout time.Duration
}

// health of a backend as last observed.
type health int

const (
	// unknown: not checked yet. Treated like healthy for picking, so a
	// freshly added backend serves at once instead of after the first check.
	unknown health = iota
	healthy
	unhealthy
)

type backend struct {
	addr   string
	health health
	// conns are the proxied pairs (client and backend side) currently open
	// to this backend, so removing the backend can cut them.
	conns map[*pair]struct{}
	// removed is set once the backend is no longer listed; a dial racing
	// with the removal checks it before registering.
	removed bool
}

// pair is one proxied connection.
type pair struct {
	client, server *net.TCPConn
}

func (p *pair) close() {
	p.client.Close()
	p.server.Close()
}

// Balancer accepts TCP connections and forwards each to one backend.
type Balancer struct {
	cfg Config
	log *slog.Logger

	// recheck wakes the health loop early (after SetBackends).
	recheck chan struct{}

	mu sync.Mutex // guards everything below
	// backends in configured order; next is the round-robin cursor.
	backends []*backend
	next     int
	ln       net.Listener
	started  bool
	closed   bool
	cancel   context.CancelFunc
	// pending are accepted client connections still dialing, so Close can
	// cut them (their dial is aborted through ctx too).
	pending map[*net.TCPConn]struct{}

	wg sync.WaitGroup // accept loop, health loop, every connection goroutine
}

// New validates cfg. Nothing listens until Start.
func New(cfg Config, log *slog.Logger) (*Balancer, error) {
	if log == nil {
		return nil, errors.New("apilb: nil logger")
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if _, _, err := net.SplitHostPort(cfg.Listen); err != nil {
		return nil, fmt.Errorf("apilb: listen address %q: %w", cfg.Listen, err)
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = 2 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 3 * time.Second
	}
	for _, a := range cfg.Backends {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("apilb: backend %q: %w", a, err)
		}
	}
	b := &Balancer{
		cfg:     cfg,
		log:     log.With("component", "apilb"),
		recheck: make(chan struct{}, 1),
		pending: make(map[*net.TCPConn]struct{}),
	}
	b.backends = makeBackends(nil, cfg.Backends)
	return b, nil
}

// makeBackends builds the list for addrs, reusing entries of old (and so
// their health and open connections) for addresses still listed.
func makeBackends(old []*backend, addrs []string) []*backend {
	var out []*backend
	seen := make(map[string]bool)
	for _, a := range addrs {
		if a == "" || seen[a] {
			continue
		}
		seen[a] = true
		i := slices.IndexFunc(old, func(o *backend) bool { return o.addr == a })
		if i >= 0 {
			out = append(out, old[i])
			continue
		}
		out = append(out, &backend{addr: a, conns: make(map[*pair]struct{})})
	}
	return out
}

// Start listens and serves until ctx ends or Close.
func (b *Balancer) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("apilb: closed")
	}
	if b.started {
		return errors.New("apilb: already started")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", b.cfg.Listen)
	if err != nil {
		return fmt.Errorf("apilb: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	b.ln, b.cancel, b.started = ln, cancel, true
	b.wg.Add(3)
	go b.acceptLoop(ctx, ln)
	go b.healthLoop(ctx)
	// Stop on ctx end as Close would, so a caller that only cancels does
	// not leave the listener open.
	go func() {
		defer b.wg.Done()
		<-ctx.Done()
		b.shutdown()
	}()
	b.log.Info("API balancer listening", "addr", ln.Addr().String(), "backends", b.cfg.Backends)
	return nil
}

// Addr is the listening address (the configured one before Start).
func (b *Balancer) Addr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ln != nil {
		return b.ln.Addr().String()
	}
	return b.cfg.Listen
}

// SetBackends replaces the backend list. Connections to backends still
// listed stay open; those to removed backends are closed.
func (b *Balancer) SetBackends(addrs []string) {
	b.mu.Lock()
	nb := makeBackends(b.backends, addrs)
	var cut []*pair
	for _, o := range b.backends {
		if slices.Contains(nb, o) {
			continue
		}
		o.removed = true
		for p := range o.conns {
			cut = append(cut, p)
		}
		clear(o.conns)
	}
	b.backends = nb
	b.next = 0
	b.mu.Unlock()
	for _, p := range cut {
		p.close()
	}
	if len(cut) > 0 {
		b.log.Info("closed connections to removed backends", "count", len(cut))
	}
	select {
	case b.recheck <- struct{}{}:
	default:
	}
}

// Healthy lists the backends whose last health check (or dial) succeeded.
func (b *Balancer) Healthy() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, be := range b.backends {
		if be.health == healthy {
			out = append(out, be.addr)
		}
	}
	return out
}

// Close stops listening, cuts every proxied connection and waits for all
// goroutines. Idempotent.
func (b *Balancer) Close() error {
	b.shutdown()
	b.wg.Wait()
	return nil
}

func (b *Balancer) shutdown() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	var cut []*pair
	for _, be := range b.backends {
		for p := range be.conns {
			cut = append(cut, p)
		}
		clear(be.conns)
	}
	pending := make([]*net.TCPConn, 0, len(b.pending))
	for c := range b.pending {
		pending = append(pending, c)
	}
	ln, cancel := b.ln, b.cancel
	b.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if ln != nil {
		ln.Close()
	}
	for _, c := range pending {
		c.Close()
	}
	for _, p := range cut {
		p.close()
	}
}

func (b *Balancer) acceptLoop(ctx context.Context, ln net.Listener) {
	defer b.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary (e.g. EMFILE): back off briefly instead of spinning.
			b.log.Warn("accept failed", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		tc := c.(*net.TCPConn)
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			tc.Close()
			return
		}
		b.pending[tc] = struct{}{}
		b.wg.Add(1)
		b.mu.Unlock()
		go b.serve(ctx, tc)
	}
}

// candidates is the dial order for a new connection: healthy (or not yet
// checked) backends round robin from the cursor, then the unhealthy ones in
// configured order, so that with none healthy every backend is still tried.
func (b *Balancer) candidates() []*backend {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.backends)
	if n == 0 {
		return nil
	}
	start := b.next % n
	b.next = (start + 1) % n
	out := make([]*backend, 0, n)
	for i := range n {
		be := b.backends[(start+i)%n]
		if be.health != unhealthy {
			out = append(out, be)
		}
	}
	for _, be := range b.backends {
		if be.health == unhealthy {
			out = append(out, be)
		}
	}
	return out
}

func (b *Balancer) setHealth(be *backend, ok bool) (changed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := unhealthy
	if ok {
		h = healthy
	}
	changed = be.health != h && !be.removed
	be.health = h
	return changed
}

func (b *Balancer) dial(ctx context.Context, addr string) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: b.cfg.DialTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func (b *Balancer) serve(ctx context.Context, client *net.TCPConn) {
	defer b.wg.Done()
	p, be := b.connect(ctx, client)
	b.mu.Lock()
	delete(b.pending, client)
	b.mu.Unlock()
	if p == nil {
		client.Close()
		return
	}
	proxy(p)
	p.close()
	b.mu.Lock()
	delete(be.conns, p)
	b.mu.Unlock()
}

// connect dials the candidates in turn; a failed dial marks that backend
// unhealthy at once and moves on, so losing an API server costs the client
// one extra dial, not a failed connection.
func (b *Balancer) connect(ctx context.Context, client *net.TCPConn) (*pair, *backend) {
	cands := b.candidates()
	if len(cands) == 0 {
		b.log.Warn("no backends; refusing connection", "client", client.RemoteAddr().String())
		return nil, nil
	}
	for _, be := range cands {
		server, err := b.dial(ctx, be.addr)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil
			}
			if b.setHealth(be, false) {
				b.log.Warn("backend down", "backend", be.addr, "err", err)
			}
			continue
		}
		if b.setHealth(be, true) {
			b.log.Info("backend up", "backend", be.addr)
		}
		p := &pair{client: client, server: server}
		b.mu.Lock()
		if b.closed || be.removed {
			b.mu.Unlock()
			server.Close()
			if b.closed {
				return nil, nil
			}
			continue
		}
		be.conns[p] = struct{}{}
		b.mu.Unlock()
		return p, be
	}
	b.log.Warn("all backends failed; refusing connection", "client", client.RemoteAddr().String(), "tried", len(cands))
	return nil, nil
}

// proxy copies both ways until both directions ended. An EOF in one
// direction is passed on as a half-close (the peer may still answer); an
// error in either cuts both.
func proxy(p *pair) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(p.server, p.client, p)
	}()
	copyHalf(p.client, p.server, p)
	<-done
}

func copyHalf(dst, src *net.TCPConn, p *pair) {
	// TCPConn.ReadFrom splices between the sockets on Linux; io.Copy picks it.
	_, err := io.Copy(dst, src)
	if err != nil {
		p.close()
		return
	}
	if err := dst.CloseWrite(); err != nil {
		p.close()
	}
}

func (b *Balancer) healthLoop(ctx context.Context) {
	defer b.wg.Done()
	t := time.NewTicker(b.cfg.HealthInterval)
	defer t.Stop()
	for {
		b.checkAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-b.recheck:
		}
	}
}

func (b *Balancer) checkAll(ctx context.Context) {
	b.mu.Lock()
	list := slices.Clone(b.backends)
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, be := range list {
		wg.Go(func() {
			c, err := b.dial(ctx, be.addr)
			if ctx.Err() != nil {
				if c != nil {
					c.Close()
				}
				return
			}
			if err == nil {
				c.Close()
			}
			if b.setHealth(be, err == nil) {
				if err == nil {
					b.log.Info("backend up", "backend", be.addr)
				} else {
					b.log.Warn("backend down", "backend", be.addr, "err", err)
				}
			}
		})
	}
	wg.Wait()
}

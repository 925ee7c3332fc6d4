package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/runos/runos-agent/mesh/internal/netstack"
)

// Mode selects how the overlay reaches the node's programs.
type Mode string

const (
	// ModeKernel creates a TUN interface and routes; the host's stack
	// carries mesh traffic, so every process (and Kubernetes) can use it.
	// Needs CAP_NET_ADMIN.
	ModeKernel Mode = "kernel"
	// ModeUserspace runs a gVisor netstack inside the process: no
	// privileges, and many nodes fit in one process (tests, laptops).
	ModeUserspace Mode = "userspace"
)

// DefaultPrefix is the mesh network; every node has one /32 inside it.
var DefaultPrefix = netip.MustParsePrefix("172.24.0.0/16")

// DefaultMTU leaves room for WireGuard's 80 bytes of overhead (IPv6 outer
// header) inside a 1500-byte underlay.
const DefaultMTU = 1420

// DefaultInterfaceName is the kernel-mode interface name.
const DefaultInterfaceName = "wg0"

// ErrClosed is returned by methods of a Device that has been closed.
var ErrClosed = errors.New("mesh: device closed")

// Config describes a Device. PrivateKey, Address and Mode are required.
type Config struct {
	Mode          Mode
	InterfaceName string       // kernel only; default DefaultInterfaceName
	PrivateKey    Key          // required
	ListenPort    int          // underlay UDP port; 0 = random
	Address       netip.Addr   // this node's mesh IP (required), a /32 on the interface
	Prefix        netip.Prefix // the mesh network; default DefaultPrefix (kernel: routed into the interface)
	MTU           int          // default DefaultMTU
	// Bind is the underlay socket; default conn.NewDefaultBind(). The Device
	// owns it from New on: wireguard-go opens and closes it.
	Bind conn.Bind
	// TUN, in userspace mode, replaces the netstack: the device then
	// carries packets for whoever reads and writes it (wg1's router), and
	// Net is nil. The Device owns it from New on.
	TUN tun.Device
	// Guard, in kernel mode, keeps the addresses in Prefix to this
	// interface (guardRuleset): Inside are the sources that may still
	// reach them through another one (this node's pods, user devices).
	// One device per node guards (wg0, the mesh); it needs nft(8), and
	// without it New warns and the addresses stay reachable from the LAN.
	Guard  bool
	Inside []netip.Prefix
}

// Peer is one remote node as SetPeers wants it.
type Peer struct {
	PublicKey           Key
	Endpoint            netip.AddrPort // zero = unknown (the peer will roam in)
	AllowedIPs          []netip.Prefix
	PersistentKeepalive time.Duration // 0 = off; rounded up to whole seconds
}

// Device is the node's WireGuard device plus the overlay network on it.
type Device struct {
	log  *slog.Logger
	cfg  Config // with defaults applied
	pub  Key
	wg   *device.Device
	net  Net
	link *kernelLink   // nil in userspace mode
	tnet *netstack.Net // the netstack in userspace mode (nil with Config.TUN)

	mu     sync.Mutex   // serializes SetPeers and Close
	peers  map[Key]Peer // what the last successful SetPeers wrote
	synced bool         // false after a failed IpcSet: peers is not to be trusted
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// New creates the device and brings it up: the underlay socket is bound and
// the overlay is usable (no peers yet) when it returns.
func New(cfg Config, log *slog.Logger) (*Device, error) {
	if log == nil {
		return nil, errors.New("mesh: nil logger")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	d := &Device{
		log:    log,
		cfg:    cfg,
		pub:    cfg.PrivateKey.PublicKey(),
		peers:  map[Key]Peer{},
		synced: true,
	}
	bind := cfg.Bind
	if bind == nil {
		bind = conn.NewDefaultBind()
	}
	wglog := newDeviceLogger(log.With("component", "wireguard"))

	switch cfg.Mode {
	case ModeUserspace:
		if cfg.TUN != nil {
			d.wg = device.NewDevice(cfg.TUN, bind, wglog)
			break
		}
		tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{cfg.Address}, nil, cfg.MTU)
		if err != nil {
			return nil, fmt.Errorf("mesh: create netstack: %w", err)
		}
		d.wg = device.NewDevice(tdev, bind, wglog)
		d.net = &stackNet{tnet: tnet, local: cfg.Address}
		d.tnet = tnet
	case ModeKernel:
		tdev, err := tun.CreateTUN(cfg.InterfaceName, cfg.MTU)
		if err != nil {
			return nil, fmt.Errorf("mesh: create TUN %q: %w", cfg.InterfaceName, err)
		}
		name, err := tdev.Name()
		if err != nil {
			tdev.Close()
			return nil, fmt.Errorf("mesh: TUN name: %w", err)
		}
		// The device is created before the interface is configured so that
		// its event reader is already consuming the TUN's up/down events.
		d.wg = device.NewDevice(tdev, bind, wglog)
		d.link = &kernelLink{name: name, cfg: cfg, log: log, routes: map[netip.Prefix]struct{}{}}
		d.net = NewHostNet(cfg.Address)
	}

	if err := d.up(); err != nil {
		d.wg.Close()
		return nil, err
	}
	if d.link != nil {
		if err := d.link.setup(); err != nil {
			d.wg.Close() // closing the TUN deletes the interface with its address and routes
			return nil, err
		}
	}
	log.Info("mesh device up", "mode", cfg.Mode, "address", cfg.Address, "public_key", d.pub, "listen_port", d.ListenPort())
	return d, nil
}

func (c Config) withDefaults() (Config, error) {
	switch c.Mode {
	case ModeKernel, ModeUserspace:
	case "":
		return c, errors.New("mesh: config: Mode is required")
	default:
		return c, fmt.Errorf("mesh: config: unknown Mode %q", c.Mode)
	}
	if c.Mode == ModeKernel && runtime.GOOS != "linux" {
		return c, errors.New("mesh: config: kernel mode is only supported on Linux")
	}
	if c.PrivateKey.IsZero() {
		return c, errors.New("mesh: config: PrivateKey is required")
	}
	if !c.Address.IsValid() {
		return c, errors.New("mesh: config: Address is required")
	}
	c.Address = c.Address.Unmap()
	if c.Address.IsUnspecified() || c.Address.Zone() != "" {
		return c, fmt.Errorf("mesh: config: Address %s is not a unicast address", c.Address)
	}
	if !c.Prefix.IsValid() {
		c.Prefix = DefaultPrefix
	}
	c.Prefix = c.Prefix.Masked()
	if !c.Prefix.Contains(c.Address) {
		return c, fmt.Errorf("mesh: config: Address %s is outside the mesh prefix %s", c.Address, c.Prefix)
	}
	if c.ListenPort < 0 || c.ListenPort > 65535 {
		return c, fmt.Errorf("mesh: config: ListenPort %d out of range", c.ListenPort)
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	// 576 is the smallest datagram every IPv4 host must accept; below it
	// the netstack and TCP misbehave. Above 65535 is not an IP packet.
	if c.MTU < 576 || c.MTU > 65535 {
		return c, fmt.Errorf("mesh: config: MTU %d out of range [576, 65535]", c.MTU)
	}
	if c.TUN != nil && c.Mode != ModeUserspace {
		return c, errors.New("mesh: config: TUN is for userspace mode")
	}
	if c.Mode == ModeKernel && c.InterfaceName == "" {
		c.InterfaceName = DefaultInterfaceName
	}
	return c, nil
}

// up sets the identity and port, then brings the device up. The TUN event
// reader may bring it up concurrently (netstack and kernel TUNs both report
// "up"); that is harmless: Up is idempotent and setting listen_port rebinds.
func (d *Device) up() error {
	set := "private_key=" + d.cfg.PrivateKey.hex() + "\n"
	if d.cfg.ListenPort != 0 {
		set += fmt.Sprintf("listen_port=%d\n", d.cfg.ListenPort)
	}
	if err := d.wg.IpcSet(set); err != nil {
		return fmt.Errorf("mesh: configure device: %w", err)
	}
	if err := d.wg.Up(); err != nil {
		return fmt.Errorf("mesh: bring device up: %w", err)
	}
	return nil
}

// Net is the overlay: dial and listen on mesh IPs.
func (d *Device) Net() Net { return d.net }

// PublicKey is this node's WireGuard public key.
func (d *Device) PublicKey() Key { return d.pub }

// Address is this node's mesh IP.
func (d *Device) Address() netip.Addr { return d.cfg.Address }

// RecheckHost puts back host state that others can take away: in kernel
// mode, the iptables input chain after a reload of the host's firewall
// (at most every iptables.DefaultRecheck). The Reconciler calls it every
// round.
func (d *Device) RecheckHost() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.link == nil {
		return
	}
	d.link.recheckInput()
}

// InterfaceName is the kernel interface name, or "" in userspace mode.
func (d *Device) InterfaceName() string {
	if d.link == nil {
		return ""
	}
	return d.link.name
}

// ListenPort is the UDP port the underlay socket is bound to (the real one,
// also when Config.ListenPort was 0), or 0 if the device is closed or down.
func (d *Device) ListenPort() int {
	st, err := d.state()
	if err != nil {
		return 0
	}
	return st.ListenPort
}

// Stats reports every configured peer's endpoint, handshake and counters,
// sorted by public key.
func (d *Device) Stats() ([]PeerStats, error) {
	st, err := d.state()
	if err != nil {
		return nil, err
	}
	return st.Peers, nil
}

func (d *Device) state() (deviceState, error) {
	// IpcGet on a closed device still answers (with no peers); say closed
	// instead, so a caller polling Stats notices.
	select {
	case <-d.wg.Wait():
		return deviceState{}, ErrClosed
	default:
	}
	s, err := d.wg.IpcGet()
	if err != nil {
		return deviceState{}, fmt.Errorf("mesh: read device state: %w", err)
	}
	st, err := parseUAPI(s)
	if err != nil {
		return deviceState{}, err
	}
	sortStats(st.Peers)
	return st, nil
}

// SetPeers makes the device's peers exactly peers. It is a reconcile, not a
// restart: peers that did not change are not touched (their sessions and
// handshakes survive), changed ones are updated in place, and missing ones
// are removed. In kernel mode it also keeps a route into the interface for
// every allowed prefix outside the mesh prefix (the peers' pod /24s).
//
// A peer with this device's own public key is ignored, so the cluster's
// whole node list can be passed. Safe for concurrent use; calls are
// serialized and the last one wins.
func (d *Device) SetPeers(peers []Peer) error {
	want, err := normalizePeers(peers, d.pub)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}

	cur, force := d.peers, !d.synced
	if force {
		// A previous set failed part-way, so which peers exist on the
		// device is unknown: ask it, and rewrite every wanted peer in full.
		st, err := d.state()
		if err != nil {
			return err
		}
		cur = make(map[Key]Peer, len(st.Peers))
		for _, p := range st.Peers {
			cur[p.PublicKey] = Peer{PublicKey: p.PublicKey}
		}
	}
	if set := peerSetUAPI(cur, want, force); set != "" {
		if err := d.wg.IpcSet(set); err != nil {
			d.synced = false
			return fmt.Errorf("mesh: set peers: %w", err)
		}
		d.log.Debug("mesh peers reconciled", "peers", len(want), "was", len(cur))
	}
	d.peers, d.synced = want, true

	if d.link != nil {
		return d.link.syncRoutes(want)
	}
	return nil
}

// Close takes the device down and releases everything it holds: the
// underlay socket, the netstack or TUN, and in kernel mode the routes and
// the interface. It waits for wireguard-go's goroutines to stop, is safe to
// call more than once and concurrently, and returns the first call's result.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		// Taking mu waits out a SetPeers in progress and makes later ones
		// fail with ErrClosed instead of talking to a dead device.
		d.mu.Lock()
		defer d.mu.Unlock()
		d.closed = true
		var errs []error
		if d.link != nil {
			// Deleting the interface removes its routes too; removing
			// them first just makes the order of teardown explicit and
			// surfaces a netlink problem instead of hiding it.
			errs = append(errs, d.link.close())
		}
		// Down first: it closes the underlay socket and stops every peer's
		// goroutines, so nothing feeds packets into the netstack while
		// Close tears it down. (Upstream's netstack TUN could panic with a
		// packet in flight at Close; mesh/internal/netstack is fixed.)
		if err := d.wg.Down(); err != nil {
			d.log.Debug("mesh device down before close", "err", err)
		}
		d.wg.Close()
		<-d.wg.Wait()
		d.closeErr = errors.Join(errs...)
		d.log.Info("mesh device closed", "address", d.cfg.Address)
	})
	return d.closeErr
}

// newDeviceLogger adapts slog to wireguard-go's printf-style logger.
// wireguard-go's "errors" are mostly transient network conditions (a peer
// unreachable, a send failing while the underlay changes) that the device
// recovers from by itself; they are logged at Warn so real failures, which
// mesh returns as errors, stand out at Error.
func newDeviceLogger(log *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			// Verbose lines are frequent; skip formatting when unused.
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			msg := fmt.Sprintf(format, args...)
			// A peer without an endpoint is waiting to roam in, and a
			// Bind that picks paths has none yet while it probes (it keeps
			// the handshake and sends it once a path answers): normal
			// states here, not worth a warning every 5 s.
			if strings.Contains(msg, "no known endpoint for peer") || strings.Contains(msg, "no path to peer") {
				log.Debug(msg)
				return
			}
			log.Warn(msg)
		},
	}
}

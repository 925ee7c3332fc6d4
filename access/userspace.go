package access

import (
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/runos/runos-agent/mesh"
)

// Gateway is an entry node's wg1, kernel (Server) or userspace
// (UserspaceServer).
type Gateway interface {
	PublicKey() mesh.Key
	// SetPeers makes the devices entering here exactly peers; remote are
	// the devices entering elsewhere that allow peers.
	SetPeers(peers []Peer, remote []netip.Addr) error
	Stats() ([]mesh.PeerStats, error)
	Close() error
}

var (
	_ Gateway = (*Server)(nil)
	_ Gateway = (*UserspaceServer)(nil)
)

// Mesh is wg0 in userspace mode as the router uses it (*mesh.Device).
type Mesh interface {
	Address() netip.Addr
	SetUserRoute(prefix netip.Prefix, fn func(pkt []byte)) error
	ForwardToMesh(pkt []byte) bool
	DeliverLocal(pkt []byte) error
	AddLocalAddress(ip netip.Addr) error
	RemoveLocalAddress(ip netip.Addr) error
}

// UserspaceConfig describes wg1 on a node whose mesh is a netstack.
type UserspaceConfig struct {
	PrivateKey mesh.Key       // the cluster's wg1 key; required
	Address    netip.Addr     // the gateway address; required
	ListenPort int            // required (raftstore.AccessPort)
	Users      netip.Prefix   // the devices' network; required
	Networks   []netip.Prefix // what devices may reach; required
	MTU        int            // default mesh.DefaultMTU
	// Bind is wg1's UDP socket (default: a standard bind on ListenPort).
	Bind conn.Bind
}

// UserspaceServer is wg1 without privileges: a second wireguard-go device
// whose TUN is a router into wg0's netstack and peers, under the same
// policy as Rules.
type UserspaceServer struct {
	cfg  UserspaceConfig
	log  *slog.Logger
	mesh Mesh
	dev  *mesh.Device
	tun  *routerTUN
	pol  atomic.Pointer[policy]

	mu     sync.Mutex // serializes SetPeers and Close
	closed bool       // guarded by mu
}

// NewUserspaceServer brings wg1 up with no peers and attaches it to m: the
// gateway becomes an address of m's netstack, and packets towards the
// devices' network are routed to wg1.
func NewUserspaceServer(cfg UserspaceConfig, m Mesh, log *slog.Logger) (*UserspaceServer, error) {
	switch {
	case log == nil || m == nil:
		return nil, errors.New("access: nil logger or mesh")
	case cfg.PrivateKey.IsZero() || !cfg.Address.IsValid() || cfg.ListenPort == 0:
		return nil, errors.New("access: server config: PrivateKey, Address and ListenPort are required")
	case !cfg.Users.IsValid() || len(cfg.Networks) == 0:
		return nil, errors.New("access: server config: Users and Networks are required")
	}
	if cfg.MTU == 0 {
		cfg.MTU = mesh.DefaultMTU
	}
	s := &UserspaceServer{cfg: cfg, log: log, mesh: m}
	s.pol.Store(&policy{local: m.Address(), gateway: cfg.Address, users: cfg.Users.Masked(),
		networks: cfg.Networks, devices: map[netip.Addr]bool{}, remote: map[netip.Addr]bool{}})
	s.tun = newRouterTUN(cfg.MTU, s.fromDevice)
	dev, err := mesh.New(mesh.Config{
		Mode:       mesh.ModeUserspace,
		TUN:        s.tun,
		PrivateKey: cfg.PrivateKey,
		ListenPort: cfg.ListenPort,
		Address:    cfg.Address,
		Prefix:     netip.PrefixFrom(cfg.Address, cfg.Address.BitLen()),
		MTU:        cfg.MTU,
		Bind:       cfg.Bind,
	}, log.With("component", "wg1"))
	if err != nil {
		s.tun.Close()
		return nil, err
	}
	s.dev = dev
	if err := m.AddLocalAddress(cfg.Address); err != nil {
		dev.Close()
		return nil, err
	}
	if err := m.SetUserRoute(cfg.Users, s.toDevice); err != nil {
		m.RemoveLocalAddress(cfg.Address)
		dev.Close()
		return nil, err
	}
	log.Info("wg1 up (userspace router)", "address", cfg.Address, "port", cfg.ListenPort, "public_key", cfg.PrivateKey.PublicKey())
	return s, nil
}

// fromDevice routes what a device sent.
func (s *UserspaceServer) fromDevice(pkt []byte) {
	switch s.pol.Load().fromDevice(pkt) {
	case toLocal:
		s.mesh.DeliverLocal(pkt)
	case toMesh:
		s.mesh.ForwardToMesh(pkt)
	case toDevice:
		s.tun.send(pkt)
	}
}

// toDevice routes what wg0's peers or the netstack send towards devices.
func (s *UserspaceServer) toDevice(pkt []byte) {
	if s.pol.Load().toDevice(pkt) == toDevice {
		s.tun.send(pkt)
	}
}

// PublicKey is the key devices know the entry nodes by.
func (s *UserspaceServer) PublicKey() mesh.Key { return s.cfg.PrivateKey.PublicKey() }

// SetPeers makes wg1's peers exactly peers, and remote the devices of
// other entry nodes that allow peers. The policy narrows before the peers
// change and widens after, as the kernel firewall does.
func (s *UserspaceServer) SetPeers(peers []Peer, remote []netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return mesh.ErrClosed
	}
	old := s.pol.Load()
	devices := map[netip.Addr]bool{}
	narrow := map[netip.Addr]bool{}
	var mp []mesh.Peer
	for _, p := range peers {
		mp = append(mp, mesh.Peer{PublicKey: p.PublicKey, AllowedIPs: []netip.Prefix{netip.PrefixFrom(p.Address, p.Address.BitLen())}})
		devices[p.Address] = p.AllowPeers
		if was, ok := old.devices[p.Address]; ok {
			narrow[p.Address] = was && p.AllowPeers
		}
	}
	far, farNarrow := map[netip.Addr]bool{}, map[netip.Addr]bool{}
	for _, a := range remote {
		far[a] = true
		farNarrow[a] = old.remote[a]
	}
	next := *old
	next.devices, next.remote = narrow, farNarrow
	s.pol.Store(&next)
	if err := s.dev.SetPeers(mp); err != nil {
		return err
	}
	final := next
	final.devices, final.remote = devices, far
	s.pol.Store(&final)
	return nil
}

// Stats reports every device's handshake and counters.
func (s *UserspaceServer) Stats() ([]mesh.PeerStats, error) { return s.dev.Stats() }

// Close detaches wg1 from the mesh and takes it down. Idempotent.
func (s *UserspaceServer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.mesh.SetUserRoute(s.cfg.Users, nil)
	var errs []error
	errs = append(errs, s.dev.Close())
	if err := s.mesh.RemoveLocalAddress(s.cfg.Address); err != nil {
		errs = append(errs, err)
	}
	s.log.Info("wg1 down")
	return errors.Join(errs...)
}

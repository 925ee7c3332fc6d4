package access

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/runos/runos-agent/iptables"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/nft"
)

// DefaultInterfaceName is wg1's interface.
const DefaultInterfaceName = "wg1"

// ServerConfig describes an entry node's wg1.
type ServerConfig struct {
	PrivateKey    mesh.Key   // the cluster's wg1 key; required
	Address       netip.Addr // the gateway address; required
	ListenPort    int        // required (raftstore.AccessPort)
	InterfaceName string     // default DefaultInterfaceName
	// MeshInterface is wg0's interface: replies to devices arrive on it
	// and are forwarded, so it forwards too. Required.
	MeshInterface string
	Users         netip.Prefix   // the devices' network; required
	Networks      []netip.Prefix // what devices may reach; required
	MTU           int            // default mesh.DefaultMTU
	// IPTables runs the host's iptables (zero value: this namespace).
	IPTables iptables.Host
}

// Peer is one device as its entry node serves it.
type Peer struct {
	Name       string
	PublicKey  mesh.Key
	Address    netip.Addr
	AllowPeers bool
}

// Server is an entry node's wg1: a kernel WireGuard interface (wireguard-go
// on a TUN) with one peer per device, a /32 route per device, IPv4
// forwarding on wg1 and wg0, the firewall of Rules, and the iptables
// chains that let it through the host's own (chains). It exists while the
// node is the entry of at least one device.
type Server struct {
	cfg ServerConfig
	log *slog.Logger
	dev *mesh.Device

	mu sync.Mutex // serializes SetPeers and Close
	// restoreMesh is wg0's forwarding setting from before, put back at
	// Close; "" when unchanged. Guarded by mu.
	restoreMesh string
	closed      bool // guarded by mu
	// kept are the iptables chains (chains) once installed; guarded by mu.
	kept []*iptables.Kept
}

// NewServer brings wg1 up with no peers: the firewall first, so no packet
// of a device ever passes unfiltered, then the interface, then forwarding.
func NewServer(cfg ServerConfig, log *slog.Logger) (*Server, error) {
	switch {
	case log == nil:
		return nil, errors.New("access: nil logger")
	case cfg.PrivateKey.IsZero() || !cfg.Address.IsValid() || cfg.ListenPort == 0:
		return nil, errors.New("access: server config: PrivateKey, Address and ListenPort are required")
	case cfg.MeshInterface == "" || !cfg.Users.IsValid() || len(cfg.Networks) == 0:
		return nil, errors.New("access: server config: MeshInterface, Users and Networks are required")
	}
	if cfg.InterfaceName == "" {
		cfg.InterfaceName = DefaultInterfaceName
	}
	s := &Server{cfg: cfg, log: log}
	if err := s.applyRules(nil); err != nil {
		return nil, err
	}
	dev, err := mesh.New(mesh.Config{
		Mode:          mesh.ModeKernel,
		InterfaceName: cfg.InterfaceName,
		PrivateKey:    cfg.PrivateKey,
		ListenPort:    cfg.ListenPort,
		Address:       cfg.Address,
		// Only the gateway is routed as a whole: each device gets a /32
		// route of its own (its AllowedIPs), so a device that moves to
		// another entry node is reached through wg0 again.
		Prefix: netip.PrefixFrom(cfg.Address, cfg.Address.BitLen()),
		MTU:    cfg.MTU,
	}, log.With("component", "wg1"))
	if err != nil {
		nft.Run(nft.Delete("inet", TableName))
		return nil, err
	}
	s.dev = dev
	if err := setForwarding(cfg.InterfaceName, "1"); err != nil {
		s.Close()
		return nil, err
	}
	s.allowInIPTables()
	old, err := readForwarding(cfg.MeshInterface)
	if err == nil && old != "1" {
		err = setForwarding(cfg.MeshInterface, "1")
		s.restoreMesh = old
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	log.Info("wg1 up", "interface", cfg.InterfaceName, "address", cfg.Address, "port", cfg.ListenPort, "public_key", cfg.PrivateKey.PublicKey())
	return s, nil
}

// PublicKey is the key devices know the entry nodes by.
func (s *Server) PublicKey() mesh.Key { return s.cfg.PrivateKey.PublicKey() }

// SetPeers makes wg1's peers exactly peers (a device removed loses its
// session at once) and updates the firewall's set of devices that may
// see each other: those of peers that allow it, and remote, the devices of
// other entry nodes that do (reached over wg0: each device's /32 rides in
// its entry node's AllowedIPs, and wg1 routes only its own peers).
func (s *Server) SetPeers(peers []Peer, remote []netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return mesh.ErrClosed
	}
	var mp []mesh.Peer
	var allow []netip.Addr
	for _, p := range peers {
		mp = append(mp, mesh.Peer{PublicKey: p.PublicKey, AllowedIPs: []netip.Prefix{netip.PrefixFrom(p.Address, p.Address.BitLen())}})
		if p.AllowPeers {
			allow = append(allow, p.Address)
		}
	}
	allow = append(allow, remote...)
	// Narrow the firewall before adding peers and widen it after, so a
	// half-applied change never lets a device see one it should not.
	if err := s.applyRules(allow); err != nil {
		return err
	}
	// A reload of the host's firewall takes the chains with it.
	iptables.Recheck(context.Background(), s.log, s.kept...)
	return s.dev.SetPeers(mp)
}

// Stats reports every device's handshake and counters.
func (s *Server) Stats() ([]mesh.PeerStats, error) { return s.dev.Stats() }

// Close takes wg1 down: the interface (with its routes), the firewall
// table, and wg0's forwarding as it was. Idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.dev != nil {
		errs = append(errs, s.dev.Close())
	}
	if s.restoreMesh != "" {
		if err := setForwarding(s.cfg.MeshInterface, s.restoreMesh); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, k := range s.kept {
		errs = append(errs, k.Remove(context.Background()))
	}
	if err := nft.Run(nft.Delete("inet", TableName)); err != nil {
		errs = append(errs, err)
	}
	s.log.Info("wg1 down")
	return errors.Join(errs...)
}

// chains let what the table passed through the host's iptables too: an
// nftables accept cannot overrule an iptables policy of DROP, and hosts
// set one on FORWARD (Docker) and on INPUT (ufw: deny incoming). Every
// packet to or from wg1 has been through the table's chains by then, so
// RUNOS-ACCESS accepts them all. RUNOS-ACCESS-IN takes devices' packets for
// this node, and their handshakes on the listen port: a device always
// opens the connection, so an entry node needs that port open.
func (s *Server) chains() []iptables.Chain {
	wg1 := s.cfg.InterfaceName
	return []iptables.Chain{
		{Table: "filter", Name: "RUNOS-ACCESS", From: "FORWARD", First: true, Rules: [][]string{
			{"-i", wg1, "-j", "ACCEPT"},
			{"-o", wg1, "-j", "ACCEPT"},
		}},
		{Table: "filter", Name: "RUNOS-ACCESS-IN", From: "INPUT", First: true, Rules: [][]string{
			{"-i", wg1, "-j", "ACCEPT"},
			{"-p", "udp", "--dport", strconv.Itoa(int(s.cfg.ListenPort)), "-j", "ACCEPT"},
		}},
	}
}

// allowInIPTables installs chains. A host without iptables has no iptables
// policy to get past; one whose iptables fails is told in the log.
func (s *Server) allowInIPTables() {
	allowed := false
	if s.cfg.IPTables.Available() {
		var errs []error
		for _, c := range s.chains() {
			k := &iptables.Kept{Host: s.cfg.IPTables, Chain: c}
			errs = append(errs, k.Ensure(context.Background()))
			s.kept = append(s.kept, k)
		}
		err := errors.Join(errs...)
		if err != nil {
			s.log.Warn("allowing wg1 in iptables", "err", err)
		}
		allowed = err == nil
	}
	for _, c := range nft.BlockingForward(allowed) {
		s.log.Warn("the host drops forwarded packets: allow wg1 there, or devices reach only this node", "chain", c.String())
	}
}

func (s *Server) applyRules(peers []netip.Addr) error {
	return nft.Run(Rules{Interface: s.cfg.InterfaceName, Users: s.cfg.Users, Networks: s.cfg.Networks, Peers: peers}.Ruleset())
}

// IPv4 forwarding is turned on per interface (the interface a packet
// arrives on decides), not host-wide: the node forwards between wg1 and
// wg0 and nowhere else because of us.
func forwardingPath(iface string) string {
	return filepath.Join("/proc/sys/net/ipv4/conf", iface, "forwarding")
}

func readForwarding(iface string) (string, error) {
	b, err := os.ReadFile(forwardingPath(iface))
	return strings.TrimSpace(string(b)), err
}

func setForwarding(iface, v string) error {
	if err := os.WriteFile(forwardingPath(iface), []byte(v), 0o644); err != nil {
		return fmt.Errorf("access: forwarding on %s: %w", iface, err)
	}
	return nil
}

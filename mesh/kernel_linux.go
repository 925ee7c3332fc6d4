package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/runos/runos-agent/iptables"
	"github.com/runos/runos-agent/nft"
)

// kernelLink is the host-side configuration of a kernel-mode device: the
// interface's address, its link state, and the routes that send mesh and pod
// traffic into it. Its methods are called with Device.mu held (or before the
// Device is shared), so it needs no lock of its own.
type kernelLink struct {
	name   string
	cfg    Config
	log    *slog.Logger
	routes map[netip.Prefix]struct{} // peer routes we installed
	// guarded: the guard table is ours to delete at close.
	guarded bool
	// input is the iptables chain (inputChain) while we keep it.
	input *iptables.Kept
}

func (k *kernelLink) link() (netlink.Link, error) {
	l, err := netlink.LinkByName(k.name)
	if err != nil {
		return nil, fmt.Errorf("mesh: find interface %s: %w", k.name, err)
	}
	return l, nil
}

// setup gives the interface this node's /32, brings it up, and routes the
// whole mesh prefix into it: every other node's mesh IP is reached through
// WireGuard, which picks the peer by AllowedIPs.
func (k *kernelLink) setup() error {
	l, err := k.link()
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: prefixIPNet(netip.PrefixFrom(k.cfg.Address, k.cfg.Address.BitLen()))}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("mesh: add address %s to %s: %w", k.cfg.Address, k.name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("mesh: bring %s up: %w", k.name, err)
	}
	if err := netlink.RouteReplace(k.route(l, k.cfg.Prefix)); err != nil {
		return fmt.Errorf("mesh: route %s via %s: %w", k.cfg.Prefix, k.name, err)
	}
	if !k.cfg.Guard {
		return nil
	}
	k.openInput()
	if _, err := exec.LookPath("nft"); err != nil {
		k.log.Warn("mesh: nft not found: this node's mesh IP stays reachable from its other interfaces (install nftables)")
		return nil
	}
	if err := nft.Run(guardRuleset(k.name, k.cfg)); err != nil {
		return fmt.Errorf("mesh: guard the mesh addresses: %w", err)
	}
	k.guarded = true
	return nil
}

// openInput installs inputChain where iptables exists; a failure is
// logged, since a host without an INPUT policy of DROP needs none.
func (k *kernelLink) openInput() {
	kept := &iptables.Kept{Chain: inputChain(k.name, k.cfg.Prefix)}
	if !kept.Host.Available() {
		return
	}
	if err := kept.Ensure(context.Background()); err != nil {
		k.log.Warn("mesh: allowing the mesh in iptables' INPUT; a host firewall that drops incoming connections keeps the members out", "err", err)
		return
	}
	k.input = kept
}

// recheckInput puts the input chain back after a reload of the host's
// firewall took it (at most every iptables.DefaultRecheck).
func (k *kernelLink) recheckInput() {
	if k.input != nil {
		iptables.Recheck(context.Background(), k.log, k.input)
	}
}

func (k *kernelLink) route(l netlink.Link, p netip.Prefix) *netlink.Route {
	return &netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       prefixIPNet(p),
		Scope:     netlink.SCOPE_LINK,
	}
}

// routePrefixes returns the prefixes that need a route of their own: those
// outside the mesh prefix (which is routed as a whole). A prefix that covers
// the mesh prefix (0.0.0.0/0 at worst) is refused: it would pull the
// underlay, and with it WireGuard's own packets, into the tunnel.
func (k *kernelLink) routePrefixes(peers map[Key]Peer) map[netip.Prefix]struct{} {
	want := map[netip.Prefix]struct{}{}
	for _, key := range sortedKeys(peers) {
		for _, p := range peers[key].AllowedIPs {
			switch {
			case p.Bits() >= k.cfg.Prefix.Bits() && k.cfg.Prefix.Contains(p.Addr()):
				// inside the mesh prefix: already routed
			case p.Overlaps(k.cfg.Prefix):
				k.log.Warn("mesh: not routing a prefix that covers the mesh", "prefix", p, "peer", key)
			default:
				want[p] = struct{}{}
			}
		}
	}
	return want
}

// syncRoutes installs a route for every wanted prefix and deletes the ones
// no peer claims any more. Wanted routes are re-asserted on every call (an
// idempotent replace), so a route deleted behind our back comes back at the
// next reconcile. Failures are collected, and a failed deletion stays
// tracked so the next call retries it.
func (k *kernelLink) syncRoutes(peers map[Key]Peer) error {
	l, err := k.link()
	if err != nil {
		return err
	}
	want := k.routePrefixes(peers)
	var errs []error
	for p := range k.routes {
		if _, ok := want[p]; ok {
			continue
		}
		if err := netlink.RouteDel(k.route(l, p)); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("mesh: delete route %s: %w", p, err))
			continue
		}
		delete(k.routes, p)
	}
	for p := range want {
		if err := netlink.RouteReplace(k.route(l, p)); err != nil {
			errs = append(errs, fmt.Errorf("mesh: route %s via %s: %w", p, k.name, err))
			continue
		}
		k.routes[p] = struct{}{}
	}
	return errors.Join(errs...)
}

// close deletes the peer routes. The interface itself (and the mesh route
// and address with it) disappears when wireguard-go closes the TUN.
func (k *kernelLink) close() error {
	if k.input != nil {
		if err := k.input.Remove(context.Background()); err != nil {
			k.log.Warn("mesh: remove the iptables input chain", "err", err)
		}
		k.input = nil
	}
	if k.guarded {
		if err := nft.Run(nft.Delete("ip", GuardTable)); err != nil {
			k.log.Warn("mesh: remove the guard table", "err", err)
		}
		k.guarded = false
	}
	if _, err := netlink.LinkByName(k.name); err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			// Someone deleted the interface; its routes went with it.
			clear(k.routes)
			return nil
		}
	}
	return k.syncRoutes(nil)
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

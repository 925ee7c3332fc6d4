// Package access is the node side of user access (wg1): the WireGuard
// client config a device is given, its QR code, and the entry node's wg1
// interface with the firewall that keeps devices inside the cluster's
// networks. What devices exist is the Raft state's business
// (raftstore/access.go); this package only renders and enforces it.
package access

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// ClientConfig is a device's WireGuard configuration in wg-quick's format.
type ClientConfig struct {
	// Name is the device's name (a comment in the file).
	Name string
	// PrivateKey is the device's key (base64); empty when the user made
	// the key pair, who then puts theirs in.
	PrivateKey string
	Address    netip.Addr // the device's address (a /32)
	DNS        netip.Addr // the entry node's wg1 address
	// ServerKey is the wg1 public key of the entry nodes (base64).
	ServerKey string
	// Endpoint is the entry node's public host:port (a host name or an
	// address).
	Endpoint string
	// AllowedIPs are the cluster's networks: mesh (with wg1), pods and
	// services.
	AllowedIPs []netip.Prefix
}

// KeepaliveSeconds is the device's PersistentKeepalive: it holds the NAT
// mapping of a device behind a home router open so the cluster can answer.
const KeepaliveSeconds = 25

// PrivateKeyPlaceholder stands in for a key the node never saw.
const PrivateKeyPlaceholder = "<your private key>"

// Render writes the config. Nothing in it names the entry node except the
// Endpoint, so moving a device changes that one line.
func (c ClientConfig) Render() string {
	var b strings.Builder
	key := c.PrivateKey
	if key == "" {
		key = PrivateKeyPlaceholder
	}
	allowed := make([]string, len(c.AllowedIPs))
	for i, p := range c.AllowedIPs {
		allowed[i] = p.String()
	}
	fmt.Fprintf(&b, "# runos-agent user access: device %s\n", c.Name)
	fmt.Fprintf(&b, "[Interface]\nPrivateKey = %s\nAddress = %s\n", key, netip.PrefixFrom(c.Address, c.Address.BitLen()))
	if c.DNS.IsValid() {
		fmt.Fprintf(&b, "DNS = %s\n", c.DNS)
	}
	fmt.Fprintf(&b, "\n[Peer]\nPublicKey = %s\nEndpoint = %s\nAllowedIPs = %s\nPersistentKeepalive = %d\n",
		c.ServerKey, c.Endpoint, strings.Join(allowed, ", "), KeepaliveSeconds)
	return b.String()
}

// PickEndpoint chooses the address a device dials from a node's underlay
// candidates ("host:port", as the state records them): a public IPv4
// address first (the node's own or its STUN-reflexive one), then a public
// IPv6 one, then a private one (a device on the same LAN). The port is
// always port (wg1's), not the candidate's. ok is false when no candidate
// is usable.
func PickEndpoint(candidates []string, port int) (string, bool) {
	var best netip.Addr
	rank := func(a netip.Addr) int {
		switch {
		case !a.IsValid() || a.IsLoopback() || a.IsUnspecified() || a.IsLinkLocalUnicast() || a.IsMulticast():
			return 0
		case a.Is4() && !a.IsPrivate():
			return 4
		case a.Is6() && !a.IsPrivate():
			return 3
		case a.Is4():
			return 2
		}
		return 1
	}
	for _, c := range candidates {
		ap, err := netip.ParseAddrPort(c)
		if err != nil {
			continue
		}
		if a := ap.Addr().Unmap(); rank(a) > rank(best) {
			best = a
		}
	}
	if rank(best) == 0 {
		return "", false
	}
	return net.JoinHostPort(best.String(), strconv.Itoa(port)), true
}

// Endpoint turns an operator's --endpoint (host or host:port) into
// host:port, with port when none is given.
func Endpoint(s string, port int) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", fmt.Errorf("empty endpoint")
	}
	if host, p, err := net.SplitHostPort(s); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 || host == "" {
			return "", fmt.Errorf("endpoint %q: want host or host:port", s)
		}
		return s, nil
	}
	if strings.ContainsAny(s, "/ []") {
		return "", fmt.Errorf("endpoint %q: want host or host:port", s)
	}
	return net.JoinHostPort(s, strconv.Itoa(port)), nil
}

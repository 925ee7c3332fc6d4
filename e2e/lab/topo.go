package lab

import (
	"fmt"
	"net/netip"
	"strconv"
	"sync"
)

// Segment is a layer-2 switch: a bridge alone in its own namespace. Hosts and
// routers plug into it with veth pairs and get addresses from its prefix,
// handed out in order. On a LAN, the first address (.1) is reserved for the
// router (the gateway); on the Internet there is no gateway and addresses
// start at .1.
type Segment struct {
	lab    *Lab
	name   string
	ns     string
	prefix netip.Prefix
	gw     netip.Addr // invalid on the Internet

	mu     sync.Mutex
	next   netip.Addr
	ports  int
	router *Router
}

// LAN creates a switched segment whose gateway is the first address of
// subnet. Attach a Router to give it one; hosts route via it regardless.
func (l *Lab) LAN(name string, subnet netip.Prefix) *Segment {
	l.t.Helper()
	s := l.segment("sw-"+name, subnet, allowed)
	s.gw = s.next
	s.next = s.next.Next()
	return s
}

// Internet creates the "public" segment. subnet must lie in 198.18.0.0/15
// (or fc00::/7). Members reach each other on-link; there is no gateway.
func (l *Lab) Internet(subnet netip.Prefix) *Segment {
	l.t.Helper()
	return l.segment("sw-internet", subnet, internetRanges)
}

func (l *Lab) segment(name string, subnet netip.Prefix, ranges []netip.Prefix) *Segment {
	l.t.Helper()
	subnet = subnet.Masked()
	if !subnet.IsValid() || !within(subnet, ranges) {
		l.t.Fatalf("lab: segment %s: prefix %v is not inside %v", name, subnet, ranges)
	}
	s := &Segment{lab: l, name: name, prefix: subnet, next: subnet.Addr().Next()}
	s.ns = l.netns(name)
	l.must(run("ip", "-n", s.ns, "link", "add", "br0", "type", "bridge"))
	l.must(run("ip", "-n", s.ns, "link", "set", "br0", "up"))
	// A switch is pure layer 2: keep bridged frames out of this namespace's
	// netfilter even where br_netfilter is loaded (the setting is per
	// namespace; it may be absent when br_netfilter is not loaded at all).
	for _, k := range []string{"iptables", "ip6tables", "arptables"} {
		_, _ = run("ip", "netns", "exec", s.ns, "sysctl", "-qw", "net.bridge.bridge-nf-call-"+k+"=0")
	}
	return s
}

// Prefix is the segment's subnet.
func (s *Segment) Prefix() netip.Prefix { return s.prefix }

// Gateway is the LAN's router address, or the zero Addr on the Internet.
func (s *Segment) Gateway() netip.Addr { return s.gw }

// Alloc hands out the segment's next free address; it fails the test when the
// prefix is exhausted.
func (s *Segment) Alloc() netip.Addr {
	s.lab.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.next
	// Stop at the end of the prefix, and at the IPv4 broadcast address.
	if !s.prefix.Contains(a) || (a.Is4() && !s.prefix.Contains(a.Next())) {
		s.lab.t.Fatalf("lab: segment %s: prefix %v exhausted", s.name, s.prefix)
	}
	s.next = a.Next()
	return a
}

// plug connects namespace ns to the switch with a veth pair whose end in ns
// is called ifname, brings it up and gives it addr.
func (s *Segment) plug(ns, ifname string, addr netip.Addr) {
	l := s.lab
	l.t.Helper()
	s.mu.Lock()
	s.ports++
	port := "p" + strconv.Itoa(s.ports)
	s.mu.Unlock()
	// Created inside the switch namespace with the peer born in ns: nothing
	// ever appears in the root namespace.
	l.must(run("ip", "-n", s.ns, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns))
	l.must(run("ip", "-n", s.ns, "link", "set", port, "master", "br0", "up"))
	l.must(run("ip", "-n", ns, "addr", "add", netip.PrefixFrom(addr, s.prefix.Bits()).String(), "dev", ifname))
	l.must(run("ip", "-n", ns, "link", "set", ifname, "up"))
}

// Host is a namespace with one interface, eth0, on a segment.
type Host struct {
	node
	seg  *Segment
	addr netip.Addr

	kubeMu sync.Mutex
	kube   *kubeNode // set by the first StartKubeNode
}

// Host creates a namespace plugged into seg with the segment's next address
// and, on a LAN, a default route via the LAN's gateway.
func (l *Lab) Host(name string, seg *Segment) *Host {
	l.t.Helper()
	h := &Host{node: node{lab: l, name: name, ns: l.netns(name)}, seg: seg, addr: seg.Alloc()}
	seg.plug(h.ns, "eth0", h.addr)
	if seg.gw.IsValid() {
		l.must(run("ip", "-n", h.ns, "route", "add", "default", "via", seg.gw.String()))
	}
	return h
}

// Addr is the host's address on its segment.
func (h *Host) Addr() netip.Addr { return h.addr }

// Segment is the segment the host is plugged into.
func (h *Host) Segment() *Segment { return h.seg }

// NATKind selects a Router's address translation.
type NATKind int

const (
	// NATEasy is port-preserving masquerade: a flow keeps its source port
	// when it is free, so the mapping seen by one peer (or a STUN server) is
	// the one every peer sees. Hole punching works through it.
	NATEasy NATKind = iota + 1
	// NATHard is `masquerade fully-random`: every flow gets a random public
	// port, so a mapping learned from one peer is useless to another and
	// hole punching fails; traffic has to be relayed.
	NATHard
)

func (k NATKind) String() string {
	switch k {
	case NATEasy:
		return "easy"
	case NATHard:
		return "hard"
	}
	return "NATKind(" + strconv.Itoa(int(k)) + ")"
}

// Router is a NAT gateway between a WAN segment (interface "wan") and a LAN
// (interface "lan", holding the LAN's gateway address).
type Router struct {
	node
	wan, lan *Segment
	nat      NATKind

	mu      sync.Mutex
	wanAddr netip.Addr
}

// routerRules is the router's whole ruleset: masquerade out of the WAN, and a
// home router's firewall that drops whatever arrives on the WAN unless it
// belongs to a flow started from inside.
const routerRules = `table inet lab_router {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan" ct state established,related accept
		iifname "wan" drop
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "wan" ct state established,related accept
		iifname "wan" drop
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan" masquerade%s
	}
}
`

// Router creates a NAT router with a WAN leg on wan (next free address,
// default route via wan's gateway if it has one) and a LAN leg owning lan's
// gateway address.
func (l *Lab) Router(name string, wan, lan *Segment, nat NATKind) *Router {
	l.t.Helper()
	if !lan.gw.IsValid() {
		l.t.Fatalf("lab: router %s: LAN side %s has no gateway address (use a LAN segment)", name, lan.name)
	}
	lan.mu.Lock()
	taken := lan.router
	lan.mu.Unlock()
	if taken != nil {
		l.t.Fatalf("lab: router %s: LAN %s already has router %s", name, lan.name, taken.name)
	}
	var opts string
	switch nat {
	case NATEasy:
	case NATHard:
		opts = " fully-random"
	default:
		l.t.Fatalf("lab: router %s: unknown NAT kind %v", name, nat)
	}
	r := &Router{node: node{lab: l, name: name, ns: l.netns(name)}, wan: wan, lan: lan, nat: nat, wanAddr: wan.Alloc()}
	lan.mu.Lock()
	lan.router = r
	lan.mu.Unlock()
	wan.plug(r.ns, "wan", r.wanAddr)
	lan.plug(r.ns, "lan", lan.gw)
	r.defaultRoute()
	// rp_filter off explicitly: new namespaces inherit the root's settings
	// where net.core.devconf_inherit_init_net says so, and strict reverse-path
	// filtering breaks asymmetric lab topologies.
	for _, kv := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"} {
		l.must(run("ip", "netns", "exec", r.ns, "sysctl", "-qw", kv))
	}
	l.must(runStdin(fmt.Sprintf(routerRules, opts), "ip", "netns", "exec", r.ns, "nft", "-f", "-"))
	return r
}

func (r *Router) defaultRoute() {
	if r.wan.gw.IsValid() {
		r.lab.must(run("ip", "-n", r.ns, "route", "replace", "default", "via", r.wan.gw.String()))
	}
}

// WANAddr is the router's current public (WAN-side) address.
func (r *Router) WANAddr() netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.wanAddr
}

// LANAddr is the router's LAN address, the LAN's gateway.
func (r *Router) LANAddr() netip.Addr { return r.lan.gw }

// NAT is the router's translation kind.
func (r *Router) NAT() NATKind { return r.nat }

// SetWANAddr renumbers the WAN leg, as an ISP handing out a new address does.
// Removing the old address makes the kernel drop the conntrack entries
// masqueraded to it, so every mapping changes. Get a fresh address from the
// WAN segment's Alloc.
func (r *Router) SetWANAddr(a netip.Addr) error {
	if !r.wan.prefix.Contains(a) {
		return fmt.Errorf("lab: router %s: %v is not in WAN prefix %v", r.name, a, r.wan.prefix)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	bits := r.wan.prefix.Bits()
	if _, err := run("ip", "-n", r.ns, "addr", "del", netip.PrefixFrom(r.wanAddr, bits).String(), "dev", "wan"); err != nil {
		return err
	}
	if _, err := run("ip", "-n", r.ns, "addr", "add", netip.PrefixFrom(a, bits).String(), "dev", "wan"); err != nil {
		return err
	}
	r.wanAddr = a
	// The default route went away with the old address.
	if r.wan.gw.IsValid() {
		if _, err := run("ip", "-n", r.ns, "route", "replace", "default", "via", r.wan.gw.String()); err != nil {
			return err
		}
	}
	return nil
}

// FlushConntrack forgets every tracked flow in the router, as a router reboot
// or a NAT table eviction would: existing mappings vanish, the next outbound
// packet of a flow gets a new one (a new random port under NATHard) and
// inbound packets of forgotten flows are dropped as unsolicited. It needs the
// conntrack tool (Debian package conntrack).
func (r *Router) FlushConntrack() error {
	_, err := r.Run("conntrack", "-F")
	return err
}

// Conntrack lists the router's tracked flows (`conntrack -L`), one a line.
func (r *Router) Conntrack() ([]string, error) {
	out, err := r.Run("conntrack", "-L")
	if err != nil {
		return nil, err
	}
	var flows []string
	for _, line := range splitLines(out) {
		// The summary ("N flow entries have been shown.") goes to stderr,
		// which CombinedOutput mixes in.
		if !isSummary(line) {
			flows = append(flows, line)
		}
	}
	return flows, nil
}

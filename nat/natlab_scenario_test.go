package nat

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/runos/runos-agent/nat/natlab"
)

// lab is a natlab topology: an "internet" (198.18.0.0/15) with public
// members, and homes (192.168.N.0/24 behind a NAT at 198.18.N.1).
type lab struct {
	t     *testing.T
	w     *natlab.World
	inet  *natlab.Network
	homes map[int]*natlab.Network
	nats  map[int]*natlab.NAT
	hosts map[*tnode]*natlab.Host
	n     int
}

func newLab(t *testing.T) *lab {
	w := natlab.NewWorld()
	return &lab{t: t, w: w, inet: w.NewNetwork("internet", netip.MustParsePrefix("198.18.0.0/15")),
		homes: map[int]*natlab.Network{}, nats: map[int]*natlab.NAT{}, hosts: map[*tnode]*natlab.Host{}}
}

func (l *lab) node(name string, h *natlab.Host, relay bool) *tnode {
	l.n++
	n := newNode(l.t, name, l.n, h.Bind(), relay)
	l.hosts[n] = h
	return n
}

// public adds a member with a public address.
func (l *lab) public(name string, last byte, relay bool) *tnode {
	h, err := l.inet.NewHost(name, netip.AddrFrom4([4]byte{198, 18, 0, last}))
	if err != nil {
		l.t.Fatal(err)
	}
	return l.node(name, h, relay)
}

// home adds a member at 192.168.home.hostNum behind home's NAT (created on
// first use with the given kind).
func (l *lab) home(name string, home int, hostNum byte, kind natlab.NATKind) *tnode {
	lan := l.homes[home]
	if lan == nil {
		lan = l.w.NewNetwork(fmt.Sprint("home", home), netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(home), 0}), 24))
		nat, err := l.w.NewNAT(kind, lan, l.inet, netip.AddrFrom4([4]byte{198, 18, byte(home), 1}))
		if err != nil {
			l.t.Fatal(err)
		}
		l.homes[home], l.nats[home] = lan, nat
	}
	h, err := lan.NewHost(name, netip.AddrFrom4([4]byte{192, 168, byte(home), hostNum}))
	if err != nil {
		l.t.Fatal(err)
	}
	return l.node(name, h, false)
}

func (l *lab) addr(n *tnode) netip.AddrPort { return netip.AddrPortFrom(l.hosts[n].Addr(), n.port()) }

// candidates: each node's own address plus its STUN-reflexive address as
// the given STUN servers (public members) see it.
func (l *lab) candidates(nodes []*tnode, stun ...*tnode) map[*tnode][]netip.AddrPort {
	var servers []netip.AddrPort
	for _, s := range stun {
		servers = append(servers, l.addr(s))
	}
	m := map[*tnode][]netip.AddrPort{}
	for _, n := range nodes {
		m[n] = []netip.AddrPort{l.addr(n)}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := n.bind.Reflexive(ctx, servers)
		cancel()
		if err != nil {
			l.t.Fatalf("%s: reflexive: %v", n.name, err)
		}
		if r != l.addr(n) {
			m[n] = append(m[n], r)
		}
	}
	return m
}

func TestNatlabEasyNATsGoDirect(t *testing.T) {
	l := newLab(t)
	r := l.public("r", 10, true)
	a := l.home("a", 1, 2, natlab.EasyNAT)
	b := l.home("b", 2, 2, natlab.EasyNAT)
	nodes := []*tnode{r, a, b}
	connect(t, nodes, l.candidates(nodes, r))
	p := waitPath(t, a, b, "direct", isDirect)
	if p.Addr.Addr() != l.nats[2].Public() {
		t.Fatalf("a reaches b at %v, want b's NAT %v", p.Addr, l.nats[2].Public())
	}
	waitPath(t, b, a, "direct", isDirect)
	mustEcho(t, a, b)
	mustEcho(t, b, a)
	if got := a.bind.PathOf(r.pub); got.Kind != PathDirect || got.Observed.Addr() != l.nats[1].Public() {
		t.Fatalf("a -> r: %+v", got)
	}
}

func TestNatlabSameLANPrefersLAN(t *testing.T) {
	l := newLab(t)
	r := l.public("r", 10, true)
	a := l.home("a", 1, 2, natlab.EasyNAT)
	b := l.home("b", 1, 3, natlab.EasyNAT)
	nodes := []*tnode{r, a, b}
	connect(t, nodes, l.candidates(nodes, r))
	waitPath(t, a, b, "LAN", func(p PathInfo) bool { return p.Kind == PathDirect && p.Addr == l.addr(b) })
	waitPath(t, b, a, "LAN", func(p PathInfo) bool { return p.Kind == PathDirect && p.Addr == l.addr(a) })
	mustEcho(t, a, b)
}

func TestNatlabHardNATRelays(t *testing.T) {
	for _, kinds := range [][2]natlab.NATKind{{natlab.HardNAT, natlab.EasyNAT}, {natlab.HardNAT, natlab.HardNAT}} {
		t.Run(kinds[0].String()+"-"+kinds[1].String(), func(t *testing.T) {
			l := newLab(t)
			r := l.public("r", 10, true)
			a := l.home("a", 1, 2, kinds[0])
			b := l.home("b", 2, 2, kinds[1])
			nodes := []*tnode{r, a, b}
			connect(t, nodes, l.candidates(nodes, r))
			waitPath(t, a, b, "relay", viaRelay(r))
			waitPath(t, b, a, "relay", viaRelay(r))
			mustEcho(t, a, b)
			mustEcho(t, b, a)
			st := r.bind.Stats()
			if st.RelayedPackets == 0 || st.RelayedBytes == 0 {
				t.Fatalf("relay stats %+v", st)
			}
			// It stays relayed: no direct path appears through a hard NAT.
			time.Sleep(300 * time.Millisecond)
			if p := a.bind.PathOf(b.pub); p.Kind != PathRelay {
				t.Fatalf("a -> b: %v", p)
			}
		})
	}
}

func TestNatlabNetcheck(t *testing.T) {
	l := newLab(t)
	s1 := l.public("s1", 10, false)
	s2 := l.public("s2", 11, false)
	e := l.home("easy", 1, 2, natlab.EasyNAT)
	h := l.home("hard", 2, 2, natlab.HardNAT)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	servers := []netip.AddrPort{l.addr(s1), l.addr(s2)}
	if rep := e.bind.Netcheck(ctx, servers); !rep.UDP || rep.Mapping != MappingEndpointIndependent || rep.Public.Addr() != l.nats[1].Public() {
		t.Fatalf("easy: %+v", rep)
	}
	if rep := h.bind.Netcheck(ctx, servers); !rep.UDP || rep.Mapping != MappingEndpointDependent {
		t.Fatalf("hard: %+v", rep)
	}
}

// TestNatlabUpgradeAndFailover: two easy NATs blocked from each other at
// first (relay), two relays; relays die one by one; the block lifts.
func TestNatlabUpgradeAndFailover(t *testing.T) {
	l := newLab(t)
	r1 := l.public("r1", 10, true)
	r2 := l.public("r2", 11, true)
	a := l.home("a", 1, 2, natlab.EasyNAT)
	b := l.home("b", 2, 2, natlab.EasyNAT)
	nodes := []*tnode{r1, r2, a, b}
	cands := l.candidates(nodes, r1)

	blockAB := true
	dead := map[netip.Addr]bool{}
	ha, hb := l.hosts[a].Addr(), l.hosts[b].Addr()
	pa, pb := l.nats[1].Public(), l.nats[2].Public()
	rule := func(from, to netip.AddrPort) bool {
		if dead[from.Addr()] || dead[to.Addr()] {
			return true
		}
		return blockAB && (from.Addr() == ha && to.Addr() == pb || from.Addr() == hb && to.Addr() == pa)
	}
	set := func(f func()) {
		l.w.SetDrop(nil)
		f()
		l.w.SetDrop(rule)
	}
	set(func() { dead[l.hosts[r2].Addr()] = true })
	connect(t, nodes, cands)
	waitPath(t, a, b, "relay via r1", viaRelay(r1))
	mustEcho(t, a, b)

	set(func() { dead[l.hosts[r2].Addr()] = false; dead[l.hosts[r1].Addr()] = true })
	waitPath(t, a, b, "relay via r2", viaRelay(r2))
	waitPath(t, b, a, "relay via r2", viaRelay(r2))
	mustEcho(t, a, b)

	set(func() { dead[l.hosts[r2].Addr()] = true })
	waitPath(t, a, b, "none", isNone)
	set(func() { dead[l.hosts[r1].Addr()] = false })
	waitPath(t, a, b, "relay via r1 again", viaRelay(r1))
	mustEcho(t, b, a)

	start := time.Now()
	set(func() { blockAB = false })
	waitPath(t, a, b, "direct", isDirect)
	waitPath(t, b, a, "direct", isDirect)
	t.Logf("relay -> direct upgrade after the block lifted: %v", time.Since(start))
	mustEcho(t, a, b)
	noGenuineDropped(t, nodes...)
}

// TestNatlabMappingChange: a's router forgets its mappings; the path
// recovers without restarting anything.
func TestNatlabMappingChange(t *testing.T) {
	l := newLab(t)
	r := l.public("r", 10, true)
	a := l.home("a", 1, 2, natlab.EasyNAT)
	b := l.home("b", 2, 2, natlab.EasyNAT)
	nodes := []*tnode{r, a, b}
	connect(t, nodes, l.candidates(nodes, r))
	before := waitPath(t, b, a, "direct", isDirect)
	l.nats[1].Flush()
	a.bind.NetworkChanged()
	waitPath(t, b, a, "direct at a's new mapping", func(p PathInfo) bool { return p.Kind == PathDirect && p.Addr != before.Addr })
	mustEcho(t, a, b)
	mustEcho(t, b, a)
	noGenuineDropped(t, nodes...)
}

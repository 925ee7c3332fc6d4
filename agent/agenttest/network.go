package agenttest

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/runos/runos-agent/nat/natlab"
)

// network is the natlab world the nodes' underlay sockets live in: one
// network, 127.0.0.0/8, node i at 127.0.0.(10+i). Loopback addresses keep
// what the agents also do over real sockets (the join endpoint on the
// advertised address, UIs) on this machine.
type network struct {
	w   *natlab.World
	lan *natlab.Network

	// hostsMu guards hosts. It is held while calling into natlab, so drop
	// (called by natlab with its world lock held) must never take it.
	hostsMu sync.Mutex
	hosts   map[int]*natlab.Host

	// rulesMu guards the drop rules; a leaf lock (drop runs under natlab's
	// world lock, so nothing may call natlab while holding it).
	rulesMu  sync.Mutex
	cut      map[netip.Addr]bool // crashed nodes: nothing in or out
	side     map[netip.Addr]int  // partition side; absent is side 0
	nextSide int
	links    map[[2]netip.Addr]bool // cut links between two nodes, both ways
	oneWay   map[[2]netip.Addr]bool // {from, to}: datagrams dropped in that direction only
}

func newNetwork() *network {
	n := &network{
		w:      natlab.NewWorld(),
		hosts:  map[int]*natlab.Host{},
		cut:    map[netip.Addr]bool{},
		side:   map[netip.Addr]int{},
		links:  map[[2]netip.Addr]bool{},
		oneWay: map[[2]netip.Addr]bool{},
	}
	n.lan = n.w.NewNetwork("loopback", netip.MustParsePrefix("127.0.0.0/8"))
	n.w.SetDrop(n.drop)
	return n
}

// addr is node i's underlay address.
func addr(i int) netip.Addr {
	if i < 0 || i > 200 {
		panic(fmt.Sprintf("agenttest: node index %d out of range", i))
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, byte(10 + i)})
}

// host is node i's natlab host, made on first use.
func (n *network) host(i int) *natlab.Host {
	n.hostsMu.Lock()
	defer n.hostsMu.Unlock()
	if h := n.hosts[i]; h != nil {
		return h
	}
	h, err := n.lan.NewHost(fmt.Sprintf("node%d", i), addr(i))
	if err != nil {
		panic(err) // addresses are unique by construction
	}
	n.hosts[i] = h
	return h
}

func (n *network) drop(from, to netip.AddrPort) bool {
	n.rulesMu.Lock()
	defer n.rulesMu.Unlock()
	f, t := from.Addr(), to.Addr()
	return n.cut[f] || n.cut[t] || n.side[f] != n.side[t] || n.links[link(f, t)] || n.oneWay[[2]netip.Addr{f, t}]
}

// link is the key of the link between a and b, in either direction.
func link(a, b netip.Addr) [2]netip.Addr {
	if b.Less(a) {
		a, b = b, a
	}
	return [2]netip.Addr{a, b}
}

// cutOneWay drops what node i sends to node j (not the answers).
func (n *network) cutOneWay(i, j int) {
	n.rulesMu.Lock()
	defer n.rulesMu.Unlock()
	n.oneWay[[2]netip.Addr{addr(i), addr(j)}] = true
}

// cutLink drops everything between nodes i and j.
func (n *network) cutLink(i, j int) {
	n.rulesMu.Lock()
	defer n.rulesMu.Unlock()
	n.links[link(addr(i), addr(j))] = true
}

func (n *network) setCut(i int, cut bool) {
	n.rulesMu.Lock()
	defer n.rulesMu.Unlock()
	if cut {
		n.cut[addr(i)] = true
	} else {
		delete(n.cut, addr(i))
	}
}

// partition puts nodes on a side of their own.
func (n *network) partition(nodes []int) {
	n.rulesMu.Lock()
	defer n.rulesMu.Unlock()
	n.nextSide++
	for _, i := range nodes {
		n.side[addr(i)] = n.nextSide
	}
}

// heal removes every partition and cut link (crashed nodes stay cut until
// restarted).
func (n *network) heal() {
	n.rulesMu.Lock()
	defer n.rulesMu.Unlock()
	clear(n.side)
	clear(n.links)
	clear(n.oneWay)
}

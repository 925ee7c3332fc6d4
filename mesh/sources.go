package mesh

import (
	"net"
	"net/netip"
	"sync/atomic"
)

// Sources is the set of source addresses a members-only listener on the mesh
// serves (Raft, memberlist, the node API): an address inside one of Allow
// and inside none of Deny. It is a first cut, not an identity: in kernel
// mode a local process or a pod sends from the node's own mesh IP too, so
// every such listener also authenticates its peers. What it does do is keep
// the pod and wg1 (user access) ranges, which share the wg0 routes, from
// even reaching the TLS or memberlist parsers.
//
// The zero value admits nothing.
type Sources struct {
	Allow []netip.Prefix
	Deny  []netip.Prefix
}

// Contains reports whether a may reach a members-only listener.
func (s Sources) Contains(a netip.Addr) bool {
	a = a.Unmap()
	allowed := false
	for _, p := range s.Allow {
		if p.Contains(a) {
			allowed = true
			break
		}
	}
	if !allowed {
		return false
	}
	for _, p := range s.Deny {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// IsZero reports whether s admits nothing, which for a listener's config
// means it was not set.
func (s Sources) IsZero() bool { return len(s.Allow) == 0 }

// ContainsAddr is Contains for a socket address (*net.TCPAddr,
// *net.UDPAddr or anything whose String is "ip:port"); an address it cannot
// read is not contained.
func (s Sources) ContainsAddr(a net.Addr) bool {
	switch v := a.(type) {
	case *net.TCPAddr:
		return s.Contains(v.AddrPort().Addr())
	case *net.UDPAddr:
		return s.Contains(v.AddrPort().Addr())
	case nil:
		return false
	}
	ap, err := netip.ParseAddrPort(a.String())
	return err == nil && s.Contains(ap.Addr())
}

// SourceListener is a net.Listener that hands out only connections from
// its Sources; it closes the others at once and counts them.
type SourceListener struct {
	net.Listener
	src     Sources
	dropped atomic.Uint64
}

// FilterListener wraps ln so that Accept returns only connections whose
// remote address src contains.
func FilterListener(ln net.Listener, src Sources) *SourceListener {
	return &SourceListener{Listener: ln, src: src}
}

// Accept returns the next connection from an admitted source. A refused
// connection is not an error: callers (raft's and http's accept loops) back
// off on errors, and a stranger must not be able to slow them down.
func (l *SourceListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.src.ContainsAddr(c.RemoteAddr()) {
			return c, nil
		}
		l.dropped.Add(1)
		_ = c.Close()
	}
}

// Dropped is how many connections were refused for their source address.
func (l *SourceListener) Dropped() uint64 { return l.dropped.Load() }

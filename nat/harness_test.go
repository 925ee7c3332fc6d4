package nat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runos/runos-agent/mesh"
	"golang.zx2c4.com/wireguard/conn"
)

// tnode is one cluster member in a scenario: a nat.Bind under a real
// userspace wireguard-go device (mesh.Device), and a TCP echo server on its
// mesh IP.
type tnode struct {
	name   string
	pub    [32]byte
	priv   [32]byte
	bind   *Bind
	dev    *mesh.Device
	ip     netip.Addr
	relay  bool
	events chan PathEvent
}

const echoPort = 7000

func newNode(t testing.TB, name string, n int, under conn.Bind, relay bool) *tnode {
	t.Helper()
	priv, err := mesh.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	tn := &tnode{name: name, priv: [32]byte(priv), relay: relay, ip: netip.AddrFrom4([4]byte{172, 24, 0, byte(n)}), events: make(chan PathEvent, 1024)}
	cfg := fastConfig(tn.priv, under)
	cfg.Relay = relay
	cfg.OnPathChange = func(ev PathEvent) {
		select {
		case tn.events <- ev:
		default:
		}
	}
	tn.bind, err = New(cfg, testLogger().With("node", name))
	if err != nil {
		t.Fatal(err)
	}
	tn.pub = tn.bind.PublicKey()
	tn.dev, err = mesh.New(mesh.Config{Mode: mesh.ModeUserspace, PrivateKey: priv, Address: tn.ip, Bind: tn.bind}, testLogger().With("node", name))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tn.dev.Net().Listen("tcp", netip.AddrPortFrom(tn.ip, echoPort).String())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		tn.dev.Close()
		wg.Wait()
	})
	return tn
}

func (n *tnode) port() uint16 { return n.bind.Port() }

// connect makes every node a peer of every other, in the Bind (with the
// given candidates) and in WireGuard (with the identity endpoint).
func connect(t testing.TB, nodes []*tnode, cands map[*tnode][]netip.AddrPort) {
	t.Helper()
	for _, n := range nodes {
		var infos []PeerInfo
		var peers []mesh.Peer
		for _, o := range nodes {
			if o == n {
				continue
			}
			infos = append(infos, PeerInfo{PublicKey: o.pub, Candidates: cands[o], Relay: o.relay})
			peers = append(peers, mesh.Peer{
				PublicKey:  mesh.Key(o.pub),
				Endpoint:   PeerAddrPort(o.pub),
				AllowedIPs: []netip.Prefix{netip.PrefixFrom(o.ip, 32)},
			})
		}
		if err := n.bind.SetPeers(infos); err != nil {
			t.Fatal(err)
		}
		if err := n.dev.SetPeers(peers); err != nil {
			t.Fatal(err)
		}
	}
}

// echo checks that a TCP round trip from a to b's mesh IP works.
func echo(a, b *tnode, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := a.dev.Net().DialContext(ctx, "tcp", netip.AddrPortFrom(b.ip, echoPort).String())
	if err != nil {
		return fmt.Errorf("dial %s -> %s: %w", a.name, b.name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	msg := []byte("ping " + a.name)
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("echo %s -> %s: %w", a.name, b.name, err)
	}
	if string(got) != string(msg) {
		return errors.New("echo garbled")
	}
	return nil
}

func mustEcho(t testing.TB, a, b *tnode) {
	t.Helper()
	if err := echo(a, b, 15*time.Second); err != nil {
		t.Fatal(err)
	}
}

func waitPath(t testing.TB, from, to *tnode, what string, ok func(PathInfo) bool) PathInfo {
	t.Helper()
	var p PathInfo
	waitFor(t, 10*time.Second, fmt.Sprintf("%s -> %s %s (last: %v)", from.name, to.name, what, &p), func() bool {
		p = from.bind.PathOf(to.pub)
		return ok(p)
	})
	return p
}

func isDirect(p PathInfo) bool { return p.Kind == PathDirect }
func viaRelay(r *tnode) func(PathInfo) bool {
	return func(p PathInfo) bool { return p.Kind == PathRelay && p.Via == r.pub }
}
func isNone(p PathInfo) bool { return p.Kind == PathNone }

// filterBind wraps a real underlay with a drop rule, to partition nodes on
// loopback: datagrams to or from a blocked address are dropped both ways.
type filterBind struct {
	conn.Bind
	blocked atomic.Pointer[map[netip.AddrPort]bool]
}

func newFilterBind() *filterBind {
	f := &filterBind{Bind: conn.NewStdNetBind()}
	f.set()
	return f
}

func (f *filterBind) set(addrs ...netip.AddrPort) {
	m := map[netip.AddrPort]bool{}
	for _, a := range addrs {
		m[a] = true
	}
	f.blocked.Store(&m)
}

func (f *filterBind) drop(ep conn.Endpoint) bool {
	m := *f.blocked.Load()
	if len(m) == 0 {
		return false
	}
	a, _ := endpointAddr(ep)
	return m[a]
}

func (f *filterBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, p, err := f.Bind.Open(port)
	for i, fn := range fns {
		fns[i] = func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			n, err := fn(bufs, sizes, eps)
			for j := 0; j < n; j++ {
				if sizes[j] > 0 && f.drop(eps[j]) {
					sizes[j] = 0
				}
			}
			return n, err
		}
	}
	return fns, p, err
}

func (f *filterBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if f.drop(ep) {
		return nil
	}
	return f.Bind.Send(bufs, ep)
}

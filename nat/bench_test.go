package nat

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/runos/runos-agent/mesh"
	"golang.zx2c4.com/wireguard/conn"
)

// BenchmarkBindThroughput pushes one TCP stream through two userspace
// wireguard-go devices over 127.0.0.1, with wireguard-go's StdNetBind
// (plain endpoints) and with the nat.Bind on a direct path (identity
// endpoints), in the same run: read the two MB/s figures as a ratio.
func BenchmarkBindThroughput(b *testing.B) {
	b.Run("std", func(b *testing.B) {
		x := benchDevice(b, 1, conn.NewStdNetBind())
		y := benchDevice(b, 2, conn.NewStdNetBind())
		lp := func(d *mesh.Device) netip.AddrPort {
			return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(d.ListenPort()))
		}
		benchPeers(b, x, y, lp(y), lp(x))
		benchStream(b, x, y)
	})
	b.Run("nat", func(b *testing.B) {
		bx, by := benchBind(b, 1), benchBind(b, 2)
		x := benchDevice(b, 1, bx)
		y := benchDevice(b, 2, by)
		lp := func(nb *Bind) netip.AddrPort {
			return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), nb.Port())
		}
		if err := bx.SetPeers([]PeerInfo{{PublicKey: by.PublicKey(), Candidates: []netip.AddrPort{lp(by)}}}); err != nil {
			b.Fatal(err)
		}
		if err := by.SetPeers([]PeerInfo{{PublicKey: bx.PublicKey(), Candidates: []netip.AddrPort{lp(bx)}}}); err != nil {
			b.Fatal(err)
		}
		benchPeers(b, x, y, PeerAddrPort(by.PublicKey()), PeerAddrPort(bx.PublicKey()))
		waitFor(b, 10*time.Second, "direct path", func() bool { return bx.PathOf(by.PublicKey()).Kind == PathDirect })
		benchStream(b, x, y)
	})
}

var benchKeys = map[int]mesh.Key{}

func benchKey(b testing.TB, n int) mesh.Key {
	if k, ok := benchKeys[n]; ok {
		return k
	}
	k, err := mesh.GeneratePrivateKey()
	if err != nil {
		b.Fatal(err)
	}
	benchKeys[n] = k
	return k
}

func benchBind(b testing.TB, n int) *Bind {
	nb, err := New(Config{PrivateKey: [32]byte(benchKey(b, n))}, testLogger())
	if err != nil {
		b.Fatal(err)
	}
	return nb
}

func benchDevice(b testing.TB, n int, bind conn.Bind) *mesh.Device {
	d, err := mesh.New(mesh.Config{Mode: mesh.ModeUserspace, PrivateKey: benchKey(b, n),
		Address: netip.AddrFrom4([4]byte{172, 24, 0, byte(n)}), Bind: bind}, testLogger())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	return d
}

func benchPeers(b testing.TB, x, y *mesh.Device, yEP, xEP netip.AddrPort) {
	if err := x.SetPeers([]mesh.Peer{{PublicKey: y.PublicKey(), Endpoint: yEP, AllowedIPs: []netip.Prefix{netip.PrefixFrom(y.Address(), 32)}}}); err != nil {
		b.Fatal(err)
	}
	if err := y.SetPeers([]mesh.Peer{{PublicKey: x.PublicKey(), Endpoint: xEP, AllowedIPs: []netip.Prefix{netip.PrefixFrom(x.Address(), 32)}}}); err != nil {
		b.Fatal(err)
	}
}

// benchStream writes b.N 64 KiB chunks from x to a discarding server on y.
func benchStream(b *testing.B, x, y *mesh.Device) {
	ln, err := y.Net().Listen("tcp", netip.AddrPortFrom(y.Address(), 9000).String())
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		done <- n
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var c net.Conn
	for c == nil { // the first dial waits for the handshake
		c, err = x.Net().DialContext(ctx, "tcp", netip.AddrPortFrom(y.Address(), 9000).String())
		if err != nil && ctx.Err() != nil {
			b.Fatal(err)
		}
	}
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	c.Close()
	if n := <-done; n != int64(b.N)*int64(len(chunk)) {
		b.Fatalf("server read %d bytes, want %d", n, int64(b.N)*int64(len(chunk)))
	}
	b.StopTimer()
}

// BenchmarkSendDirect measures the Bind's own per-batch cost on the direct
// path against the underlay (must not allocate).
func BenchmarkSendDirect(b *testing.B) {
	nb := benchBind(b, 1)
	peerPub := publicKey([32]byte(benchKey(b, 2)))
	if err := nb.SetPeers([]PeerInfo{{PublicKey: peerPub}}); err != nil {
		b.Fatal(err)
	}
	ep, err := nb.ParseEndpoint(PeerEndpointString(peerPub))
	if err != nil {
		b.Fatal(err)
	}
	p := ep.(*peerEndpoint).peer.Load()
	p.route.Store(&route{kind: PathDirect, ep: &nopEndpoint{}})
	nb.inner = nopBind{}
	bufs := [][]byte{make([]byte, 1400)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := nb.Send(bufs, ep); err != nil {
			b.Fatal(err)
		}
	}
}

type nopEndpoint struct{ conn.StdNetEndpoint }
type nopBind struct{ conn.Bind }

func (nopBind) Send([][]byte, conn.Endpoint) error { return nil }

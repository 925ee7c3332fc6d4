package mesh

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// BenchmarkMeshTCPThroughput pushes one TCP stream through two userspace
// devices in this process (netstack -> WireGuard -> UDP on 127.0.0.1 ->
// WireGuard -> netstack) and, in the same run, through plain loopback TCP.
// Read the two MB/s figures as a ratio; absolute numbers depend on the host.
func BenchmarkMeshTCPThroughput(b *testing.B) {
	b.Run("loopback", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		benchStream(b, ln, func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		})
	})
	b.Run("mesh", func(b *testing.B) {
		x := newUserspace(b, "172.24.0.1")
		y := newUserspace(b, "172.24.0.2")
		connectPair(b, x, y)
		ln, err := y.Net().Listen("tcp", "172.24.0.2:9000")
		if err != nil {
			b.Fatal(err)
		}
		benchStream(b, ln, func(ctx context.Context) (net.Conn, error) {
			return x.Net().DialContext(ctx, "tcp", "172.24.0.2:9000")
		})
	})
}

// benchStream writes b.N chunks over one connection to a discarding server
// and stops the clock once the server has read the last byte.
func benchStream(b *testing.B, ln net.Listener, dial func(context.Context) (net.Conn, error)) {
	defer ln.Close()
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		n, err := io.Copy(io.Discard, c)
		done <- result{n, err}
	}()

	// Includes the first handshake on the mesh; not timed.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()

	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	// Half-close so the server's copy ends when everything has arrived.
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		b.Fatal(err)
	}
	r := <-done
	b.StopTimer()
	if r.err != nil {
		b.Fatal(r.err)
	}
	if want := int64(b.N) * int64(len(buf)); r.n != want {
		b.Fatalf("server read %d bytes, want %d", r.n, want)
	}
}

package agent_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/runos/runos-agent/agent"
	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
)

// sinkOn reads everything a connection to a node's mesh IP sends and, at
// the sender's half-close, answers the byte count: a writer then knows its
// bytes arrived, not only that they were buffered.
func sinkOn(tb testing.TB, a *agent.Agent, port int) netip.AddrPort {
	tb.Helper()
	return serveOnMesh(tb, a, port, func(c net.Conn) {
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
	})
}

// BenchmarkAccessUserspaceThroughput is bulk TCP to a node's mesh IP from a
// device entering through another userspace node (the device's
// wireguard-go, wg1 on the entry node, its packet router, wg0), side by
// side in one run with the entry node itself sending over wg0 (no router,
// one WireGuard hop fewer). All on loopback, one machine: the ratio is the
// cost of wg1 and the router.
func BenchmarkAccessUserspaceThroughput(b *testing.B) {
	c := agenttest.Start(b, 2)
	sink := sinkOn(b, c.Agent(0), 7071)
	cfg, err := c.Agent(0).AccessAdd(context.Background(), api.AccessAddRequest{Name: "bench", Via: c.Agent(1).Name(),
		Endpoint: fmt.Sprintf("127.0.0.1:%d", c.AccessPort(1))})
	if err != nil {
		b.Fatal(err)
	}
	dev := laptop(b, parseWGConf(b, cfg.Config))
	for _, tc := range []struct {
		name string
		dial func(ctx context.Context) (net.Conn, error)
	}{
		{"device-via-router", func(ctx context.Context) (net.Conn, error) { return dev.DialContextTCPAddrPort(ctx, sink) }},
		{"entry-node-over-wg0", func(ctx context.Context) (net.Conn, error) {
			return c.Agent(1).Net().DialContext(ctx, "tcp", sink.String())
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			agenttest.Eventually(b, tc.name+" connects", func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				conn, err := tc.dial(ctx)
				if err == nil {
					conn.Close()
				}
				return err
			})
			buf := make([]byte, 64<<10)
			const perOp = 16 << 20 // one connection's transfer (make bench runs 1x)
			b.SetBytes(perOp)
			b.ResetTimer()
			for range b.N {
				if err := transfer(tc.dial, buf, perOp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// transfer sends n bytes on a new connection and waits for the sink's
// count of them.
func transfer(dial func(context.Context) (net.Conn, error), buf []byte, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	for sent := 0; sent < n; sent += len(buf) {
		if _, err := conn.Write(buf); err != nil {
			return err
		}
	}
	hc, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		return fmt.Errorf("%T has no CloseWrite", conn)
	}
	if err := hc.CloseWrite(); err != nil {
		return err
	}
	var ack [8]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		return err
	}
	if got := binary.BigEndian.Uint64(ack[:]); got != uint64(n) {
		return fmt.Errorf("the sink got %d bytes, want %d", got, n)
	}
	return nil
}

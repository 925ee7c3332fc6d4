package gossip

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/goleak"

	"github.com/runos/runos-agent/mesh"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var loopback = netip.MustParseAddr("127.0.0.1")

// loopbackSources admits 127.0.0.1 only, so a sender on another loopback
// address stands for a pod or a wg1 client.
var loopbackSources = mesh.Sources{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}

// testLogger sends slog output to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func newTestTransport(t *testing.T) *Transport {
	t.Helper()
	tr, err := NewTransport(TransportConfig{Net: mesh.NewHostNet(loopback), BindAddr: loopback, Sources: loopbackSources}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Shutdown() })
	return tr
}

func TestNewTransportRejects(t *testing.T) {
	hn := mesh.NewHostNet(loopback)
	for _, tc := range []struct {
		name string
		cfg  TransportConfig
		want string
	}{
		{"no net", TransportConfig{BindAddr: loopback}, "Net is required"},
		{"no bind address", TransportConfig{Net: hn}, "BindAddr is required"},
		{"unspecified bind address", TransportConfig{Net: hn, BindAddr: netip.IPv4Unspecified()}, "not advertisable"},
		{"negative port", TransportConfig{Net: hn, BindAddr: loopback, Port: -1}, "out of range"},
		{"port too large", TransportConfig{Net: hn, BindAddr: loopback, Port: 65536}, "out of range"},
		{"no sources", TransportConfig{Net: hn, BindAddr: loopback}, "Sources is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := NewTransport(tc.cfg, nil)
			if err == nil {
				tr.Shutdown()
				t.Fatal("NewTransport succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestTransportFixedPortInUse(t *testing.T) {
	a := newTestTransport(t)
	_, err := NewTransport(TransportConfig{Net: mesh.NewHostNet(loopback), BindAddr: loopback, Port: int(a.Addr().Port()), Sources: loopbackSources}, nil)
	if err == nil {
		t.Fatal("second transport on the same port succeeded")
	}
}

func TestTransportPacketsAndStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b := newTestTransport(t), newTestTransport(t)
	if a.Addr().Port() == 0 || a.Addr().Addr() != loopback {
		t.Fatalf("Addr() = %v", a.Addr())
	}

	// Packets: UDP from a's socket arrives on b's PacketCh with a as sender.
	before := time.Now()
	if _, err := a.WriteToAddress([]byte("ping"), memberlist.Address{Addr: b.Addr().String(), Name: "b"}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-b.PacketCh():
		if string(p.Buf) != "ping" {
			t.Errorf("packet %q, want ping", p.Buf)
		}
		if p.From.String() != a.Addr().String() {
			t.Errorf("packet from %v, want %v", p.From, a.Addr())
		}
		if p.Timestamp.Before(before) {
			t.Errorf("timestamp %v before send %v", p.Timestamp, before)
		}
	case <-ctx.Done():
		t.Fatal("no packet")
	}
	if _, err := a.WriteTo([]byte("x"), "not-an-address"); err == nil {
		t.Error("WriteTo a non-literal address succeeded")
	}

	// Streams: a dial from a shows up on b's StreamCh.
	c, err := a.DialAddressTimeout(memberlist.Address{Addr: b.Addr().String(), Name: "b"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var s net.Conn
	select {
	case s = <-b.StreamCh():
	case <-ctx.Done():
		t.Fatal("no stream")
	}
	defer s.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, []byte("hello")) {
		t.Fatalf("stream read %q, %v", got, err)
	}
}

// TestTransportShutdown checks that Shutdown returns even when memberlist
// has stopped draining the channels, and that it is idempotent.
func TestTransportShutdown(t *testing.T) {
	a, b := newTestTransport(t), newTestTransport(t)

	// Leave a packet and a stream undelivered on b: its loops block handing
	// them over.
	if _, err := a.WriteTo([]byte("stuck"), b.Addr().String()); err != nil {
		t.Fatal(err)
	}
	c, err := a.DialTimeout(b.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond) // let both reach the handoff; correctness does not depend on it

	done := make(chan struct{})
	go func() {
		b.Shutdown()
		b.Shutdown()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown hung")
	}
	if _, err := b.WriteTo([]byte("x"), a.Addr().String()); err == nil {
		t.Error("WriteTo after Shutdown succeeded")
	}
	if _, err := b.DialTimeout(a.Addr().String(), time.Second); !errors.Is(err, net.ErrClosed) {
		t.Errorf("DialTimeout after Shutdown: %v, want net.ErrClosed", err)
	}
}

func TestFinalAdvertiseAddr(t *testing.T) {
	tr := newTestTransport(t)
	port := int(tr.Addr().Port())
	for _, tc := range []struct {
		name    string
		ip      string
		port    int
		wantErr bool
	}{
		{"unset", "", 0, false},
		{"same as bind", "127.0.0.1", port, false},
		{"mapped form of bind", "::ffff:127.0.0.1", port, false},
		{"other IP", "127.0.0.2", port, true},
		{"other port", "", port + 1, true},
		{"garbage", "nope", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ip, p, err := tr.FinalAdvertiseAddr(tc.ip, tc.port)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %v:%d, want an error", ip, p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(ip) != 4 || !ip.Equal(net.IPv4(127, 0, 0, 1)) || p != port {
				t.Fatalf("got %v (len %d):%d, want 127.0.0.1:%d in 4-byte form", ip, len(ip), p, port)
			}
		})
	}
}

func TestStdLoggerLevels(t *testing.T) {
	var buf bytes.Buffer
	l := NewStdLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}})))
	l.Printf("[DEBUG] memberlist: Stream connection from=1.2.3.4")
	l.Printf("[WARN] memberlist: Was able to connect to x over TCP")
	l.Printf("[ERR] memberlist: Failed to send")
	l.Printf("[INFO] memberlist: Marking x as failed")
	l.Printf("no prefix")
	want := `level=DEBUG msg="Stream connection from=1.2.3.4"
level=WARN msg="Was able to connect to x over TCP"
level=ERROR msg="Failed to send"
level=INFO msg="Marking x as failed"
level=INFO msg="no prefix"
`
	if buf.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", buf.String(), want)
	}
}

// gatedNet holds every packet write until gate is closed, so a test can keep
// a write in flight across Shutdown.
type gatedNet struct {
	mesh.Net
	entered chan struct{} // one value per write that reached the socket
	gate    chan struct{}
}

func (g *gatedNet) ListenPacket(network, address string) (net.PacketConn, error) {
	pc, err := g.Net.ListenPacket(network, address)
	return &gatedConn{PacketConn: pc, g: g}, err
}

type gatedConn struct {
	net.PacketConn
	g *gatedNet
}

func (c *gatedConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.g.entered <- struct{}{}
	<-c.g.gate
	return c.PacketConn.WriteTo(b, addr)
}

// Shutdown waits for a packet write in flight (memberlist's gossip does not
// stop with memberlist's Shutdown), and refuses writes after it: the mesh
// under the transport may be torn down as soon as Shutdown returns.
func TestTransportShutdownWaitsForWrites(t *testing.T) {
	g := &gatedNet{Net: mesh.NewHostNet(loopback), entered: make(chan struct{}, 1), gate: make(chan struct{})}
	tr, err := NewTransport(TransportConfig{Net: g, BindAddr: loopback, Sources: loopbackSources}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := tr.WriteTo([]byte("late"), tr.Addr().String())
		wrote <- err
	}()
	<-g.entered
	shut := make(chan struct{})
	go func() {
		tr.Shutdown()
		close(shut)
	}()
	select {
	case <-shut:
		t.Fatal("Shutdown returned while a write was in flight")
	case <-time.After(200 * time.Millisecond):
	}
	close(g.gate)
	<-shut
	<-wrote
	if _, err := tr.WriteTo([]byte("after"), tr.Addr().String()); !errors.Is(err, errShutdown) {
		t.Fatalf("WriteTo after Shutdown: %v, want errShutdown", err)
	}
	select {
	case <-g.entered:
		t.Fatal("a write reached the socket after Shutdown")
	default:
	}
}

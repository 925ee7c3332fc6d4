package mesh

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// testLogger discards unless MESH_TEST_LOG is set. It never writes through
// t.Log: wireguard-go's workers may log a last line after the test returns.
func testLogger() *slog.Logger {
	if os.Getenv("MESH_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newUserspace(t testing.TB, addr string) *Device {
	t.Helper()
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Mode: ModeUserspace, PrivateKey: k, Address: netip.MustParseAddr(addr)}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// peerFor describes d as its peers should see it: reachable on loopback at
// its real port, owning its mesh /32 and a pod /24.
func peerFor(d *Device, pod string) Peer {
	return Peer{
		PublicKey:           d.PublicKey(),
		Endpoint:            netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(d.ListenPort())),
		AllowedIPs:          []netip.Prefix{netip.PrefixFrom(d.Address(), 32), netip.MustParsePrefix(pod)},
		PersistentKeepalive: 25 * time.Second,
	}
}

// connectPair makes a and b peers of each other. Only a gets a keepalive at
// first, and b's is switched on once the first handshake is done: when both
// sides initiate at the same moment the handshakes can cross, each side drops
// the other's response, and the session waits out WireGuard's 5 s
// REKEY_TIMEOUT. Switching b's keepalive on later also exercises an
// in-place peer update.
func connectPair(t testing.TB, a, b *Device) (peerA, peerB Peer) {
	t.Helper()
	peerA, peerB = peerFor(a, "172.25.1.0/24"), peerFor(b, "172.25.2.0/24")
	quietA := peerA
	quietA.PersistentKeepalive = 0
	if err := b.SetPeers([]Peer{quietA}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetPeers([]Peer{peerB}); err != nil { // a's keepalive starts the handshake
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, d := range []*Device{a, b} {
		for onlyPeer(t, d).LastHandshake.IsZero() {
			select {
			case <-ctx.Done():
				t.Fatal("no handshake between a and b")
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	if err := b.SetPeers([]Peer{peerA}); err != nil {
		t.Fatal(err)
	}
	return peerA, peerB
}

// startEcho serves an echo on ln until the test ends, then closes the
// listener and every accepted connection and waits for its goroutines.
func startEcho(t testing.TB, ln net.Listener) {
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// echo dials addr through n, sends a message and checks it comes back.
func echo(ctx context.Context, n Net, addr string) error {
	c, err := n.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	msg := []byte("hello over the mesh")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return errors.New("echo mismatch: " + string(got))
	}
	return nil
}

func mustEcho(t *testing.T, n Net, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := echo(ctx, n, addr); err != nil {
		t.Fatalf("echo %s: %v", addr, err)
	}
}

func onlyPeer(t testing.TB, d *Device) PeerStats {
	t.Helper()
	st, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 {
		t.Fatalf("Stats() has %d peers, want 1: %+v", len(st), st)
	}
	return st[0]
}

// settledHandshake returns d's peer handshake time once it stops moving
// across a round trip: at start-up both sides may initiate at once, and the
// loser's handshake can complete a moment after the first echo.
func settledHandshake(t *testing.T, d *Device, n Net, addr string) time.Time {
	t.Helper()
	prev := onlyPeer(t, d).LastHandshake
	for range 10 {
		mustEcho(t, n, addr)
		cur := onlyPeer(t, d).LastHandshake
		if cur.Equal(prev) && !cur.IsZero() {
			return cur
		}
		prev = cur
	}
	t.Fatalf("handshake time never settled (last %v)", prev)
	return time.Time{}
}

func TestConfigValidation(t *testing.T) {
	k, _ := GeneratePrivateKey()
	good := Config{Mode: ModeUserspace, PrivateKey: k, Address: netip.MustParseAddr("172.24.0.9")}
	for name, mut := range map[string]func(*Config){
		"no mode":        func(c *Config) { c.Mode = "" },
		"bad mode":       func(c *Config) { c.Mode = "hybrid" },
		"no key":         func(c *Config) { c.PrivateKey = Key{} },
		"no address":     func(c *Config) { c.Address = netip.Addr{} },
		"outside prefix": func(c *Config) { c.Address = netip.MustParseAddr("10.0.0.1") },
		"port":           func(c *Config) { c.ListenPort = 70000 },
		"mtu":            func(c *Config) { c.MTU = 100 },
	} {
		c := good
		mut(&c)
		if d, err := New(c, testLogger()); err == nil {
			d.Close()
			t.Errorf("%s: New accepted %+v", name, c)
		}
	}
	if _, err := New(good, nil); err == nil {
		t.Error("New accepted a nil logger")
	}
}

// TestUserspaceMesh runs two nodes in this process over 127.0.0.1 and walks
// the peer life cycle: connect, observe, reconcile without disturbing the
// session, remove, re-add.
func TestUserspaceMesh(t *testing.T) {
	a := newUserspace(t, "172.24.0.1")
	b := newUserspace(t, "172.24.0.2")
	if a.ListenPort() == 0 || a.ListenPort() == b.ListenPort() {
		t.Fatalf("listen ports %d, %d", a.ListenPort(), b.ListenPort())
	}
	_, peerB := connectPair(t, a, b)

	ln, err := b.Net().Listen("tcp", "172.24.0.2:7000")
	if err != nil {
		t.Fatal(err)
	}
	startEcho(t, ln)
	const target = "172.24.0.2:7000"
	mustEcho(t, a.Net(), target)

	st := onlyPeer(t, a)
	if st.PublicKey != b.PublicKey() || st.LastHandshake.IsZero() || st.RxBytes == 0 || st.TxBytes == 0 {
		t.Fatalf("stats after echo: %+v", st)
	}
	if want := peerB.Endpoint.String(); st.Endpoint != want {
		t.Fatalf("endpoint %q, want %q", st.Endpoint, want)
	}
	if len(st.AllowedIPs) != 2 {
		t.Fatalf("allowed IPs %v, want the /32 and the pod /24", st.AllowedIPs)
	}

	t.Run("unchanged set keeps the session", func(t *testing.T) {
		hs := settledHandshake(t, a, a.Net(), target)
		before := onlyPeer(t, a)
		if err := a.SetPeers([]Peer{peerB}); err != nil {
			t.Fatal(err)
		}
		mustEcho(t, a.Net(), target)
		after := onlyPeer(t, a)
		if !after.LastHandshake.Equal(hs) {
			t.Fatalf("handshake moved from %v to %v", hs, after.LastHandshake)
		}
		// A removed and re-created peer would start its counters at zero.
		if after.TxBytes <= before.TxBytes || after.RxBytes <= before.RxBytes {
			t.Fatalf("counters went from %+v to %+v", before, after)
		}
	})

	t.Run("changed allowed IPs update in place", func(t *testing.T) {
		hs := settledHandshake(t, a, a.Net(), target)
		grown := peerB
		grown.AllowedIPs = append(grown.AllowedIPs[:2:2], netip.MustParsePrefix("172.25.99.0/24"))
		if err := a.SetPeers([]Peer{grown}); err != nil {
			t.Fatal(err)
		}
		mustEcho(t, a.Net(), target)
		after := onlyPeer(t, a)
		if len(after.AllowedIPs) != 3 {
			t.Fatalf("allowed IPs %v, want 3", after.AllowedIPs)
		}
		if !after.LastHandshake.Equal(hs) {
			t.Fatalf("handshake moved from %v to %v", hs, after.LastHandshake)
		}
	})

	t.Run("removed peer is unreachable", func(t *testing.T) {
		if err := a.SetPeers(nil); err != nil {
			t.Fatal(err)
		}
		if st, err := a.Stats(); err != nil || len(st) != 0 {
			t.Fatalf("Stats() = %+v, %v; want no peers", st, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := echo(ctx, a.Net(), target); err == nil {
			t.Fatal("echo to a removed peer succeeded")
		}
	})

	t.Run("re-added peer is reachable", func(t *testing.T) {
		if err := a.SetPeers([]Peer{peerB}); err != nil {
			t.Fatal(err)
		}
		mustEcho(t, a.Net(), target)
	})

	t.Run("UDP", func(t *testing.T) {
		pc, err := b.Net().ListenPacket("udp", ":7001") // unspecified host = the mesh IP
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		c, err := a.Net().DialContext(context.Background(), "udp", "172.24.0.2:7001")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// UDP may be lost; resend until one datagram arrives.
		buf := make([]byte, 64)
		for i := 0; ; i++ {
			if i == 50 {
				t.Fatal("no UDP datagram arrived")
			}
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				continue
			}
			if string(buf[:n]) != "ping" || from.(*net.UDPAddr).AddrPort().Addr() != a.Address() {
				t.Fatalf("got %q from %v", buf[:n], from)
			}
			break
		}
	})
}

// TestSetPeersConcurrent hammers SetPeers from several goroutines while
// traffic flows; run with -race. The last call must win and the mesh must
// still work.
func TestSetPeersConcurrent(t *testing.T) {
	a := newUserspace(t, "172.24.0.1")
	b := newUserspace(t, "172.24.0.2")
	_, peerB := connectPair(t, a, b)
	ln, err := b.Net().Listen("tcp", "0.0.0.0:7000")
	if err != nil {
		t.Fatal(err)
	}
	startEcho(t, ln)
	mustEcho(t, a.Net(), "172.24.0.2:7000")

	ctx, cancel := context.WithCancel(context.Background())
	var traffic, wg sync.WaitGroup
	traffic.Go(func() { // traffic while peers churn; failures are expected here
		for ctx.Err() == nil {
			c, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			echo(c, a.Net(), "172.24.0.2:7000")
			cancel()
		}
	})
	for i := range 8 {
		wg.Go(func() {
			for j := range 20 {
				p := peerB
				switch (i + j) % 3 {
				case 0:
					p.AllowedIPs = append(p.AllowedIPs[:2:2], netip.MustParsePrefix("172.25.50.0/24"))
				case 1:
					p.PersistentKeepalive = 10 * time.Second
				}
				extra := Peer{PublicKey: testKey(byte(1 + (i+j)%4)), AllowedIPs: pfx("172.25.200.0/24")}
				if err := a.SetPeers([]Peer{p, extra}); err != nil {
					t.Error(err)
				}
				if _, err := a.Stats(); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	cancel()
	traffic.Wait()

	if err := a.SetPeers([]Peer{peerB}); err != nil {
		t.Fatal(err)
	}
	st := onlyPeer(t, a)
	if st.PublicKey != b.PublicKey() || len(st.AllowedIPs) != 2 {
		t.Fatalf("after churn: %+v", st)
	}
	mustEcho(t, a.Net(), "172.24.0.2:7000")
}

func TestClose(t *testing.T) {
	d := newUserspace(t, "172.24.0.3")
	ln, err := d.Net().Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		accepted <- err
	}()

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := d.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// Closing the device tears down the netstack under the listener.
	if err := <-accepted; err == nil {
		t.Fatal("Accept succeeded on a closed device")
	}
	ln.Close()
	if err := d.SetPeers(nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetPeers after Close = %v, want ErrClosed", err)
	}
	if _, err := d.Stats(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Stats after Close = %v, want ErrClosed", err)
	}
	if p := d.ListenPort(); p != 0 {
		t.Fatalf("ListenPort after Close = %d", p)
	}
}

func TestStackNetAddresses(t *testing.T) {
	d := newUserspace(t, "172.24.0.4")
	n := d.Net()
	for _, bad := range []struct{ network, addr string }{
		{"unix", ":1"}, {"tcp", "nohost"}, {"tcp", "example.com:80"}, {"tcp", ":99999"},
	} {
		if ln, err := n.Listen(bad.network, bad.addr); err == nil {
			ln.Close()
			t.Errorf("Listen(%q, %q) succeeded", bad.network, bad.addr)
		}
	}
	if pc, err := n.ListenPacket("tcp", ":1"); err == nil {
		pc.Close()
		t.Error("ListenPacket accepted tcp")
	}
	if c, err := n.DialContext(context.Background(), "ping", "172.24.0.4"); err == nil {
		c.Close()
		t.Error("DialContext accepted ping")
	}
	// Port 0 picks a free port, reported on the mesh IP.
	ln, err := n.Listen("tcp", "172.24.0.4:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	if ap.Addr() != d.Address() || ap.Port() == 0 {
		t.Fatalf("listener address %v", ap)
	}
	// A node reaches its own mesh IP without a peer.
	startEcho(t, ln)
	mustEcho(t, n, ap.String())
}

// refusingBind is the default Bind, except that it cannot parse one
// endpoint, which makes an IpcSet fail half-way through.
type refusingBind struct {
	conn.Bind
	refuse string
}

func (b *refusingBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	if s == b.refuse {
		return nil, errors.New("refused")
	}
	return b.Bind.ParseEndpoint(s)
}

// TestSetPeersRecoversFromPartialFailure checks that after an IpcSet fails
// part-way (leaving the device with some of the new peers), the next
// SetPeers still converges to exactly the set it is given.
func TestSetPeersRecoversFromPartialFailure(t *testing.T) {
	k, _ := GeneratePrivateKey()
	bad := netip.MustParseAddrPort("192.0.2.66:51820")
	d, err := New(Config{
		Mode:       ModeUserspace,
		PrivateKey: k,
		Address:    netip.MustParseAddr("172.24.0.5"),
		Bind:       &refusingBind{Bind: conn.NewDefaultBind(), refuse: bad.String()},
	}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	p1 := Peer{PublicKey: testKey(1), AllowedIPs: pfx("172.24.0.11/32")}
	p2 := Peer{PublicKey: testKey(2), Endpoint: bad, AllowedIPs: pfx("172.24.0.12/32")}
	p3 := Peer{PublicKey: testKey(3), AllowedIPs: pfx("172.24.0.13/32", "172.25.13.0/24")}
	if err := d.SetPeers([]Peer{p1, p2}); err == nil {
		t.Fatal("SetPeers with an unparseable endpoint succeeded")
	}
	if err := d.SetPeers([]Peer{p1, p3}); err != nil {
		t.Fatal(err)
	}
	st, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || st[0].PublicKey != p1.PublicKey || st[1].PublicKey != p3.PublicKey ||
		len(st[0].AllowedIPs) != 1 || len(st[1].AllowedIPs) != 2 {
		t.Fatalf("after recovery: %+v", st)
	}
}

func TestListenPortInUse(t *testing.T) {
	a := newUserspace(t, "172.24.0.6")
	k, _ := GeneratePrivateKey()
	d, err := New(Config{Mode: ModeUserspace, PrivateKey: k, Address: netip.MustParseAddr("172.24.0.7"), ListenPort: a.ListenPort()}, testLogger())
	if err == nil {
		d.Close()
		t.Fatalf("second device bound port %d too", a.ListenPort())
	}
}

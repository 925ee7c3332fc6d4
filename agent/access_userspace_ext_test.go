package agent_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/runos/runos-agent/agent"
	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
)

// wgConf is what a laptop takes from the config `access add` printed.
type wgConf struct {
	PrivateKey, PeerKey, Endpoint string
	Address, DNS                  netip.Addr
	AllowedIPs                    []netip.Prefix
}

func parseWGConf(t testing.TB, text string) wgConf {
	t.Helper()
	var c wgConf
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok || strings.HasPrefix(strings.TrimSpace(k), "#") {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "PrivateKey":
			c.PrivateKey = v
		case "PublicKey":
			c.PeerKey = v
		case "Endpoint":
			c.Endpoint = v
		case "Address":
			c.Address = netip.MustParsePrefix(v).Addr()
		case "DNS":
			c.DNS = netip.MustParseAddr(v)
		case "AllowedIPs":
			for _, p := range strings.Split(v, ",") {
				c.AllowedIPs = append(c.AllowedIPs, netip.MustParsePrefix(strings.TrimSpace(p)))
			}
		}
	}
	if c.PrivateKey == "" || c.PeerKey == "" || c.Endpoint == "" || !c.Address.IsValid() || len(c.AllowedIPs) == 0 {
		t.Fatalf("incomplete config:\n%s", text)
	}
	return c
}

func b64hex(t testing.TB, k string) string {
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(b) != 32 {
		t.Fatalf("key %q: %v", k, err)
	}
	return hex.EncodeToString(b)
}

// laptop is a user device: stock wireguard-go on a netstack, over a
// loopback UDP socket, configured as a WireGuard client would be from the
// printed config (allowed overrides AllowedIPs: an attacker's own choice).
func laptop(t testing.TB, c wgConf, allowed ...netip.Prefix) *netstack.Net {
	t.Helper()
	if allowed == nil {
		allowed = c.AllowedIPs
	}
	tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{c.Address}, []netip.Addr{c.DNS}, 1420)
	if err != nil {
		t.Fatal(err)
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	ep := c.Endpoint
	if h, p, _ := net.SplitHostPort(ep); h != "127.0.0.1" {
		t.Fatalf("endpoint %s: want the test's loopback (port %s)", ep, p)
	}
	uapi := fmt.Sprintf("private_key=%s\npublic_key=%s\nendpoint=%s\npersistent_keepalive_interval=1\n",
		b64hex(t, c.PrivateKey), b64hex(t, c.PeerKey), ep)
	for _, p := range allowed {
		uapi += "allowed_ip=" + p.String() + "\n"
	}
	if err := dev.IpcSet(uapi); err != nil {
		t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Down(); dev.Close() })
	return tnet
}

// serve hands every connection ln accepts to handle, each in its own
// goroutine, until the test ends (it closes ln then).
func serve(tb testing.TB, ln net.Listener, handle func(net.Conn)) {
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}

// hello answers a connection with one line and closes it.
func hello(line string) func(net.Conn) {
	return func(c net.Conn) {
		defer c.Close()
		io.WriteString(c, line+"\n")
	}
}

// serveOnMesh serves handle on a node's mesh IP, through its mesh (the
// netstack in userspace mode).
func serveOnMesh(tb testing.TB, a *agent.Agent, port int, handle func(net.Conn)) netip.AddrPort {
	tb.Helper()
	ap := netip.AddrPortFrom(a.NodeConfig().MeshIP, uint16(port))
	ln, err := a.Net().Listen("tcp", ap.String())
	if err != nil {
		tb.Fatal(err)
	}
	serve(tb, ln, handle)
	return ap
}

// serveOnDevice serves one line on a device's address, port 7070.
func serveOnDevice(tb testing.TB, tn *netstack.Net, addr netip.Addr, line string) {
	tb.Helper()
	ln, err := tn.ListenTCP(&net.TCPAddr{IP: addr.AsSlice(), Port: 7070})
	if err != nil {
		tb.Fatal(err)
	}
	serve(tb, ln, hello(line))
}

// echoOn serves "hello from NAME" on a node's mesh IP.
func echoOn(t *testing.T, a *agent.Agent, port int) netip.AddrPort {
	t.Helper()
	return serveOnMesh(t, a, port, hello("hello from "+a.Name()))
}

func dialHello(tn *netstack.Net, ap netip.AddrPort) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := tn.DialContextTCPAddrPort(ctx, ap)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// A laptop entering through a userspace node (no root anywhere) reaches
// every node's mesh IP, resolves node names on the gateway, reaches
// nothing outside the cluster's networks, and nothing at all once removed.
// A second device does not reach the first.
func TestAccessUserspaceRouter(t *testing.T) {
	c := agenttest.Start(t, 3)
	ctx := context.Background()
	var targets []netip.AddrPort
	for i := range c.Len() {
		targets = append(targets, echoOn(t, c.Agent(i), 7070))
	}
	const entry = 1
	add := func(name string, allowPeers bool) wgConf {
		cfg, err := c.Agent(0).AccessAdd(ctx, api.AccessAddRequest{Name: name, Via: c.Agent(entry).Name(),
			AllowPeers: allowPeers, Endpoint: fmt.Sprintf("127.0.0.1:%d", c.AccessPort(entry))})
		if err != nil {
			t.Fatal(err)
		}
		// Add returns once the entry node serves the device: a config
		// used at once must not meet an entry node that drops its first
		// handshake (clients retry only after 5 s).
		stats, err := c.Agent(entry).AccessStats()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(stats, func(s api.AccessPeerStats) bool { return s.PublicKey == cfg.Device.PublicKey }) {
			t.Fatalf("access add through %s returned before the entry node %s served %s", c.Agent(0).Name(), c.Agent(entry).Name(), name)
		}
		return parseWGConf(t, cfg.Config)
	}
	added := time.Now()
	conf := add("laptop", false)
	if conf.DNS != raftstore.AccessGateway {
		t.Fatalf("DNS = %s, want %s", conf.DNS, raftstore.AccessGateway)
	}
	lt := laptop(t, conf)
	for i, ap := range targets {
		agenttest.Eventually(t, "laptop reaches "+ap.String(), func() error {
			got, err := dialHello(lt, ap)
			if err != nil {
				return err
			}
			if want := "hello from " + c.Agent(i).Name(); got != want {
				return fmt.Errorf("got %q, want %q", got, want)
			}
			return nil
		})
		if i == 0 {
			// A measurement for the README, not an assertion.
			t.Logf("access add to the first dial through the userspace router: %v", time.Since(added).Round(time.Millisecond))
		}
	}
	for i := range c.Len() {
		name := c.Agent(i).Name() + "." + raftstore.DefaultDNSZone
		addrs, err := lt.LookupHost(name)
		if err != nil || len(addrs) != 1 || addrs[0] != c.Agent(i).NodeConfig().MeshIP.String() {
			t.Fatalf("resolve %s on the gateway: %v %v", name, addrs, err)
		}
	}

	// An attacker's laptop routes everything into the tunnel: the entry
	// node still forwards nothing outside the cluster's networks.
	evil := laptop(t, add("evil", false), netip.MustParsePrefix("0.0.0.0/0"))
	agenttest.Eventually(t, "evil reaches node0", func() error { _, err := dialHello(evil, targets[0]); return err })
	for _, dst := range []string{"198.18.0.1:80", "192.0.2.1:80", "127.0.0.1:80"} {
		if _, err := dialHello(evil, netip.MustParseAddrPort(dst)); err == nil {
			t.Errorf("a device reached %s through the cluster", dst)
		}
	}
	// ... nor the first laptop (neither allows peers).
	serveOnDevice(t, lt, conf.Address, "laptop")
	if got, err := dialHello(evil, netip.AddrPortFrom(conf.Address, 7070)); err == nil {
		t.Errorf("a device reached another one: %q", got)
	}

	if err := c.Agent(2).AccessRemove(ctx, "laptop"); err != nil {
		t.Fatal(err)
	}
	agenttest.Eventually(t, "the removed laptop reaches nothing", func() error {
		for _, ap := range targets {
			if _, err := dialHello(lt, ap); err == nil {
				return fmt.Errorf("still reaches %s", ap)
			}
		}
		return nil
	})
}

// Two devices that both allow peers reach each other when they enter
// through different userspace nodes (device → wg1 router → wg0 → the other
// entry node → its router → device); a device that does not allow peers
// reaches neither, nor they it.
func TestAccessUserspaceDevicesAcrossEntryNodes(t *testing.T) {
	c := agenttest.Start(t, 3)
	ctx := context.Background()
	add := func(name string, entry int, allowPeers bool) wgConf {
		cfg, err := c.Agent(0).AccessAdd(ctx, api.AccessAddRequest{Name: name, Via: c.Agent(entry).Name(),
			AllowPeers: allowPeers, Endpoint: fmt.Sprintf("127.0.0.1:%d", c.AccessPort(entry))})
		if err != nil {
			t.Fatal(err)
		}
		return parseWGConf(t, cfg.Config)
	}
	deskConf, tabletConf, laptopConf := add("desk", 1, true), add("tablet", 2, true), add("laptop", 2, false)
	desk, tablet, lt := laptop(t, deskConf), laptop(t, tabletConf), laptop(t, laptopConf)
	serveOnDevice(t, desk, deskConf.Address, "desk")
	serveOnDevice(t, tablet, tabletConf.Address, "tablet")
	serveOnDevice(t, lt, laptopConf.Address, "laptop")

	agenttest.Eventually(t, "tablet (via node2) reaches desk (via node1)", func() error {
		got, err := dialHello(tablet, netip.AddrPortFrom(deskConf.Address, 7070))
		if err == nil && got != "desk" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})
	agenttest.Eventually(t, "desk reaches tablet", func() error {
		got, err := dialHello(desk, netip.AddrPortFrom(tabletConf.Address, 7070))
		if err == nil && got != "tablet" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})
	for _, tc := range []struct {
		name string
		from *netstack.Net
		to   netip.Addr
	}{
		{"laptop to desk", lt, deskConf.Address},
		{"desk to laptop", desk, laptopConf.Address},
		{"tablet to laptop (same entry node)", tablet, laptopConf.Address},
	} {
		if got, err := dialHello(tc.from, netip.AddrPortFrom(tc.to, 7070)); err == nil {
			t.Errorf("%s: reached (%q), but the laptop does not allow peers", tc.name, got)
		}
	}
}

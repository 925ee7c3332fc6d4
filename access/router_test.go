package access

import (
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/runos/runos-agent/mesh"
)

// ipv4 builds a minimal IPv4 packet (header plus 8 bytes of payload).
func ipv4(src, dst string) []byte {
	p := make([]byte, 28)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	p[8], p[9] = 64, 17
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	return p
}

func testPolicy() *policy {
	return &policy{
		local:    netip.MustParseAddr("172.24.0.5"),
		gateway:  netip.MustParseAddr("172.24.200.1"),
		users:    netip.MustParsePrefix("172.24.200.0/21"),
		networks: networks,
		devices: map[netip.Addr]bool{
			netip.MustParseAddr("172.24.200.2"): false, // laptop
			netip.MustParseAddr("172.24.200.3"): true,  // phone (allows peers)
			netip.MustParseAddr("172.24.200.4"): true,  // tablet (allows peers)
		},
		// A desk entering through another node, allowing peers; .10
		// enters elsewhere too but does not allow peers.
		remote: map[netip.Addr]bool{netip.MustParseAddr("172.24.200.9"): true},
	}
}

// What a device may send, decided as the kernel ruleset decides it.
func TestRouterFromDevice(t *testing.T) {
	p := testPolicy()
	for _, tc := range []struct {
		name     string
		src, dst string
		want     verdict
	}{
		{"node's mesh IP", "172.24.200.2", "172.24.0.5", toLocal},
		{"gateway (DNS)", "172.24.200.2", "172.24.200.1", toLocal},
		{"other node", "172.24.200.2", "172.24.0.9", toMesh},
		{"pod", "172.24.200.2", "172.25.3.4", toMesh},
		{"service", "172.24.200.2", "10.96.0.10", toMesh},
		{"internet", "172.24.200.2", "198.18.0.1", drop},
		{"host loopback", "172.24.200.2", "127.0.0.1", drop},
		{"private LAN", "172.24.200.2", "192.168.1.1", drop},
		{"device without allow-peers", "172.24.200.2", "172.24.200.3", drop},
		{"to device without allow-peers", "172.24.200.3", "172.24.200.2", drop},
		{"both allow peers", "172.24.200.3", "172.24.200.4", toDevice},
		{"both allow peers, other entry node", "172.24.200.3", "172.24.200.9", toMesh},
		{"other entry node's device without allow-peers", "172.24.200.3", "172.24.200.10", drop},
		{"to other entry node's device without allow-peers here", "172.24.200.2", "172.24.200.9", drop},
		{"spoofed: node's mesh IP", "172.24.0.9", "172.24.0.5", drop},
		{"spoofed: unknown device", "172.24.200.9", "172.24.0.5", drop},
		{"spoofed: gateway", "172.24.200.1", "172.24.0.9", drop},
	} {
		if got := p.fromDevice(ipv4(tc.src, tc.dst)); got != tc.want {
			t.Errorf("%s: %s -> %s: %s, want %s", tc.name, tc.src, tc.dst, got, tc.want)
		}
	}
}

// What reaches a device from the mesh side.
func TestRouterToDevice(t *testing.T) {
	p := testPolicy()
	for _, tc := range []struct {
		name     string
		src, dst string
		want     verdict
	}{
		{"node reply", "172.24.0.5", "172.24.200.2", toDevice},
		{"gateway (DNS reply)", "172.24.200.1", "172.24.200.2", toDevice},
		{"other node", "172.24.0.9", "172.24.200.2", toDevice},
		{"pod", "172.25.1.2", "172.24.200.2", toDevice},
		{"service", "10.96.0.10", "172.24.200.2", toDevice},
		{"outside source", "198.18.0.1", "172.24.200.2", drop},
		{"not a device here", "172.24.0.9", "172.24.200.9", drop},
		{"device to laptop (no allow)", "172.24.200.3", "172.24.200.2", drop},
		{"devices allowing peers", "172.24.200.4", "172.24.200.3", toDevice},
		{"another entry node's device, both allow peers", "172.24.200.9", "172.24.200.3", toDevice},
		{"another entry node's device without allow-peers", "172.24.200.10", "172.24.200.3", drop},
		{"another entry node's device to one without allow-peers", "172.24.200.9", "172.24.200.2", drop},
	} {
		if got := p.toDevice(ipv4(tc.src, tc.dst)); got != tc.want {
			t.Errorf("%s: %s -> %s: %s, want %s", tc.name, tc.src, tc.dst, got, tc.want)
		}
	}
}

func TestRouterMalformed(t *testing.T) {
	p := testPolicy()
	good := ipv4("172.24.200.2", "172.24.0.5")
	v6 := make([]byte, 48)
	v6[0] = 0x60
	binary.BigEndian.PutUint16(v6[4:6], 8)
	for name, pkt := range map[string][]byte{
		"empty":              nil,
		"short":              good[:19],
		"ihl < 5":            append([]byte{0x44}, good[1:]...),
		"ihl past the end":   append([]byte{0x4f}, good[1:]...),
		"total > buffer":     append(good[:2:2], append([]byte{0x01, 0x00}, good[4:]...)...),
		"total < header":     append(good[:2:2], append([]byte{0x00, 0x10}, good[4:]...)...),
		"version 5":          append([]byte{0x55}, good[1:]...),
		"IPv6 (no v6 nets)":  v6,
		"IPv6 short payload": v6[:44],
	} {
		if v := p.fromDevice(pkt); v != drop {
			t.Errorf("%s: from device %s, want drop", name, v)
		}
		if v := p.toDevice(pkt); v != drop {
			t.Errorf("%s: to device %s, want drop", name, v)
		}
	}
}

// Malformed IPv4 and IPv6 never panic the router, and whatever it lets
// through had a parseable header with a device as source or destination.
func FuzzRouterPacket(f *testing.F) {
	f.Add(ipv4("172.24.200.2", "172.24.0.5"))
	f.Add(ipv4("172.24.0.5", "172.24.200.2"))
	f.Add([]byte{0x45})
	f.Add(make([]byte, 40))
	p := testPolicy()
	f.Fuzz(func(t *testing.T, pkt []byte) {
		from, to := p.fromDevice(pkt), p.toDevice(pkt)
		src, dst, ok := ipHeader(pkt)
		if (from != drop || to != drop) && !ok {
			t.Fatalf("unparseable packet routed: %x", pkt)
		}
		if from != drop {
			if _, known := p.devices[src]; !known {
				t.Fatalf("from device with source %s routed", src)
			}
		}
		if to != drop {
			if _, known := p.devices[dst]; !known {
				t.Fatalf("to device %s routed", dst)
			}
		}
	})
}

// fakeMesh records what the router hands the mesh side.
type fakeMesh struct {
	mu         sync.Mutex
	local, fwd [][]byte
	route      func([]byte)
	addrs      map[netip.Addr]bool
}

func (m *fakeMesh) Address() netip.Addr { return netip.MustParseAddr("172.24.0.5") }
func (m *fakeMesh) SetUserRoute(_ netip.Prefix, fn func([]byte)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.route = fn
	return nil
}
func (m *fakeMesh) ForwardToMesh(pkt []byte) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fwd = append(m.fwd, append([]byte(nil), pkt...))
	return true
}
func (m *fakeMesh) DeliverLocal(pkt []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.local = append(m.local, append([]byte(nil), pkt...))
	return nil
}
func (m *fakeMesh) AddLocalAddress(ip netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.addrs[ip] = true
	return nil
}
func (m *fakeMesh) RemoveLocalAddress(ip netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.addrs, ip)
	return nil
}

// The server attaches to the mesh (gateway address, route) while it runs
// and detaches at Close; a removed device's packets stop at once.
func TestUserspaceServerLifecycle(t *testing.T) {
	m := &fakeMesh{addrs: map[netip.Addr]bool{}}
	key, _ := mesh.GeneratePrivateKey()
	gw := netip.MustParseAddr("172.24.200.1")
	s, err := NewUserspaceServer(UserspaceConfig{PrivateKey: key, Address: gw, ListenPort: freeUDPPort(t),
		Users: netip.MustParsePrefix("172.24.200.0/21"), Networks: networks}, m, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if !m.addrs[gw] || m.route == nil {
		t.Fatalf("not attached: addrs %v", m.addrs)
	}
	dk, _ := mesh.GeneratePrivateKey()
	dev := netip.MustParseAddr("172.24.200.2")
	if err := s.SetPeers([]Peer{{Name: "laptop", PublicKey: dk.PublicKey(), Address: dev}}, nil); err != nil {
		t.Fatal(err)
	}
	s.fromDevice(ipv4("172.24.200.2", "172.24.0.9"))
	s.fromDevice(ipv4("172.24.200.2", "172.24.0.5"))
	s.fromDevice(ipv4("172.24.200.2", "198.18.0.1"))
	if len(m.fwd) != 1 || len(m.local) != 1 {
		t.Fatalf("forwarded %d, delivered %d; want 1 and 1", len(m.fwd), len(m.local))
	}
	m.route(ipv4("172.24.0.9", "172.24.200.2"))
	if got := s.tun.queued.Load(); got != 1 {
		t.Fatalf("%d packets queued for devices, want 1", got)
	}
	if err := s.SetPeers(nil, nil); err != nil {
		t.Fatal(err)
	}
	s.fromDevice(ipv4("172.24.200.2", "172.24.0.9"))
	m.route(ipv4("172.24.0.9", "172.24.200.2"))
	if len(m.fwd) != 1 || s.tun.queued.Load() != 1 {
		t.Fatal("a removed device's packets still pass")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if m.addrs[gw] || m.route != nil {
		t.Fatalf("still attached after Close: addrs %v", m.addrs)
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := s.SetPeers(nil, nil); err == nil {
		t.Fatal("SetPeers after Close succeeded")
	}
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().(*net.UDPAddr).Port
}

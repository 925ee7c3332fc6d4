package freeport

import (
	"net"
	"net/netip"
	"testing"
)

// Picked ports are below the ephemeral range and free for TCP and UDP.
func TestPick(t *testing.T) {
	top := ephemeralLow()
	seen := map[int]bool{}
	for range 20 {
		port := For(t)
		if port < lowest || port >= top {
			t.Fatalf("port %d outside [%d, %d)", port, lowest, top)
		}
		seen[port] = true
		addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)).String()
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("TCP %s: %v", addr, err)
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			t.Fatalf("UDP %s: %v", addr, err)
		}
		pc.Close()
	}
	if len(seen) < 2 {
		t.Errorf("20 picks gave %d distinct ports", len(seen))
	}
}

// A port that is taken is not picked.
func TestPickSkipsATakenPort(t *testing.T) {
	for range 20 {
		port := For(t)
		addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)).String()
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		for range 50 {
			if p := For(t); p == port {
				t.Fatalf("picked %d, which is listening", p)
			}
		}
	}
}

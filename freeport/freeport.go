// Package freeport picks ports for processes that bind them later: a test's
// etcd or API server, a development cluster's agents.
//
// A port from the kernel's ephemeral range (ip_local_port_range), which is
// what listening on port 0 hands out, can become the source port of any
// outgoing connection between the pick and the bind, and the bind then
// fails with "address already in use". Ports below that range are never
// handed out that way, so Pick draws from there at random and checks the
// port is free.
package freeport

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// lowest is above the well-known service ports (kubelet's 10250, ...).
const lowest = 20000

// Pick returns a port free for both TCP and UDP on host right now (an
// agent's underlay uses the same number for both).
func Pick(host netip.Addr) (int, error) {
	top := ephemeralLow()
	for range 100 {
		port := lowest + rand.IntN(max(top-lowest, 1))
		ln, err := net.Listen("tcp", netip.AddrPortFrom(host, uint16(port)).String())
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", netip.AddrPortFrom(host, uint16(port)).String())
		ln.Close()
		if err == nil {
			pc.Close()
			return port, nil
		}
	}
	return 0, errors.New("freeport: no free port")
}

// TB is the part of testing.TB that For uses (this package does not link
// the testing package into the agent).
type TB interface {
	Helper()
	Fatal(args ...any)
}

// For is Pick on 127.0.0.1 for a test, which fails when no port is free.
func For(tb TB) int {
	tb.Helper()
	port, err := Pick(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		tb.Fatal(err)
	}
	return port
}

// ephemeralLow is the start of the kernel's ephemeral port range (32768
// when it cannot be read, or starts too low to leave room below it).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo <= lowest+1 {
		return 32768
	}
	return lo
}

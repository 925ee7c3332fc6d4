package nat

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

func TestIsPublic(t *testing.T) {
	for ip, want := range map[string]bool{
		"203.0.113.9":        true,
		"::ffff:203.0.113.9": true,
		"192.168.1.2":        false,
		"10.1.2.3":           false,
		"100.64.1.1":         false, // carrier NAT
		"172.24.0.5":         false, // the mesh
		"127.0.0.1":          false,
		"169.254.1.1":        false,
	} {
		if got := IsPublic(netip.MustParseAddr(ip)); got != want {
			t.Errorf("IsPublic(%s) = %v", ip, got)
		}
	}
}

func TestParseEndpoints(t *testing.T) {
	// Names resolve through DNS; tests give none.
	got := ParseEndpoints([]string{"203.0.113.9:51820", "[::ffff:192.0.2.1]:7", "no port", "192.0.2.1", ""})
	want := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.9:51820"), netip.MustParseAddrPort("192.0.2.1:7")}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestOffersRelay(t *testing.T) {
	lan, pub := netip.MustParseAddrPort("192.168.1.2:51820"), netip.MustParseAddrPort("203.0.113.9:51820")
	for _, c := range []struct {
		mode       string
		advertised []netip.AddrPort
		reflexive  netip.AddrPort
		want       bool
	}{
		{"on", nil, netip.AddrPort{}, true},
		{"off", []netip.AddrPort{pub}, pub, false},
		{"auto", []netip.AddrPort{lan}, netip.AddrPort{}, false},
		{"auto", []netip.AddrPort{lan, pub}, netip.AddrPort{}, true},
		{"auto", []netip.AddrPort{lan}, lan, true},                                        // no NAT: STUN sees our own address
		{"auto", []netip.AddrPort{lan}, netip.MustParseAddrPort("198.51.100.1:1"), false}, // behind a NAT
		{"", []netip.AddrPort{pub}, netip.AddrPort{}, true},
	} {
		if got := OffersRelay(c.mode, c.advertised, c.reflexive); got != c.want {
			t.Errorf("OffersRelay(%q, %v, %v) = %v", c.mode, c.advertised, c.reflexive, got)
		}
	}
}

func TestSTUNServers(t *testing.T) {
	got := STUNServers(
		[]string{"127.0.0.1:3478", "127.0.0.1:3478", "bad"},
		[]string{"192.168.1.2:51820", "203.0.113.9:51820", "127.0.0.1:3478", "203.0.113.9:51820"},
	)
	want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:3478"), netip.MustParseAddrPort("203.0.113.9:51820")}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got := STUNServers(nil, []string{"10.0.0.1:51820"}); len(got) != 0 {
		t.Fatalf("private member addresses used: %v", got)
	}
}

func TestCandidatesThroughSTUN(t *testing.T) {
	server, err := New(fastConfig(testKey(t, 1), conn.NewStdNetBind()), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	client, err := New(fastConfig(testKey(t, 2), conn.NewStdNetBind()), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	srv := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), driven(t, server))
	self := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), driven(t, client)).String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	eps, relay := client.Candidates(ctx, []string{"10.0.0.1:51820"}, "auto", []netip.AddrPort{srv})
	if !slices.Equal(eps, []string{"10.0.0.1:51820", self}) || relay {
		t.Fatalf("behind a NAT: %v relay=%v", eps, relay)
	}
	// The reflexive address is an advertised one: no NAT, so relay.
	eps, relay = client.Candidates(ctx, []string{self}, "auto", []netip.AddrPort{srv})
	if !slices.Equal(eps, []string{self}) || !relay {
		t.Fatalf("no NAT: %v relay=%v", eps, relay)
	}
	// No servers: the advertised addresses only.
	eps, relay = client.Candidates(ctx, []string{"203.0.113.9:51820"}, "auto", nil)
	if !slices.Equal(eps, []string{"203.0.113.9:51820"}) || !relay {
		t.Fatalf("no STUN: %v relay=%v", eps, relay)
	}

	// netcheck through a running Bind, and standalone.
	rep := client.CheckNetwork(ctx, []netip.AddrPort{srv}, 51820)
	if !rep.UDP || rep.Public != self || rep.Mapping != "unknown" || len(rep.Results) != 1 || rep.Results[0].Mapped != self || rep.LANAddresses == nil {
		t.Fatalf("netcheck: %+v", rep)
	}
	sa, err := StandaloneNetcheck(ctx, []string{srv.String()}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if !sa.UDP || !strings.HasPrefix(sa.Public, "127.0.0.1:") || sa.Public == self || len(sa.Results) != 1 {
		t.Fatalf("standalone netcheck: %+v", sa)
	}
	if _, err := StandaloneNetcheck(ctx, nil, testLogger()); err == nil || !strings.Contains(err.Error(), "no STUN servers") {
		t.Fatalf("standalone netcheck without servers: %v", err)
	}
}

func TestPathEventHelpers(t *testing.T) {
	relayKey := testKey(t, 9)
	direct := PathInfo{Kind: PathDirect, Addr: netip.MustParseAddrPort("192.0.2.1:51820")}
	direct2 := PathInfo{Kind: PathDirect, Addr: netip.MustParseAddrPort("192.0.2.2:51820")}
	relay := PathInfo{Kind: PathRelay, Via: relayKey, Addr: netip.MustParseAddrPort("203.0.113.9:51820")}
	relay2 := PathInfo{Kind: PathRelay, Via: testKey(t, 10)}
	name := func(k [32]byte) string {
		if k == relayKey {
			return "r1"
		}
		return "?"
	}
	for _, c := range []struct {
		p    PathInfo
		want string
	}{{direct, "direct 192.0.2.1:51820"}, {relay, "via r1"}, {PathInfo{}, "unreachable"}} {
		if got := c.p.Describe(name); got != c.want {
			t.Errorf("Describe(%v) = %q, want %q", c.p, got, c.want)
		}
	}
	for _, c := range []struct {
		old, new            PathInfo
		lostDirect, notable bool
	}{
		{direct, relay, true, true},
		{direct, PathInfo{}, true, true},
		{direct, direct2, false, false}, // an address change within the same kind
		{relay, direct, false, true},
		{relay, relay2, false, true}, // another relay
		{PathInfo{}, relay, false, true},
	} {
		ev := PathEvent{Old: c.old, New: c.new}
		if ev.LostDirect() != c.lostDirect || ev.Notable() != c.notable {
			t.Errorf("%v -> %v: LostDirect %v Notable %v", c.old, c.new, ev.LostDirect(), ev.Notable())
		}
	}
}

func TestCandidatePolicy(t *testing.T) {
	strict := CandidatePolicy{}
	loop := CandidatePolicy{AllowLoopback: true}
	v6 := CandidatePolicy{AllowIPv6: true}
	for _, tc := range []struct {
		ap     string
		policy CandidatePolicy
		ok     bool
	}{
		{"203.0.113.7:51820", strict, true},
		{"192.168.1.2:51820", strict, true},
		{"[::ffff:192.168.1.2]:51820", strict, true},
		{"0.0.0.0:9", loop, false},
		{"0.1.2.3:9", loop, false},
		{"[::]:9", anyCandidate, false},
		{"224.0.0.1:51820", anyCandidate, false},
		{"239.1.2.3:51820", anyCandidate, false},
		{"[ff02::1]:51820", anyCandidate, false},
		{"255.255.255.255:51820", anyCandidate, false},
		{"192.168.1.2:0", anyCandidate, false},
		{"[fe80::1]:51820", anyCandidate, false},
		{"127.0.0.1:51820", strict, false},
		{"127.0.0.5:51820", loop, true},
		{"[::1]:51820", v6, false},
		{"[2001:db8::1]:51820", strict, false},
		{"[2001:db8::1]:51820", v6, true},
	} {
		err := tc.policy.Check(netip.MustParseAddrPort(tc.ap))
		if tc.ok != (err == nil) {
			t.Errorf("%s with %+v: err = %v, want ok=%v", tc.ap, tc.policy, err, tc.ok)
		}
	}
	if p := PolicyFor([]string{"127.0.0.3:51820"}); !p.AllowLoopback || p.AllowIPv6 {
		t.Errorf("loopback node: %+v", p)
	}
	if p := PolicyFor([]string{"127.0.0.3:51820", "192.168.1.2:51820"}); p.AllowLoopback {
		t.Errorf("a node with a LAN address accepts loopback: %+v", p)
	}
	if p := PolicyFor(nil); p.AllowLoopback {
		t.Errorf("a node without endpoints accepts loopback: %+v", p)
	}
	if p := PolicyFor([]string{"[2001:db8::2]:51820"}); !p.AllowIPv6 {
		t.Errorf("IPv6 node: %+v", p)
	}
	ok, bad := CandidatePolicy{}.FilterStrings([]string{"0.0.0.0:9", "node.example:51820", "203.0.113.7:51820", "junk", "h:0"})
	if len(ok) != 2 || len(bad) != 3 {
		t.Errorf("FilterStrings: ok %v, bad %v", ok, bad)
	}
}

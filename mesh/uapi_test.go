package mesh

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func testKey(b byte) Key {
	var k Key
	for i := range k {
		k[i] = b
	}
	return k
}

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func mustNormalize(t *testing.T, peers ...Peer) map[Key]Peer {
	t.Helper()
	m, err := normalizePeers(peers, testKey(0xee))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestNormalizePeers(t *testing.T) {
	self := testKey(0xee)
	got, err := normalizePeers([]Peer{
		{
			PublicKey:           testKey(1),
			Endpoint:            netip.MustParseAddrPort("[::ffff:192.0.2.1]:51820"),
			AllowedIPs:          pfx("172.25.1.7/24", "172.24.0.2/32", "172.25.1.0/24"),
			PersistentKeepalive: 1500 * time.Millisecond,
		},
		{PublicKey: self, AllowedIPs: pfx("172.25.9.0/24")}, // this node: dropped
	}, self)
	if err != nil {
		t.Fatal(err)
	}
	want := map[Key]Peer{testKey(1): {
		PublicKey:           testKey(1),
		Endpoint:            netip.MustParseAddrPort("192.0.2.1:51820"),
		AllowedIPs:          pfx("172.24.0.2/32", "172.25.1.0/24"),
		PersistentKeepalive: 2 * time.Second,
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("normalizePeers = %+v\nwant %+v", got, want)
	}

	for name, peers := range map[string][]Peer{
		"zero key":      {{AllowedIPs: pfx("172.24.0.2/32")}},
		"duplicate key": {{PublicKey: testKey(1)}, {PublicKey: testKey(1)}},
		"shared prefix": {{PublicKey: testKey(1), AllowedIPs: pfx("172.25.1.0/24")}, {PublicKey: testKey(2), AllowedIPs: pfx("172.25.1.0/24")}},
		"port zero":     {{PublicKey: testKey(1), Endpoint: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 0)}},
		"keepalive":     {{PublicKey: testKey(1), PersistentKeepalive: 70000 * time.Second}},
		"negative ka":   {{PublicKey: testKey(1), PersistentKeepalive: -time.Second}},
		"bad prefix":    {{PublicKey: testKey(1), AllowedIPs: []netip.Prefix{{}}}},
	} {
		if _, err := normalizePeers(peers, self); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Nested prefixes on different peers are legitimate (longest match).
	if _, err := normalizePeers([]Peer{
		{PublicKey: testKey(1), AllowedIPs: pfx("172.25.0.0/16")},
		{PublicKey: testKey(2), AllowedIPs: pfx("172.25.1.0/24")},
	}, self); err != nil {
		t.Errorf("nested prefixes rejected: %v", err)
	}
}

func TestPeerSetUAPI(t *testing.T) {
	a := Peer{PublicKey: testKey(1), Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), AllowedIPs: pfx("172.24.0.1/32", "172.25.1.0/24"), PersistentKeepalive: 25 * time.Second}
	b := Peer{PublicKey: testKey(2), AllowedIPs: pfx("172.24.0.2/32")}
	hexA, hexB := testKey(1).hex(), testKey(2).hex()

	aMoved := a
	aMoved.Endpoint = netip.MustParseAddrPort("198.51.100.1:4000")
	aGrown := a
	aGrown.AllowedIPs = pfx("172.24.0.1/32", "172.25.1.0/24", "172.25.9.0/24")
	aLostEndpoint := a
	aLostEndpoint.Endpoint = netip.AddrPort{}
	bKeepalive := b
	bKeepalive.PersistentKeepalive = 25 * time.Second

	for _, tc := range []struct {
		name      string
		cur, want []Peer
		force     bool
		out       string
	}{
		{name: "empty"},
		{name: "unchanged", cur: []Peer{a, b}, want: []Peer{a, b}},
		{
			name: "add", want: []Peer{a, b},
			out: "public_key=" + hexA + "\nendpoint=192.0.2.1:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=172.24.0.1/32\nallowed_ip=172.25.1.0/24\n" +
				"public_key=" + hexB + "\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=172.24.0.2/32\n",
		},
		{name: "remove", cur: []Peer{a, b}, want: []Peer{b}, out: "public_key=" + hexA + "\nremove=true\n"},
		{name: "endpoint only", cur: []Peer{a, b}, want: []Peer{aMoved, b}, out: "public_key=" + hexA + "\nendpoint=198.51.100.1:4000\n"},
		{name: "allowed ips only", cur: []Peer{a, b}, want: []Peer{aGrown, b}, out: "public_key=" + hexA + "\nreplace_allowed_ips=true\nallowed_ip=172.24.0.1/32\nallowed_ip=172.25.1.0/24\nallowed_ip=172.25.9.0/24\n"},
		{name: "keepalive only", cur: []Peer{a, b}, want: []Peer{a, bKeepalive}, out: "public_key=" + hexB + "\npersistent_keepalive_interval=25\n"},
		// Forgetting an endpoint cannot be expressed; the roamed one stays.
		{name: "endpoint forgotten", cur: []Peer{a}, want: []Peer{aLostEndpoint}},
		{
			name: "force rewrites", cur: []Peer{{PublicKey: testKey(1)}, {PublicKey: testKey(3)}}, want: []Peer{a}, force: true,
			out: "public_key=" + testKey(3).hex() + "\nremove=true\n" +
				"public_key=" + hexA + "\nendpoint=192.0.2.1:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=172.24.0.1/32\nallowed_ip=172.25.1.0/24\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := peerSetUAPI(mustNormalize(t, tc.cur...), mustNormalize(t, tc.want...), tc.force)
			if got != tc.out {
				t.Fatalf("got:\n%s\nwant:\n%s", got, tc.out)
			}
		})
	}
}

// sampleGet is the shape of a real wireguard-go IpcGet answer.
var sampleGet = "private_key=" + testKey(9).hex() + "\n" +
	"listen_port=51820\n" +
	"public_key=" + testKey(1).hex() + "\n" +
	"preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n" +
	"protocol_version=1\n" +
	"endpoint=127.0.0.1:40000\n" +
	"last_handshake_time_sec=1700000000\n" +
	"last_handshake_time_nsec=5\n" +
	"tx_bytes=100\n" +
	"rx_bytes=200\n" +
	"persistent_keepalive_interval=25\n" +
	"allowed_ip=172.24.0.2/32\n" +
	"allowed_ip=172.25.2.0/24\n" +
	"public_key=" + testKey(2).hex() + "\n" +
	"preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n" +
	"protocol_version=1\n" +
	"last_handshake_time_sec=0\n" +
	"last_handshake_time_nsec=0\n" +
	"tx_bytes=0\n" +
	"rx_bytes=0\n" +
	"persistent_keepalive_interval=0\n" +
	"some_future_key=whatever\n"

func TestParseUAPI(t *testing.T) {
	st, err := parseUAPI(sampleGet)
	if err != nil {
		t.Fatal(err)
	}
	want := deviceState{ListenPort: 51820, Peers: []PeerStats{
		{PublicKey: testKey(1), Endpoint: "127.0.0.1:40000", LastHandshake: time.Unix(1700000000, 5), TxBytes: 100, RxBytes: 200, AllowedIPs: pfx("172.24.0.2/32", "172.25.2.0/24")},
		{PublicKey: testKey(2)},
	}}
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("parseUAPI = %+v\nwant %+v", st, want)
	}

	for _, bad := range []string{
		"listen_port=99999\n",
		"no equals sign\n",
		"public_key=zz\n",
		"public_key=" + testKey(1).hex() + "\nrx_bytes=-1\n",
		"public_key=" + testKey(1).hex() + "\nlast_handshake_time_nsec=1000000000\n",
		"public_key=" + testKey(1).hex() + "\nallowed_ip=300.0.0.0/8\n",
		"errno=2\n",
	} {
		if _, err := parseUAPI(bad); err == nil {
			t.Errorf("parseUAPI(%q) succeeded", bad)
		}
	}
}

// formatUAPI writes a deviceState the way wireguard-go's IpcGet does.
func formatUAPI(st deviceState) string {
	var b strings.Builder
	if st.ListenPort != 0 {
		fmt.Fprintf(&b, "listen_port=%d\n", st.ListenPort)
	}
	for _, p := range st.Peers {
		fmt.Fprintf(&b, "public_key=%s\nprotocol_version=1\n", p.PublicKey.hex())
		if p.Endpoint != "" {
			fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint)
		}
		var sec, nsec int64
		if !p.LastHandshake.IsZero() {
			sec, nsec = p.LastHandshake.Unix(), int64(p.LastHandshake.Nanosecond())
		}
		fmt.Fprintf(&b, "last_handshake_time_sec=%d\nlast_handshake_time_nsec=%d\n", sec, nsec)
		fmt.Fprintf(&b, "tx_bytes=%d\nrx_bytes=%d\n", p.TxBytes, p.RxBytes)
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
	}
	return b.String()
}

// FuzzParseUAPI checks the parser never panics, and that whatever it accepts
// survives being written back out in IpcGet's format and parsed again.
func FuzzParseUAPI(f *testing.F) {
	f.Add(sampleGet)
	f.Add("")
	f.Add("public_key=" + testKey(1).hex() + "\nendpoint=[::1]:1\nallowed_ip=::/0\n")
	f.Add("listen_port=0\n\npublic_key=garbage")
	f.Fuzz(func(t *testing.T, s string) {
		st, err := parseUAPI(s)
		if err != nil {
			return
		}
		for _, p := range st.Peers {
			if strings.ContainsAny(p.Endpoint, "\n") {
				t.Fatalf("endpoint %q spans lines", p.Endpoint)
			}
		}
		again, err := parseUAPI(formatUAPI(st))
		if err != nil {
			t.Fatalf("reparse of %q: %v", formatUAPI(st), err)
		}
		if !reflect.DeepEqual(normStats(st), normStats(again)) {
			t.Fatalf("round trip changed state:\n%+v\n%+v", st, again)
		}
	})
}

// normStats makes nil and empty slices and time locations compare equal.
func normStats(st deviceState) deviceState {
	out := deviceState{ListenPort: st.ListenPort}
	for _, p := range st.Peers {
		if len(p.AllowedIPs) == 0 {
			p.AllowedIPs = nil
		}
		if !p.LastHandshake.IsZero() {
			p.LastHandshake = time.Unix(0, p.LastHandshake.UnixNano())
		}
		out.Peers = append(out.Peers, p)
	}
	return out
}

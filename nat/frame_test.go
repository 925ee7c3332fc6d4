package nat

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"
)

func testKeys(t testing.TB) (a, b [32]byte, kab, kba *macKey) {
	t.Helper()
	a, b = [32]byte{1, 2, 3}, [32]byte{9, 8, 7}
	ka, err := pairKey(a, publicKey(a), publicKey(b))
	if err != nil {
		t.Fatal(err)
	}
	kb, err := pairKey(b, publicKey(b), publicKey(a))
	if err != nil {
		t.Fatal(err)
	}
	if ka != kb {
		t.Fatal("pairwise keys differ between the two ends")
	}
	return a, b, newMACKey(ka), newMACKey(kb)
}

func TestFrameRoundTrip(t *testing.T) {
	_, _, k, k2 := testKeys(t)
	frames := []frame{
		{Type: frameProbe, A: 42, TxID: [12]byte{1, 2, 3}, TS: 1764790000123456789, Nonce: 0xfeedface},
		{Type: framePong, A: 43, TxID: [12]byte{4}, TS: -1, Nonce: 1, Observed: netip.MustParseAddrPort("198.18.0.1:51820")},
		{Type: framePong, A: 43, TxID: [12]byte{4}, Observed: netip.MustParseAddrPort("[2001:db8::1]:9")},
		{Type: frameRelay, A: 1, B: 2, Payload: []byte{4, 0, 0, 0, 1, 2, 3}},
		{Type: frameRelayed, A: 1, B: 2, Payload: []byte{}},
		{Type: frameAddrs, A: 5, TS: 7, Nonce: 1 << 63, Addrs: []netip.AddrPort{netip.MustParseAddrPort("198.18.1.1:20001"), netip.MustParseAddrPort("[2001:db8::2]:3")}},
	}
	for _, f := range frames {
		b := appendFrame(nil, &f, k)
		got, err := parseFrame(b)
		if err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		if got.Type != f.Type || got.A != f.A || got.B != f.B || got.TxID != f.TxID || got.TS != f.TS || got.Nonce != f.Nonce || got.Observed != f.Observed || !bytes.Equal(got.Payload, f.Payload) || !slices.Equal(got.Addrs, f.Addrs) {
			t.Fatalf("round trip: got %+v, want %+v", got, f)
		}
		if !verifyFrame(b, k2) {
			t.Fatal("MAC does not verify under the peer's copy of the key")
		}
		for i := range b {
			c := append([]byte(nil), b...)
			c[i] ^= 0x20
			if verifyFrame(c, k2) {
				t.Fatalf("MAC verifies with byte %d flipped", i)
			}
		}
	}
	if verifyFrame(appendFrame(nil, &frames[0], k), newMACKey([32]byte{5})) {
		t.Fatal("MAC verifies under another key")
	}
}

func TestReframeRelayed(t *testing.T) {
	_, _, k, _ := testKeys(t)
	kdst := newMACKey([32]byte{77})
	payload := []byte{4, 0, 0, 0, 9, 9, 9}
	b := appendFrame(nil, &frame{Type: frameRelay, A: 10, B: 20, Payload: payload}, k)
	reframeRelayed(b, 30, kdst)
	f, err := parseFrame(b)
	if err != nil || f.Type != frameRelayed || f.A != 30 || f.B != 10 || !bytes.Equal(f.Payload, payload) {
		t.Fatalf("reframed: %+v %v", f, err)
	}
	if !verifyFrame(b, kdst) || verifyFrame(b, k) {
		t.Fatal("reframed MAC is not under the destination key only")
	}
}

func TestPairKeyRejectsLowOrder(t *testing.T) {
	if _, err := pairKey([32]byte{1}, publicKey([32]byte{1}), [32]byte{}); err == nil {
		t.Fatal("zero public key accepted")
	}
}

func TestPeerEndpointString(t *testing.T) {
	pub := [32]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5}
	s := PeerEndpointString(pub)
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	id, ok := parsePeerAddrPort(ap)
	if !ok || id != peerID(pub) {
		t.Fatalf("%s: id %x ok %v", s, id, ok)
	}
	if _, ok := parsePeerAddrPort(netip.MustParseAddrPort("127.0.0.1:51820")); ok {
		t.Fatal("plain address taken for a peer identity")
	}
	if _, ok := parsePeerAddrPort(netip.MustParseAddrPort("[2001:db8::1]:51820")); ok {
		t.Fatal("plain IPv6 address taken for a peer identity")
	}
}

func FuzzParseFrame(f *testing.F) {
	k := newMACKey([32]byte{3})
	f.Add(appendFrame(nil, &frame{Type: frameProbe, A: 1, TS: 1764790000123456789, Nonce: 42}, k))
	f.Add(appendFrame(nil, &frame{Type: framePong, A: 1, Observed: netip.MustParseAddrPort("1.2.3.4:5")}, k))
	f.Add(appendFrame(nil, &frame{Type: frameRelay, A: 1, B: 2, Payload: []byte{1, 0, 0, 0}}, k))
	f.Add([]byte{'r', 'n', frameVersion, 3})
	f.Add([]byte{'r', 'n', frameVersion, frameAddrs, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 9})
	// A version 1 probe (no stamp): not ours any more.
	f.Add([]byte{'r', 'n', 1, frameProbe, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	f.Add(appendFrame(nil, &frame{Type: frameAddrs, A: 1, Addrs: []netip.AddrPort{netip.MustParseAddrPort("1.2.3.4:5")}}, k))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := parseFrame(b)
		_ = verifyFrame(b, k)
		if err != nil {
			return
		}
		if len(b) < 3 || b[2] != frameVersion {
			t.Fatalf("parsed a version %d frame", b[2])
		}
		// Whatever the stamp, the guard judges it without panicking and
		// never takes the same stamp twice.
		g := newReplayGuard()
		now := fr.TS + int64(fr.Nonce%uint64(2*ReplayWindow)) - int64(ReplayWindow)
		if g.check(fr.TS, fr.Nonce, now) == fresh && g.check(fr.TS, fr.Nonce, now) != replay {
			t.Fatal("the same stamp was taken twice")
		}
		again := appendFrame(nil, &fr, k)
		fr2, err := parseFrame(again)
		if err != nil {
			t.Fatalf("re-encoded frame does not parse: %v", err)
		}
		if fr2.Type != fr.Type || fr2.A != fr.A || fr2.B != fr.B || fr2.TxID != fr.TxID || fr2.TS != fr.TS || fr2.Nonce != fr.Nonce || !bytes.Equal(fr2.Payload, fr.Payload) {
			t.Fatalf("round trip changed the frame: %+v -> %+v", fr, fr2)
		}
		if fr2.Observed != fr.Observed || !slices.Equal(fr2.Addrs, fr.Addrs) {
			t.Fatalf("observed address changed: %v -> %v", fr.Observed, fr2.Observed)
		}
		if len(again) != len(b) || !bytes.Equal(again[:len(b)-macLen], b[:len(b)-macLen]) {
			t.Fatal("re-encoding changed the bytes")
		}
		if !verifyFrame(again, k) {
			t.Fatal("sealed frame does not verify")
		}
	})
}

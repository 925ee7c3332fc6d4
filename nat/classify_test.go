package nat

import (
	"encoding/binary"
	"testing"
)

func TestClassify(t *testing.T) {
	wg := func(typ byte, n int) []byte {
		b := make([]byte, n)
		b[0] = typ
		return b
	}
	// A WireGuard transport message whose receiver index is the STUN cookie,
	// padded so that a STUN length check alone could not tell them apart.
	wgCookie := wg(4, 32)
	binary.BigEndian.PutUint32(wgCookie[4:], stunMagicCookie)
	stunReq, _ := buildSTUNRequest([12]byte{1})
	stunBadLen := append(append([]byte(nil), stunReq...), 0, 0, 0, 0)
	stunOtherMethod := append([]byte(nil), stunReq...)
	binary.BigEndian.PutUint16(stunOtherMethod, 0x0003) // Allocate (TURN)
	stunTopBits := append([]byte(nil), stunReq...)
	stunTopBits[0] |= 0x80
	stunNoCookie := append([]byte(nil), stunReq...)
	stunNoCookie[4] = 0
	probe := appendFrame(nil, &frame{Type: frameProbe, A: 1}, newMACKey([32]byte{}))

	for _, tc := range []struct {
		name string
		b    []byte
		want Class
	}{
		{"empty", nil, ClassUnknown},
		{"wg initiation", wg(1, 148), ClassWireGuard},
		{"wg response", wg(2, 92), ClassWireGuard},
		{"wg cookie", wg(3, 64), ClassWireGuard},
		{"wg transport", wg(4, 32), ClassWireGuard},
		{"wg index equals cookie", wgCookie, ClassWireGuard},
		{"wg type 5", wg(5, 32), ClassUnknown},
		{"wg type 1 nonzero reserved", append([]byte{1, 0, 1, 0}, make([]byte, 28)...), ClassUnknown},
		{"stun binding request", stunReq, ClassSTUN},
		{"stun length mismatch", stunBadLen, ClassUnknown},
		{"stun other method", stunOtherMethod, ClassUnknown},
		{"stun top bits set", stunTopBits, ClassUnknown},
		{"stun no cookie", stunNoCookie, ClassUnknown},
		{"probe frame", probe, ClassFrame},
		{"frame header only", []byte{'r', 'n', 2, 9}, ClassFrame},
		{"frame wrong version", []byte{'r', 'n', 3, 1}, ClassUnknown},
		{"version 1 frame (no replay stamp)", []byte{'r', 'n', 1, 1}, ClassUnknown},
		{"text", []byte("hello world"), ClassUnknown},
	} {
		if got := Classify(tc.b); got != tc.want {
			t.Errorf("%s: Classify = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func FuzzClassify(f *testing.F) {
	req, _ := buildSTUNRequest([12]byte{7})
	f.Add(req)
	f.Add([]byte{4, 0, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0})
	f.Add(appendFrame(nil, &frame{Type: frameRelay, A: 1, B: 2, Payload: []byte{4, 0, 0, 0}}, newMACKey([32]byte{1})))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := Classify(b)
		// The classes are disjoint by construction; check the defining bits.
		switch c {
		case ClassWireGuard:
			if b[0] < 1 || b[0] > 4 || b[1]|b[2]|b[3] != 0 {
				t.Fatalf("wireguard class for % x", b[:4])
			}
		case ClassSTUN:
			if b[0]&0xC0 != 0 || binary.BigEndian.Uint32(b[4:]) != stunMagicCookie || isWireGuard(b) {
				t.Fatal("bad STUN classification")
			}
			_, _ = parseSTUN(b) // must not panic
		case ClassFrame:
			if b[0] != 'r' || isWireGuard(b) || isSTUN(b) {
				t.Fatal("bad frame classification")
			}
			_, _ = parseFrame(b)
		}
	})
}

package nat

import "encoding/binary"

// Class is what a received datagram is, decided from its header bits alone.
type Class uint8

const (
	ClassUnknown   Class = iota // dropped and counted
	ClassWireGuard              // handed to wireguard-go
	ClassSTUN                   // STUN client or responder
	ClassFrame                  // probe, pong, relay frames
)

func (c Class) String() string {
	switch c {
	case ClassWireGuard:
		return "wireguard"
	case ClassSTUN:
		return "stun"
	case ClassFrame:
		return "frame"
	}
	return "unknown"
}

const (
	stunHeaderLen   = 20
	stunMagicCookie = 0x2112A442
	stunMethodMask  = 0x3EEF // the method bits of the type field (class bits C0, C1 cleared)
	stunBinding     = 0x0001
)

// Classify decides what b is. It is pure and never panics.
//
// The WireGuard test comes first, as ARCHITECTURE.md asks: bytes 4..7 of a
// WireGuard message are its receiver index, which can equal the STUN magic
// cookie, and type bytes 1..4 have the top two bits clear like STUN. (The
// STUN length check would reject such a message too, but the order keeps
// the decision obviously right rather than subtly right.)
func Classify(b []byte) Class {
	if isWireGuard(b) {
		return ClassWireGuard
	}
	if isSTUN(b) {
		return ClassSTUN
	}
	if isFrame(b) {
		return ClassFrame
	}
	return ClassUnknown
}

func isWireGuard(b []byte) bool {
	return len(b) >= 4 && b[0] >= 1 && b[0] <= 4 && b[1] == 0 && b[2] == 0 && b[3] == 0
}

func isSTUN(b []byte) bool {
	if len(b) < stunHeaderLen || b[0]&0xC0 != 0 {
		return false
	}
	if binary.BigEndian.Uint32(b[4:8]) != stunMagicCookie {
		return false
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n%4 != 0 || stunHeaderLen+n != len(b) {
		return false
	}
	return binary.BigEndian.Uint16(b[0:2])&stunMethodMask == stunBinding
}

func isFrame(b []byte) bool {
	return len(b) >= frameHeaderLen && b[0] == frameMagic0 && b[1] == frameMagic1 && b[2] == frameVersion
}

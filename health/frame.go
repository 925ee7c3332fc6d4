package health

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/runos/runos-agent/seal"
)

// Heartbeats travel as datagrams of their own on the gossip port, sealed
// with a key only members hold:
//
//	FramePrefix | stamp uvarint | XChaCha20-Poly1305(beat) (ad = both)
//
// The beat inside is beatwire.go's form with seq 0: the stamp (sendStamp)
// is the seq. The key is seal.Derive(data key, "heartbeat"). The nonce is
// not sent: it is the sender's mesh IP (16 bytes) and the stamp (8), so a
// frame opens only as coming from the address it was sealed for, and
// since every sender's stamps strictly increase and every member has its
// own IP, no two frames share a nonce. That saves the 24 bytes a random
// nonce would cost on every beat (the idle budget is 1 MB/h per node).
// Every member can seal, so the receiver also checks that the address is
// the one the cluster state records for the node the beat names
// (receive.go).
const (
	// FramePrefix is a sealed heartbeat's first byte. memberlist never
	// starts a packet with it (its message types are below 20, its label
	// header is 244, its encrypted packets start with 0 or 1), so the
	// gossip transport can route on it.
	FramePrefix byte = 0xB7

	// maxFrameOverhead is the most sealing adds to a beat.
	maxFrameOverhead = 1 + binary.MaxVarintLen64 + chacha20poly1305.Overhead

	// keyPurpose is the data key's derivation for heartbeats.
	keyPurpose = "heartbeat"
)

var errFrame = errors.New("heartbeat frame does not open")

// SealFrame seals a beat's wire form, sent from src with send stamp
// stamp, under the heartbeat key derived from dataKey (tests forge beats
// with it, as a member could).
func SealFrame(dataKey seal.Key, src netip.Addr, stamp uint64, beat []byte) ([]byte, error) {
	return sealWith(seal.Derive(dataKey, keyPurpose), src, stamp, beat)
}

func sealWith(k seal.Key, src netip.Addr, stamp uint64, beat []byte) ([]byte, error) {
	aead, err := chacha20poly1305.NewX(k[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, maxFrameOverhead+len(beat))
	out = binary.AppendUvarint(append(out, FramePrefix), stamp)
	return aead.Seal(out, frameNonce(src, stamp), beat, out), nil
}

func frameNonce(src netip.Addr, stamp uint64) []byte {
	ip := src.Unmap().As16()
	return binary.BigEndian.AppendUint64(ip[:], stamp)
}

// openFrame opens a sealed frame that came from src with any of the
// heartbeat keys (newest first), and returns its stamp and the beat's
// wire form.
func openFrame(keys []seal.Key, src netip.Addr, frame []byte) (uint64, []byte, error) {
	if len(frame) < 2+chacha20poly1305.Overhead || len(frame) > maxFrameOverhead+maxBeatLen || frame[0] != FramePrefix {
		return 0, nil, errFrame
	}
	stamp, n := binary.Uvarint(frame[1:])
	if n <= 0 || len(frame) < 1+n+chacha20poly1305.Overhead {
		return 0, nil, errFrame
	}
	head, box := frame[:1+n], frame[1+n:]
	nonce := frameNonce(src, stamp)
	for _, k := range keys {
		aead, err := chacha20poly1305.NewX(k[:])
		if err != nil {
			return 0, nil, err
		}
		if beat, err := aead.Open(nil, nonce, box, head); err == nil {
			return stamp, beat, nil
		}
	}
	return 0, nil, errFrame
}

// derivedKeys remembers the heartbeat keys derived from data keys, so a
// beat costs no HKDF: data keys change only on a rotation, and a few are
// held at a time.
type derivedKeys struct {
	mu sync.Mutex
	m  map[seal.Key]seal.Key // data key -> heartbeat key; guarded by mu
}

// derive returns the heartbeat keys of dataKeys, in their order.
func (d *derivedKeys) derive(dataKeys []seal.Key) []seal.Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]seal.Key, 0, len(dataKeys))
	for _, dk := range dataKeys {
		k, ok := d.m[dk]
		if !ok {
			if d.m == nil || len(d.m) >= 16 { // rotated-out keys are not kept forever
				d.m = map[seal.Key]seal.Key{}
			}
			k = seal.Derive(dk, keyPurpose)
			d.m[dk] = k
		}
		out = append(out, k)
	}
	return out
}

package health

import (
	"crypto/rand"
	"errors"
	"sync"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/runos/runos-agent/seal"
)

// Heartbeats travel as datagrams of their own on the gossip port, sealed
// with a key only members hold:
//
//	FramePrefix | nonce (24 bytes) | XChaCha20-Poly1305(beat, ad = FramePrefix)
//
// The beat inside is beatwire.go's form; its seq is the sender's send
// stamp (sendStamp). The key is seal.Derive(data key, "heartbeat"):
// every member can seal, so the receiver also checks that the datagram
// came from the mesh IP the cluster state records for the node the beat
// names (receive.go). The nonce is random: every member seals under the
// same key, and a counter would need coordination; at a few beats a
// second per cluster, 192 random bits never repeat.
const (
	// FramePrefix is a sealed heartbeat's first byte. memberlist never
	// starts a packet with it (its message types are below 20, its label
	// header is 244, its encrypted packets start with 0 or 1), so the
	// gossip transport can route on it.
	FramePrefix byte = 0xB7

	// frameOverhead is what sealing adds to a beat.
	frameOverhead = 1 + chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead

	// keyPurpose is the data key's derivation for heartbeats.
	keyPurpose = "heartbeat"
)

var errFrame = errors.New("heartbeat frame does not open")

// SealFrame seals a beat's wire form under the heartbeat key derived from
// dataKey (tests use it to forge beats as a member could).
func SealFrame(dataKey seal.Key, beat []byte) ([]byte, error) {
	return sealWith(seal.Derive(dataKey, keyPurpose), beat)
}

func sealWith(k seal.Key, beat []byte) ([]byte, error) {
	aead, err := chacha20poly1305.NewX(k[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+aead.NonceSize(), frameOverhead+len(beat))
	out[0] = FramePrefix
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, err
	}
	return aead.Seal(out, out[1:1+aead.NonceSize()], beat, out[:1]), nil
}

// openFrame opens a sealed frame with any of the heartbeat keys (newest
// first) and returns the beat's wire form.
func openFrame(keys []seal.Key, frame []byte) ([]byte, error) {
	if len(frame) < frameOverhead || len(frame) > frameOverhead+maxBeatLen || frame[0] != FramePrefix {
		return nil, errFrame
	}
	nonce, box := frame[1:1+chacha20poly1305.NonceSizeX], frame[1+chacha20poly1305.NonceSizeX:]
	for _, k := range keys {
		aead, err := chacha20poly1305.NewX(k[:])
		if err != nil {
			return nil, err
		}
		if beat, err := aead.Open(nil, nonce, box, frame[:1]); err == nil {
			return beat, nil
		}
	}
	return nil, errFrame
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

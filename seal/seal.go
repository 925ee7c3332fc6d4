// Package seal encrypts the secrets the cluster keeps in its Raft state
// (service credentials, the cloud client key, a kubeconfig) with the
// cluster's data key. The data key lives in each member's data dir, never in
// Raft, so a copy of the Raft log or a snapshot (or the cloud's mirror) holds
// no usable secret.
package seal

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"
)

// Key is a cluster data key.
type Key [chacha20poly1305.KeySize]byte

// NewKey returns a fresh random key.
func NewKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, err
	}
	return k, nil
}

// ParseKey reads a key in the form String prints.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != len(k) {
		return Key{}, errors.New("seal: invalid data key")
	}
	copy(k[:], b)
	return k, nil
}

// String is the key in base64.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k was never set.
func (k Key) IsZero() bool { return k == Key{} }

const prefix = "sealed1:"

// ErrOpen is returned for a sealed value that does not open: tampered, cut,
// sealed under another key, or for another purpose.
var ErrOpen = errors.New("seal: cannot open sealed value (wrong key or tampered)")

// Seal encrypts plaintext with XChaCha20-Poly1305. purpose is authenticated
// but not stored ("service/postgres-k9m3w/password"), so a sealed value
// copied to another field does not open there.
func Seal(k Key, purpose string, plaintext []byte) (string, error) {
	aead, err := chacha20poly1305.NewX(k[:])
	if err != nil {
		return "", err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := aead.Seal(nonce, nonce, plaintext, []byte(purpose))
	return prefix + base64.RawStdEncoding.EncodeToString(out), nil
}

// Open decrypts what Seal produced for the same purpose.
func Open(k Key, purpose, sealed string) ([]byte, error) {
	body, ok := strings.CutPrefix(sealed, prefix)
	if !ok {
		return nil, fmt.Errorf("seal: not a sealed value")
	}
	raw, err := base64.RawStdEncoding.DecodeString(body)
	if err != nil {
		return nil, ErrOpen
	}
	aead, err := chacha20poly1305.NewX(k[:])
	if err != nil {
		return nil, err
	}
	if len(raw) < aead.NonceSize()+aead.Overhead() {
		return nil, ErrOpen
	}
	pt, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], []byte(purpose))
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

// Derive returns a key for one purpose ("memberlist", "heartbeat") derived
// from the data key with HKDF-SHA256. Channels keyed this way change with
// the data key, so a rotation (node removal) re-keys them too, and one
// derived key reveals neither the data key nor its siblings.
func Derive(k Key, purpose string) Key {
	out, err := hkdf.Key(sha256.New, k[:], nil, "runos-agent "+purpose, len(Key{}))
	if err != nil {
		panic("seal: hkdf: " + err.Error()) // only for lengths sha256 cannot reach
	}
	return Key(out)
}

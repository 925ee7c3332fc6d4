package mesh

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Key is a Curve25519 key, private or public. Its text form is the standard
// base64 encoding used by wg(8), so keys can be copied between this program
// and the stock WireGuard tools.
type Key [32]byte

// GeneratePrivateKey returns a new random private key, clamped the way
// `wg genkey` clamps it so the stored bytes are exactly the scalar in use.
func GeneratePrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("mesh: generate private key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// PublicKey derives the public key of the private key k.
func (k Key) PublicKey() Key {
	// X25519 accepts any 32 bytes (it clamps internally), so the error
	// branch is unreachable; it is checked rather than ignored so that a
	// future stdlib change cannot silently yield a zero key.
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil {
		panic("mesh: X25519 rejected a 32-byte key: " + err.Error())
	}
	var pub Key
	copy(pub[:], priv.PublicKey().Bytes())
	return pub
}

// String returns the standard base64 encoding, as printed by wg(8).
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is the all-zero key, which stands for "no key".
func (k Key) IsZero() bool { return k == Key{} }

// hex is the form the WireGuard UAPI speaks.
func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// ParseKey parses the standard base64 form of a key.
func ParseKey(s string) (Key, error) {
	var k Key
	// Strict decoding rejects non-zero padding bits, so every key has
	// exactly one text form and keys can be compared as strings.
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return Key{}, fmt.Errorf("mesh: parse key: %w", err)
	}
	if len(b) != len(k) {
		return Key{}, fmt.Errorf("mesh: parse key: got %d bytes, want %d", len(b), len(k))
	}
	copy(k[:], b)
	return k, nil
}

func parseHexKey(s string) (Key, error) {
	var k Key
	if len(s) != 2*len(k) {
		return Key{}, fmt.Errorf("mesh: hex key has length %d, want %d", len(s), 2*len(k))
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return Key{}, fmt.Errorf("mesh: hex key: %w", err)
	}
	return k, nil
}

// MarshalText implements encoding.TextMarshaler, so keys appear as base64 in
// JSON and in the Raft state.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *Key) UnmarshalText(b []byte) error {
	parsed, err := ParseKey(string(b))
	if err != nil {
		return err
	}
	*k = parsed
	return nil
}

// LoadOrCreatePrivateKey reads the private key stored at path, or generates
// one and stores it there (mode 0600) if the file does not exist. A key file
// that group or others may read is refused rather than used, as ssh does: a
// leaked node key lets anyone impersonate the node on the mesh.
func LoadOrCreatePrivateKey(path string) (Key, error) {
	if path == "" {
		return Key{}, errors.New("mesh: private key path is empty")
	}
	k, err := loadPrivateKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}

	k, err = GeneratePrivateKey()
	if err != nil {
		return Key{}, err
	}
	// Write to a temporary file and hard-link it into place: the key file
	// never exists half-written, and if another process created it in the
	// meantime the link fails instead of replacing that key with ours.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".wgkey-*") // CreateTemp uses mode 0600
	if err != nil {
		return Key{}, fmt.Errorf("mesh: create private key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(k.String() + "\n")
	if err == nil {
		err = tmp.Chmod(0o600) // CreateTemp's mode is not a documented promise
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Key{}, fmt.Errorf("mesh: write private key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return loadPrivateKey(path)
		}
		return Key{}, fmt.Errorf("mesh: store private key: %w", err)
	}
	return k, nil
}

func loadPrivateKey(path string) (Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return Key{}, err // keep fs.ErrNotExist visible to the caller
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Key{}, fmt.Errorf("mesh: private key %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return Key{}, fmt.Errorf("mesh: private key %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return Key{}, fmt.Errorf("mesh: private key %s has mode %04o; it must not be accessible by group or others (chmod 600)", path, perm)
	}
	// A key file is 45 bytes; the limit keeps a wrong path from being
	// read into memory whole.
	buf, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return Key{}, fmt.Errorf("mesh: read private key %s: %w", path, err)
	}
	k, err := ParseKey(strings.TrimSpace(string(buf)))
	if err != nil {
		return Key{}, fmt.Errorf("mesh: private key %s: %w", path, err)
	}
	if k.IsZero() {
		return Key{}, fmt.Errorf("mesh: private key %s is all zeros", path)
	}
	return k, nil
}

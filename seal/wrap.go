package seal

import (
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/base64"
	"errors"
	"fmt"
)

// A rotated data key travels in the Raft state wrapped for each member with
// HPKE (RFC 9180: DHKEM(X25519), HKDF-SHA256, ChaCha20-Poly1305) to the
// member's WireGuard public key, which the state already holds. Only the
// holder of the WireGuard private key unwraps it: a removed node, whose
// public key is in no wrap, learns nothing from the state.

func wrapInfo(clusterID string, epoch uint64) []byte {
	return fmt.Appendf(nil, "runos-agent data key\x00%s\x00%d", clusterID, epoch)
}

// WrapKey seals k for the X25519 public key pub; clusterID and epoch are
// bound into the HPKE context, so a wrap cannot be replayed as another
// epoch or into another cluster.
func WrapKey(pub [32]byte, clusterID string, epoch uint64, k Key) (string, error) {
	pk, err := ecdh.X25519().NewPublicKey(pub[:])
	if err != nil {
		return "", err
	}
	hpk, err := hpke.NewDHKEMPublicKey(pk)
	if err != nil {
		return "", err
	}
	ct, err := hpke.Seal(hpk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), wrapInfo(clusterID, epoch), k[:])
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(ct), nil
}

// UnwrapKey opens what WrapKey sealed for the public key of priv.
func UnwrapKey(priv [32]byte, clusterID string, epoch uint64, wrapped string) (Key, error) {
	ct, err := base64.StdEncoding.DecodeString(wrapped)
	if err != nil {
		return Key{}, ErrOpen
	}
	sk, err := ecdh.X25519().NewPrivateKey(priv[:])
	if err != nil {
		return Key{}, err
	}
	hsk, err := hpke.NewDHKEMPrivateKey(sk)
	if err != nil {
		return Key{}, err
	}
	pt, err := hpke.Open(hsk, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), wrapInfo(clusterID, epoch), ct)
	if err != nil {
		return Key{}, ErrOpen
	}
	var k Key
	if len(pt) != len(k) {
		return Key{}, errors.New("seal: wrapped key has the wrong length")
	}
	copy(k[:], pt)
	return k, nil
}

package seal

import (
	"crypto/ecdh"
	"testing"
)

func x25519Pub(t *testing.T, priv [32]byte) [32]byte {
	sk, err := ecdh.X25519().NewPrivateKey(priv[:])
	if err != nil {
		t.Fatal(err)
	}
	return [32]byte(sk.PublicKey().Bytes())
}

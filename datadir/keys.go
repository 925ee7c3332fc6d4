package datadir

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/seal"
)

// Keys are the node's secrets and certificates as init or join left them.
type Keys struct {
	WG       mesh.Key // the node's WireGuard private key
	NodeCert []byte   // PEM, signed by the cluster CA
	NodeKey  []byte   // PEM
	CACert   *x509.Certificate
	// DataKeys is the cluster data keyring: seals secrets kept in the
	// Raft state; a rotation (node removal) adds an epoch (SaveDataKeys).
	DataKeys *seal.Keyring
}

// LoadKeys reads the node's keys and certificates from dir. It fails when
// one is missing or unreadable, or when ca.crt is not the CA of the
// cluster cfg belongs to.
func LoadKeys(dir string, cfg *NodeConfig) (*Keys, error) {
	var k Keys
	keyText, err := os.ReadFile(filepath.Join(dir, FileWGKey))
	if err != nil {
		return nil, err
	}
	if k.WG, err = mesh.ParseKey(strings.TrimSpace(string(keyText))); err != nil {
		return nil, fmt.Errorf("%s: %w", FileWGKey, err)
	}
	if k.NodeCert, err = os.ReadFile(filepath.Join(dir, FileNodeCert)); err != nil {
		return nil, err
	}
	if k.NodeKey, err = os.ReadFile(filepath.Join(dir, FileNodeKey)); err != nil {
		return nil, err
	}
	dataKeyText, err := os.ReadFile(filepath.Join(dir, FileDataKey))
	if err != nil {
		return nil, err
	}
	if k.DataKeys, err = seal.ParseKeyring(string(dataKeyText)); err != nil {
		return nil, fmt.Errorf("%s: %w", FileDataKey, err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, FileCACert))
	if err != nil {
		return nil, err
	}
	if k.CACert, err = pki.ParseCert(caPEM); err != nil {
		return nil, fmt.Errorf("%s: %w", FileCACert, err)
	}
	if got := pki.Fingerprint(k.CACert); got != cfg.CAFingerprint {
		return nil, fmt.Errorf("%s does not match the cluster this data dir belongs to (fingerprint %s, want %s)", FileCACert, got, cfg.CAFingerprint)
	}
	return &k, nil
}

// SaveDataKeys writes the keyring to the data dir (atomically, 0600): a
// crash leaves the old file or the new one, never half of either.
func SaveDataKeys(dir string, r *seal.Keyring) error {
	return WriteFileAtomic(filepath.Join(dir, FileDataKey), r.Marshal(), 0o600)
}

// firstKeyring is the keyring of a new cluster: its first key, epoch 1.
func firstKeyring(k seal.Key) *seal.Keyring {
	r, err := seal.NewKeyring(seal.EpochKey{Epoch: 1, Key: k})
	if err != nil {
		panic(err) // k is fresh and non-zero
	}
	return r
}

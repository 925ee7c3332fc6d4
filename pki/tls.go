package pki

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// ErrFingerprintMismatch is returned (wrapped) by a PinnedClientConfig
// handshake when the server does not present the pinned cluster CA.
var ErrFingerprintMismatch = errors.New("cluster CA fingerprint mismatch")

// PinnedClientConfig is the TLS client config of a joiner, which knows the
// cluster only by its CA fingerprint (from the join command) and dials a
// member by an underlay address that no certificate names.
//
// The handshake succeeds only if the server's chain contains a certificate
// whose fingerprint is caFingerprint and the server's leaf verifies against
// that certificate as the sole root. Checking the fingerprint alone would not
// do: the CA certificate is public, and anyone can staple it to a chain.
// Host names are not checked; the pin is the identity.
//
// caFingerprint is compared case-insensitively, and colons (as openssl
// prints fingerprints) are ignored.
func PinnedClientConfig(caFingerprint string) *tls.Config {
	want := normalizeFingerprint(caFingerprint)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The standard verifier needs a root pool and a host name, and we have
		// neither; VerifyConnection below does the whole verification instead.
		// It runs on every handshake, resumed ones included, unlike
		// VerifyPeerCertificate.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPinned(cs.PeerCertificates, want)
		},
	}
}

func verifyPinned(chain []*x509.Certificate, want string) error {
	if !isFingerprint(want) {
		return fmt.Errorf("pki: invalid cluster CA fingerprint %q: want 64 hex digits", want)
	}
	if len(chain) == 0 {
		return errors.New("pki: server presented no certificate")
	}
	var ca *x509.Certificate
	for _, c := range chain {
		if Fingerprint(c) == want {
			ca = c
			break
		}
	}
	if ca == nil {
		// Report what the server offered as its root: the last certificate
		// of the chain, which is the CA with ServerConfig.
		return fmt.Errorf("%w: got %s, want %s", ErrFingerprintMismatch, Fingerprint(chain[len(chain)-1]), want)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots:     roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("pki: server certificate does not verify against the pinned cluster CA: %w", err)
	}
	return nil
}

func normalizeFingerprint(s string) string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
}

func isFingerprint(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32
}

// JoinServerName is the TLS server name (SNI) a joiner sends to the join
// endpoint: derived from the cluster CA's fingerprint, so only a client
// that holds the fingerprint (from a join command) can name it, and the
// name itself does not reveal the fingerprint. It is "" for a malformed
// fingerprint.
func JoinServerName(caFingerprint string) string {
	fp := normalizeFingerprint(caFingerprint)
	if !isFingerprint(fp) {
		return ""
	}
	sum := sha256.Sum256([]byte("runos join sni\x00" + fp))
	return hex.EncodeToString(sum[:16]) + ".join.runos"
}

// JoinClientConfig is PinnedClientConfig naming the join endpoint by
// JoinServerName, as ServerConfig requires.
func JoinClientConfig(caFingerprint string) *tls.Config {
	c := PinnedClientConfig(caFingerprint)
	c.ServerName = JoinServerName(caFingerprint)
	return c
}

// ServerConfig is the TLS config of the join endpoint. It presents the
// node's certificate followed by the CA certificate, so that a joiner holding
// only the CA fingerprint (PinnedClientConfig) finds the CA in the chain. It
// asks for no client certificate: joiners have none yet, and the join token
// authenticates them.
//
// Those certificates name the node and the cluster, which a stranger
// scanning the port must not learn: a handshake that does not name
// JoinServerName of ca's fingerprint (JoinClientConfig does) finds no
// certificate and fails with an "unrecognized name" alert, before any
// certificate is sent.
func ServerConfig(certPEM, keyPEM []byte, ca *x509.Certificate) (*tls.Config, error) {
	cert, err := loadCert(certPEM, keyPEM, ca)
	if err != nil {
		return nil, err
	}
	full := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.NoClientCert,
	}
	want := []byte(JoinServerName(Fingerprint(ca)))
	// No certificate at all: crypto/tls answers the handshake with the
	// unrecognized_name alert, which old joiners (no SNI) report as such.
	stranger := &tls.Config{MinVersion: tls.VersionTLS13}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if subtle.ConstantTimeCompare([]byte(hello.ServerName), want) == 1 {
				return full, nil
			}
			return stranger, nil
		},
	}, nil
}

// MutualConfig returns the server and client TLS configs of the node API.
// Both sides present the node certificate and require the peer's to be
// signed by ca. The client also verifies the server's name, so callers dial
// a member by its mesh IP (or set ServerName to it or to the node name).
//
// allow, if not nil, is consulted for the peer's leaf certificate on both
// sides after the chain verifies, on every handshake including resumed
// sessions. Wire it to the cluster state so that the certificate of a removed
// node (its serial no longer recorded) is refused even though it is still
// validly signed.
func MutualConfig(certPEM, keyPEM []byte, ca *x509.Certificate, allow func(leaf *x509.Certificate) error) (server, client *tls.Config, err error) {
	cert, err := loadCert(certPEM, keyPEM, ca)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	verify := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			// Unreachable with the settings below; refuse rather than trust.
			return errors.New("pki: peer presented no certificate")
		}
		if allow == nil {
			return nil
		}
		leaf := cs.PeerCertificates[0]
		if err := allow(leaf); err != nil {
			return fmt.Errorf("pki: peer certificate %q (serial %s) refused: %w", leaf.Subject.CommonName, SerialOf(leaf), err)
		}
		return nil
	}
	server = &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        pool,
		VerifyConnection: verify,
	}
	client = &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		RootCAs:          pool,
		VerifyConnection: verify,
	}
	return server, client, nil
}

// AddressedConfig is MutualConfig for transports that dial members by
// mesh address rather than by name (Raft's stream layer). The server side is
// MutualConfig's. The client verifies the server's chain against ca as the
// standard verifier would, and then allow, but checks no name: node
// certificates name the node, not its mesh IP, and allow (wired to the
// cluster state) already ties the certificate to a current member.
// Every handshake, resumed ones included, is verified.
func AddressedConfig(certPEM, keyPEM []byte, ca *x509.Certificate, allow func(leaf *x509.Certificate) error) (server, client *tls.Config, err error) {
	server, client, err = MutualConfig(certPEM, keyPEM, ca, allow)
	if err != nil {
		return nil, nil, err
	}
	roots := client.RootCAs
	client.RootCAs = nil
	// The standard verifier insists on a name; VerifyConnection below does
	// the whole verification instead.
	client.InsecureSkipVerify = true
	client.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("pki: peer presented no certificate")
		}
		leaf := cs.PeerCertificates[0]
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots:         roots,
			Intermediates: inter,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}); err != nil {
			return fmt.Errorf("pki: peer certificate %q does not verify against the cluster CA: %w", leaf.Subject.CommonName, err)
		}
		if allow == nil {
			return nil
		}
		if err := allow(leaf); err != nil {
			return fmt.Errorf("pki: peer certificate %q (serial %s) refused: %w", leaf.Subject.CommonName, SerialOf(leaf), err)
		}
		return nil
	}
	return server, client, nil
}

// FingerprintPEM is Fingerprint of the first certificate in certPEM: what
// the cluster state records for a node's certificate.
func FingerprintPEM(certPEM []byte) (string, error) {
	c, err := ParseCert(certPEM)
	if err != nil {
		return "", fmt.Errorf("pki: %w", err)
	}
	return Fingerprint(c), nil
}

// loadCert builds the certificate chain a node presents: its leaf, then the
// CA. It checks that the leaf was signed by ca, so that a node whose data dir
// holds a certificate from another cluster fails at startup rather than at
// every handshake.
func loadCert(certPEM, keyPEM []byte, ca *x509.Certificate) (tls.Certificate, error) {
	if ca == nil {
		return tls.Certificate{}, errors.New("pki: CA certificate is required")
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: load node certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: parse node certificate: %w", err)
	}
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: node certificate %q is not signed by the cluster CA: %w", leaf.Subject.CommonName, err)
	}
	return tls.Certificate{
		Certificate: [][]byte{leaf.Raw, ca.Raw},
		PrivateKey:  pair.PrivateKey,
		Leaf:        leaf,
	}, nil
}

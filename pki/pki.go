// Package pki holds the cluster's certificate authority and the node
// certificates it signs. The CA is created once by "runos-agent init"; every
// node certificate carries the node's mesh IP and name, so the node API can be
// mutually authenticated, and its serial number is recorded in the cluster
// state so that removing a node revokes its certificate without a CRL.
//
// Keys are ECDSA P-256: small, fast, and supported by every TLS stack we talk
// to. There are no intermediates: the CA signs leaves directly.
//
// It also owns HashSecret, the one way token secrets are hashed for storage,
// shared by the agent and the cloud backend.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"time"
)

const (
	// caValidity is long because rotating a cluster CA means re-issuing every
	// node certificate and re-pinning every join command; a home-lab cluster
	// should never have to think about it.
	caValidity = 10 * 365 * 24 * time.Hour

	// clockSkew backdates NotBefore so that a certificate issued on one node
	// is accepted at once by a peer whose clock runs a little behind.
	clockSkew = time.Hour

	pemCert = "CERTIFICATE"
	pemKey  = "PRIVATE KEY" // PKCS #8
	pemCSR  = "CERTIFICATE REQUEST"

	// maxNodeName bounds a node name to what fits in a DNS name.
	maxNodeName = 253
)

// CA is the cluster certificate authority.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA creates a self-signed CA for the cluster with the given ID, valid
// for ten years.
func NewCA(clusterID string) (*CA, error) {
	if clusterID == "" {
		return nil, errors.New("pki: cluster ID is required")
	}
	return NewCAWithSubject(pkix.Name{CommonName: "runos cluster " + clusterID, Organization: []string{"runos"}})
}

// NewCAWithSubject creates a self-signed CA with the given subject, valid
// for ten years (the cluster CA, and managed Kubernetes' CAs in kubehost/kpki).
func NewCAWithSubject(subject pkix.Name) (*CA, error) {
	key, keyPEM, err := NewKey()
	if err != nil {
		return nil, err
	}
	serial, err := RandomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// No intermediates: a leaf can never be used to mint certificates
		// even if someone mis-sets IsCA on it later.
		MaxPathLen:     0,
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse new CA certificate: %w", err)
	}
	return &CA{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: der}),
		KeyPEM:  keyPEM,
	}, nil
}

// ParseCA loads a CA from its PEM certificate and key, as written to the data
// dir by NewCA. It checks that the certificate is a CA and that the key is
// the one the certificate was issued for.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("pki: certificate %q is not a CA", cert.Subject.CommonName)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	if !PublicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, errors.New("pki: CA key does not match CA certificate")
	}
	return &CA{
		Cert:    cert,
		Key:     key,
		CertPEM: bytes.Clone(certPEM),
		KeyPEM:  bytes.Clone(keyPEM),
	}, nil
}

// Fingerprint is the lowercase hex SHA-256 of the certificate's DER
// encoding. Join commands carry the CA's fingerprint so that a joiner can
// authenticate a member before it trusts anything else.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// HashSecret is how token secrets (the agent's join tokens, the cloud's
// registration tokens) are stored and compared: lowercase hex SHA-256, so
// neither the Raft log nor the cloud's database holds a usable secret.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SerialOf returns the certificate's serial number as lowercase hex, the
// form in which the cluster state records it.
func SerialOf(cert *x509.Certificate) string {
	return formatSerial(cert.SerialNumber)
}

// NewKey generates an ECDSA P-256 key and returns it with its PKCS #8 PEM
// encoding.
func NewKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: marshal key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: pemKey, Bytes: der}), nil
}

// ParseKey parses a PEM private key: PKCS #8 ("PRIVATE KEY", what NewKey
// writes) or SEC 1 ("EC PRIVATE KEY", what openssl ecparam writes).
func ParseKey(pemBytes []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("pki: key: no PEM block found")
	}
	var (
		k   any
		err error
	)
	switch block.Type {
	case pemKey:
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("pki: key: unexpected PEM block type %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("pki: key: %T cannot sign", k)
	}
	return s, nil
}

// ParseCert parses the first PEM certificate in pemBytes.
func ParseCert(pemBytes []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if block.Type != pemCert {
		return nil, fmt.Errorf("unexpected PEM block type %q", block.Type)
	}
	return x509.ParseCertificate(block.Bytes)
}

// NewCSR creates a certificate signing request for nodeName. The CA puts
// the SANs in on its own (from the cluster state), so the CSR carries only
// the name and proves possession of the key.
func NewCSR(key crypto.Signer, nodeName string) ([]byte, error) {
	if key == nil {
		return nil, errors.New("pki: CSR: key is required")
	}
	if err := checkNodeName(nodeName); err != nil {
		return nil, fmt.Errorf("pki: CSR: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: nodeName},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: der}), nil
}

// SignCSR issues a node certificate for the CSR. The CSR's signature must
// verify and its common name must be nodeName: the name comes from the join
// request the cluster already accepted, so a CSR naming someone else is a
// bug or an attack. Whatever SANs or extensions the CSR asks for are
// ignored; the certificate carries ips (the node's mesh IP) and the DNS
// name nodeName, and is good for both TLS server and client use. The
// certificate never outlives the CA.
//
// serial is the certificate's serial number in the form SerialOf returns,
// for recording in the cluster state.
func (ca *CA) SignCSR(csrPEM []byte, nodeName string, ips []netip.Addr, validity time.Duration) (certPEM []byte, serial string, err error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, "", errors.New("pki: sign CSR: CA certificate and key are required")
	}
	if err := checkNodeName(nodeName); err != nil {
		return nil, "", fmt.Errorf("pki: sign CSR: %w", err)
	}
	if validity <= 0 {
		return nil, "", fmt.Errorf("pki: sign CSR: validity must be positive, got %v", validity)
	}
	netIPs := make([]net.IP, 0, len(ips))
	for _, ip := range ips {
		if !ip.IsValid() {
			return nil, "", errors.New("pki: sign CSR: invalid IP address in SANs")
		}
		netIPs = append(netIPs, net.IP(ip.Unmap().AsSlice()))
	}

	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, "", errors.New("pki: sign CSR: no PEM block found")
	}
	// "NEW CERTIFICATE REQUEST" is what older openssl versions write.
	if block.Type != pemCSR && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, "", fmt.Errorf("pki: sign CSR: unexpected PEM block type %q", block.Type)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("pki: sign CSR: parse: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", fmt.Errorf("pki: sign CSR: bad signature: %w", err)
	}
	if csr.Subject.CommonName != nodeName {
		return nil, "", fmt.Errorf("pki: sign CSR: common name %q does not match node name %q", csr.Subject.CommonName, nodeName)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, "", fmt.Errorf("pki: sign CSR: %w", err)
	}

	sn, err := RandomSerial()
	if err != nil {
		return nil, "", err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: nodeName, Organization: ca.Cert.Subject.Organization},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		DNSNames:              []string{nodeName},
		IPAddresses:           netIPs,
	}
	if _, isRSA := csr.PublicKey.(*rsa.PublicKey); isRSA {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, "", fmt.Errorf("pki: sign CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: der}), formatSerial(sn), nil
}

// RandomSerial returns a random positive 128-bit serial number. Serials must
// be unique per CA and are how the cluster state names a certificate, so
// they come from crypto/rand rather than a counter that several members
// would have to agree on.
func RandomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("pki: serial: %w", err)
		}
		if n.Sign() > 0 { // RFC 5280 wants positive serials
			return n, nil
		}
	}
}

// formatSerial zero-pads to 32 hex digits so that a serial's text does not
// depend on its leading bits.
func formatSerial(n *big.Int) string {
	return fmt.Sprintf("%032x", n)
}

// checkNodeName accepts names that are valid as a DNS SAN: the certificate
// carries the node name as one, and peers may verify against it.
func checkNodeName(name string) error {
	if name == "" {
		return errors.New("node name is required")
	}
	if len(name) > maxNodeName {
		return fmt.Errorf("node name is longer than %d bytes", maxNodeName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-' || c == '.':
			if i == 0 || i == len(name)-1 {
				return fmt.Errorf("node name %q must start and end with a letter or digit", name)
			}
		default:
			return fmt.Errorf("node name %q may contain only letters, digits, '-' and '.'", name)
		}
	}
	return nil
}

// checkPublicKey refuses keys too weak (or too exotic) to put in a node
// certificate.
func checkPublicKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too small", k.N.BitLen())
		}
	default:
		return fmt.Errorf("unsupported public key type %T", pub)
	}
	return nil
}

// PublicKeysEqual reports whether a and b are the same public key.
func PublicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

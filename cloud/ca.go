package cloud

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/runos/runos-agent/pki"
)

// The cloud has its own CA: it signs the server certificate (registration
// pins the CA's fingerprint, carried in the token) and every cluster's client
// certificate, whose common name is the cloud cluster ID.

const clientCertValidity = 5 * 365 * 24 * time.Hour

func (s *Server) loadOrCreateCA() error {
	return s.store.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bMeta)
		certPEM, keyPEM := meta.Get([]byte("ca_cert")), meta.Get([]byte("ca_key"))
		if certPEM == nil {
			ca, err := pki.NewCA("runos-cloud")
			if err != nil {
				return err
			}
			certPEM, keyPEM = ca.CertPEM, ca.KeyPEM
			key, kp, err := pki.NewKey()
			if err != nil {
				return err
			}
			csr, err := pki.NewCSR(key, "runos-cloud")
			if err != nil {
				return err
			}
			srv, _, err := ca.SignCSR(csr, "runos-cloud", []netip.Addr{netip.MustParseAddr("127.0.0.1")}, 10*365*24*time.Hour)
			if err != nil {
				return err
			}
			for k, v := range map[string][]byte{"ca_cert": certPEM, "ca_key": keyPEM, "srv_cert": srv, "srv_key": kp} {
				if err := meta.Put([]byte(k), v); err != nil {
					return err
				}
			}
		}
		ca, err := pki.ParseCA(certPEM, keyPEM)
		if err != nil {
			return fmt.Errorf("cloud CA: %w", err)
		}
		s.ca = ca
		srvCert, err := tls.X509KeyPair(meta.Get([]byte("srv_cert")), meta.Get([]byte("srv_key")))
		if err != nil {
			return fmt.Errorf("cloud server certificate: %w", err)
		}
		// The chain carries the CA so a client that pins its fingerprint
		// finds it (pki.PinnedClientConfig).
		srvCert.Certificate = append(srvCert.Certificate, ca.Cert.Raw)
		s.srvCert = srvCert
		return nil
	})
}

// Fingerprint is the cloud CA's fingerprint, which tokens carry.
func (s *Server) Fingerprint() string { return pki.Fingerprint(s.ca.Cert) }

// signClient issues a cluster's client certificate from its CSR. Only the
// CSR's key is used: the name is the cloud cluster ID.
func (s *Server) signClient(csrPEM []byte, clusterID string) (certPEM []byte, serial, fingerprint string, err error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, "", "", errors.New("CSR: no PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, "", "", fmt.Errorf("CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", "", fmt.Errorf("CSR: bad signature: %w", err)
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, "", "", err
	}
	now := time.Now()
	notAfter := now.Add(clientCertValidity)
	if notAfter.After(s.ca.Cert.NotAfter) {
		notAfter = s.ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn.Add(sn, big.NewInt(1)),
		Subject:               pkix.Name{CommonName: clusterID, Organization: []string{"runos-cloud"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca.Cert, csr.PublicKey, s.ca.Key)
	if err != nil {
		return nil, "", "", err
	}
	cert, _ := x509.ParseCertificate(der)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pki.SerialOf(cert), pki.Fingerprint(cert), nil
}

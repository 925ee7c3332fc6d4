package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var meshIP = netip.MustParseAddr("172.24.0.7")

func newTestCA(t testing.TB, id string) *CA {
	t.Helper()
	ca, err := NewCA(id)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue creates a key and a certificate signed by ca for name.
func issue(t testing.TB, ca *CA, name string, ips ...netip.Addr) (certPEM, keyPEM []byte) {
	t.Helper()
	key, keyPEM, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(key, name)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err = ca.SignCSR(csr, name, ips, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
}

func mustParseCert(t testing.TB, p []byte) *x509.Certificate {
	t.Helper()
	c, err := ParseCert(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewCA(t *testing.T) {
	ca := newTestCA(t, "c-123")
	if got, want := ca.Cert.Subject.CommonName, "runos cluster c-123"; got != want {
		t.Errorf("CN = %q, want %q", got, want)
	}
	if !ca.Cert.IsCA || !ca.Cert.MaxPathLenZero {
		t.Errorf("IsCA=%v MaxPathLenZero=%v, want both", ca.Cert.IsCA, ca.Cert.MaxPathLenZero)
	}
	if life := ca.Cert.NotAfter.Sub(time.Now()); life < 9*365*24*time.Hour || life > 11*365*24*time.Hour {
		t.Errorf("CA validity %v, want about 10 years", life)
	}
	if pub, ok := ca.Cert.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key %T, want ECDSA P-256", ca.Cert.PublicKey)
	}
	if _, err := NewCA(""); err == nil {
		t.Error("NewCA(\"\") succeeded")
	}

	fp := Fingerprint(ca.Cert)
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(fp) {
		t.Errorf("Fingerprint = %q, want 64 lowercase hex digits", fp)
	}
}

func TestParseCA(t *testing.T) {
	ca := newTestCA(t, "a")
	other := newTestCA(t, "b")
	got, err := ParseCA(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Cert.Equal(ca.Cert) || !bytes.Equal(got.KeyPEM, ca.KeyPEM) {
		t.Error("ParseCA did not round-trip")
	}
	// The parsed CA must still sign.
	issue(t, got, "n1", meshIP)

	leafPEM, leafKey := issue(t, ca, "n1", meshIP)
	for _, tc := range []struct {
		name          string
		cert, key     []byte
		wantErrSubstr string
	}{
		{"key of another CA", ca.CertPEM, other.KeyPEM, "does not match"},
		{"leaf is not a CA", leafPEM, leafKey, "is not a CA"},
		{"garbage cert", []byte("nope"), ca.KeyPEM, "no PEM block"},
		{"garbage key", ca.CertPEM, []byte("nope"), "no PEM block"},
		{"key given as cert", ca.KeyPEM, ca.KeyPEM, "unexpected PEM block type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCA(tc.cert, tc.key)
			if err == nil || !strings.Contains(err.Error(), tc.wantErrSubstr) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErrSubstr)
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	key, keyPEM, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(got.Public()) {
		t.Error("ParseKey(NewKey) returned another key")
	}

	sec1, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ParseKey(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})); err != nil || !key.PublicKey.Equal(got.Public()) {
		t.Errorf("SEC 1 key: %v", err)
	}

	for _, bad := range [][]byte{nil, []byte("garbage"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) succeeded", bad)
		}
	}
}

func TestSignCSR(t *testing.T) {
	ca := newTestCA(t, "c")
	key, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(key, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	ips := []netip.Addr{meshIP, netip.MustParseAddr("::ffff:172.24.0.8")}
	certPEM, serial, err := ca.SignCSR(csr, "node-1", ips, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := mustParseCert(t, certPEM)

	if got := SerialOf(cert); got != serial {
		t.Errorf("SerialOf = %q, SignCSR returned %q", got, serial)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(serial) {
		t.Errorf("serial %q, want 32 lowercase hex digits", serial)
	}
	if cert.Subject.CommonName != "node-1" || !slices.Equal(cert.DNSNames, []string{"node-1"}) {
		t.Errorf("CN %q DNSNames %q, want node-1", cert.Subject.CommonName, cert.DNSNames)
	}
	var gotIPs []string
	for _, ip := range cert.IPAddresses {
		gotIPs = append(gotIPs, ip.String())
	}
	if want := []string{"172.24.0.7", "172.24.0.8"}; !slices.Equal(gotIPs, want) {
		t.Errorf("IP SANs %q, want %q", gotIPs, want)
	}
	if cert.IsCA {
		t.Error("leaf is a CA")
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Error("certificate is not for the CSR's key")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "node-1", KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
			t.Errorf("verify for EKU %v: %v", eku, err)
		}
	}

	// Two certificates never share a serial.
	_, serial2, err := ca.SignCSR(csr, "node-1", ips, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if serial2 == serial {
		t.Error("two certificates got the same serial")
	}

	// A certificate never outlives its CA.
	long, _, err := ca.SignCSR(csr, "node-1", ips, 100*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if na := mustParseCert(t, long).NotAfter; na.After(ca.Cert.NotAfter) {
		t.Errorf("leaf NotAfter %v is after CA NotAfter %v", na, ca.Cert.NotAfter)
	}
}

func TestSignCSRRejects(t *testing.T) {
	ca := newTestCA(t, "c")
	key, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	good, err := NewCSR(key, "node-1")
	if err != nil {
		t.Fatal(err)
	}

	// A CSR whose signature does not cover its content: sign one name, then
	// swap the public key for another one.
	block, _ := pem.Decode(good)
	parsed, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	otherPub, err := x509.MarshalPKIXPublicKey(&other.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	oldPub, err := x509.MarshalPKIXPublicKey(parsed.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	tampered := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: bytes.Replace(block.Bytes, oldPub, otherPub, 1)})

	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edCSR, err := NewCSR(edKey, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	weak, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	weakDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "node-1"}}, weak)
	if err != nil {
		t.Fatal(err)
	}
	weakCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: weakDER})

	for _, tc := range []struct {
		name     string
		csr      []byte
		node     string
		ips      []netip.Addr
		validity time.Duration
		wantErr  string // substring; empty means success
	}{
		{"ok", good, "node-1", []netip.Addr{meshIP}, time.Hour, ""},
		{"ed25519 key ok", edCSR, "node-1", []netip.Addr{meshIP}, time.Hour, ""},
		{"mismatched CN", good, "node-2", []netip.Addr{meshIP}, time.Hour, `common name "node-1" does not match node name "node-2"`},
		{"garbage", []byte("definitely not PEM"), "node-1", nil, time.Hour, "no PEM block found"},
		{"empty", nil, "node-1", nil, time.Hour, "no PEM block found"},
		{"wrong PEM type", ca.CertPEM, "node-1", nil, time.Hour, `unexpected PEM block type "CERTIFICATE"`},
		{"garbage DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("junk")}), "node-1", nil, time.Hour, "sign CSR: parse:"},
		{"bad signature", tampered, "node-1", nil, time.Hour, "bad signature"},
		{"weak curve", weakCSR, "node-1", nil, time.Hour, "unsupported ECDSA curve"},
		{"empty node name", good, "", nil, time.Hour, "node name is required"},
		{"node name not DNS-safe", good, "node 1", nil, time.Hour, "may contain only"},
		{"zero validity", good, "node-1", nil, 0, "validity must be positive"},
		{"invalid IP", good, "node-1", []netip.Addr{{}}, time.Hour, "invalid IP address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ca.SignCSR(tc.csr, tc.node, tc.ips, tc.validity)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// FuzzSignCSR feeds arbitrary bytes to the parts of the CA that read what a
// joiner sends: garbage must produce an error, never a panic.
func FuzzSignCSR(f *testing.F) {
	ca := newTestCA(f, "fuzz")
	key, keyPEM, err := NewKey()
	if err != nil {
		f.Fatal(err)
	}
	csr, err := NewCSR(key, "node-1")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csr)
	f.Add(keyPEM)
	f.Add(ca.CertPEM)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{})
	block, _ := pem.Decode(csr)
	f.Add(block.Bytes) // raw DER: wrapped below as well

	ips := []netip.Addr{meshIP}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, in := range [][]byte{data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: data})} {
			certPEM, serial, err := ca.SignCSR(in, "node-1", ips, time.Hour)
			if err == nil {
				// Anything accepted must be a proper node-1 certificate.
				cert := mustParseCert(t, certPEM)
				if cert.Subject.CommonName != "node-1" || SerialOf(cert) != serial {
					t.Fatalf("accepted CSR yields CN %q serial %q", cert.Subject.CommonName, serial)
				}
			}
			_, _ = ParseKey(in)
			_, _ = ParseCA(in, in)
		}
	})
}

// FuzzParseKey checks that ParseKey never panics on PEM-wrapped garbage of
// every block type it accepts.
func FuzzParseKey(f *testing.F) {
	_, keyPEM, err := NewKey()
	if err != nil {
		f.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	f.Add(block.Bytes)
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		for _, typ := range []string{"PRIVATE KEY", "EC PRIVATE KEY"} {
			k, err := ParseKey(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
			if err == nil && k == nil {
				t.Fatal("nil key without error")
			}
		}
	})
}

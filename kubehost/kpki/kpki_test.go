package kpki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/util/keyutil"

	"github.com/runos/runos-agent/kubehost/kpki"
)

var (
	meshIP    = netip.MustParseAddr("172.24.0.7")
	serviceIP = netip.MustParseAddr("10.96.0.1")
)

// cas is the pair every node holds: the Kubernetes CA and the etcd CA.
type cas struct{ kube, etcd *kpki.CA }

func newCAs(t testing.TB) cas {
	t.Helper()
	k, err := kpki.NewCA("kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	e, err := kpki.NewCA("etcd-ca")
	if err != nil {
		t.Fatal(err)
	}
	return cas{kube: k, etcd: e}
}

func parseCert(t testing.TB, certPEM []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", certPEM)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pool(ca *kpki.CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func issue(t testing.TB, ca *kpki.CA, r kpki.Request) (*x509.Certificate, []byte, []byte) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(r)
	if err != nil {
		t.Fatalf("Issue(%s): %v", r.CommonName, err)
	}
	return parseCert(t, certPEM), certPEM, keyPEM
}

func TestCA(t *testing.T) {
	c := newCAs(t)
	ca := c.kube.Cert
	if !ca.IsCA || !ca.BasicConstraintsValid || ca.MaxPathLen != 0 || !ca.MaxPathLenZero {
		t.Errorf("CA constraints: IsCA=%v MaxPathLen=%d zero=%v", ca.IsCA, ca.MaxPathLen, ca.MaxPathLenZero)
	}
	if ca.KeyUsage&x509.KeyUsageCertSign == 0 || ca.KeyUsage&x509.KeyUsageCRLSign == 0 {
		t.Errorf("CA key usage %b lacks CertSign|CRLSign", ca.KeyUsage)
	}
	if got := time.Until(ca.NotAfter); got < 9*365*24*time.Hour {
		t.Errorf("CA valid for only %v", got)
	}
	if ca.Subject.CommonName != "kubernetes" {
		t.Errorf("CA CN %q", ca.Subject.CommonName)
	}
	if _, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("CA key is %T, want ECDSA", ca.PublicKey)
	}
	if _, err := kpki.NewCA(""); err == nil {
		t.Error("NewCA with empty name succeeded")
	}
}

func TestParseCARoundTrip(t *testing.T) {
	c := newCAs(t)
	parsed, err := kpki.ParseCA(c.kube.CertPEM, c.kube.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !parsed.Cert.Equal(c.kube.Cert) {
		t.Fatal("parsed CA certificate differs")
	}
	// A CA loaded from the Raft state must sign leaves the original's
	// trust bundle accepts (every node loads it and signs its own).
	leaf, _, _ := issue(t, parsed, kpki.KubeletClient("n1"))
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool(c.kube), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("leaf signed by the parsed CA: %v", err)
	}

	_, leafPEM, leafKey := issue(t, c.kube, kpki.Admin("a"))
	for name, in := range map[string][2][]byte{
		"key of the other CA": {c.kube.CertPEM, c.etcd.KeyPEM},
		"leaf as CA":          {leafPEM, leafKey},
		"garbage cert":        {[]byte("nope"), c.kube.KeyPEM},
		"garbage key":         {c.kube.CertPEM, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")},
		"key as cert":         {c.kube.KeyPEM, c.kube.KeyPEM},
	} {
		if _, err := kpki.ParseCA(in[0], in[1]); err == nil {
			t.Errorf("ParseCA(%s) succeeded", name)
		}
	}
}

type role struct {
	name     string
	ca       func(cas) *kpki.CA
	req      kpki.Request
	cn       string
	org      []string
	server   bool
	client   bool
	dnsNames []string
	ips      []string
}

func kubeCA(c cas) *kpki.CA { return c.kube }
func etcdCA(c cas) *kpki.CA { return c.etcd }

func roles() []role {
	return []role{
		{name: "apiserver serving", ca: kubeCA, req: kpki.APIServerServing(meshIP, serviceIP, "cluster.local"),
			cn: "kube-apiserver", server: true,
			dnsNames: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
			ips:      []string{"172.24.0.7", "127.0.0.1", "10.96.0.1"}},
		{name: "apiserver kubelet client", ca: kubeCA, req: kpki.APIServerKubeletClient(),
			cn: "kube-apiserver-kubelet-client", org: []string{"system:masters"}, client: true},
		{name: "apiserver etcd client", ca: etcdCA, req: kpki.APIServerEtcdClient(),
			cn: "kube-apiserver-etcd-client", client: true},
		{name: "etcd server", ca: etcdCA, req: kpki.EtcdServer("n1", meshIP),
			cn: "n1", server: true, client: true, dnsNames: []string{"localhost", "n1"}, ips: []string{"172.24.0.7", "127.0.0.1"}},
		{name: "etcd peer", ca: etcdCA, req: kpki.EtcdPeer("n1", meshIP),
			cn: "n1", server: true, client: true, ips: []string{"172.24.0.7", "127.0.0.1"}},
		{name: "etcd agent client", ca: etcdCA, req: kpki.EtcdAgentClient(), cn: "runos-agent", client: true},
		{name: "kubelet client", ca: kubeCA, req: kpki.KubeletClient("n1"),
			cn: "system:node:n1", org: []string{"system:nodes"}, client: true},
		{name: "kubelet serving", ca: kubeCA, req: kpki.KubeletServing("n1", meshIP),
			cn: "n1", server: true, dnsNames: []string{"n1"}, ips: []string{"172.24.0.7"}},
		{name: "controller-manager", ca: kubeCA, req: kpki.ControllerManager(), cn: "system:kube-controller-manager", client: true},
		{name: "scheduler", ca: kubeCA, req: kpki.Scheduler(), cn: "system:kube-scheduler", client: true},
		{name: "kube-proxy", ca: kubeCA, req: kpki.KubeProxy(), cn: "system:kube-proxy", org: []string{"system:node-proxier"}, client: true},
		{name: "admin", ca: kubeCA, req: kpki.Admin("alice"), cn: "alice", org: []string{"system:masters"}, client: true},
	}
}

func TestRoles(t *testing.T) {
	c := newCAs(t)
	for _, r := range roles() {
		t.Run(r.name, func(t *testing.T) {
			ca := r.ca(c)
			other := c.kube
			if ca == c.kube {
				other = c.etcd
			}
			cert, certPEM, keyPEM := issue(t, ca, r.req)

			if cert.Subject.CommonName != r.cn {
				t.Errorf("CN = %q, want %q", cert.Subject.CommonName, r.cn)
			}
			if !slices.Equal(cert.Subject.Organization, r.org) {
				t.Errorf("O = %q, want %q", cert.Subject.Organization, r.org)
			}
			if cert.IsCA {
				t.Error("leaf is a CA")
			}
			if cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 || cert.KeyUsage&x509.KeyUsageCertSign != 0 {
				t.Errorf("leaf key usage %b", cert.KeyUsage)
			}
			if skew := time.Until(cert.NotBefore); skew > -50*time.Minute {
				t.Errorf("NotBefore only %v in the past; clock skew between nodes would reject it", -skew)
			}
			if life := time.Until(cert.NotAfter); life < 364*24*time.Hour || life > 366*24*time.Hour {
				t.Errorf("valid for %v, want a year", life)
			}
			if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %v is not a large random positive number", cert.SerialNumber)
			}

			// The pair must load the way every Go component (kubelet,
			// apiserver, etcd) loads it, and the key must be PKCS #8.
			if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
				t.Errorf("key pair does not load: %v", err)
			}
			if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
				t.Errorf("key PEM is not PKCS #8")
			}

			for _, u := range []struct {
				eku  x509.ExtKeyUsage
				want bool
			}{{x509.ExtKeyUsageServerAuth, r.server}, {x509.ExtKeyUsageClientAuth, r.client}} {
				_, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{u.eku}})
				if (err == nil) != u.want {
					t.Errorf("verify for usage %v: err = %v, want ok=%v", u.eku, err, u.want)
				}
			}
			// The other CA must never accept it, for any usage.
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(other), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
				t.Errorf("verifies against the other CA %q", other.Cert.Subject.CommonName)
			}

			if !slices.Equal(cert.DNSNames, r.dnsNames) {
				t.Errorf("DNS SANs = %q, want %q", cert.DNSNames, r.dnsNames)
			}
			var ips []string
			for _, ip := range cert.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, r.ips) {
				t.Errorf("IP SANs = %q, want %q", ips, r.ips)
			}
			// Hostname verification as a TLS client does it, SAN by SAN.
			if r.server {
				for _, h := range slices.Concat(r.dnsNames, r.ips) {
					if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: h, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
						t.Errorf("does not verify for %q: %v", h, err)
					}
				}
				if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: "172.24.0.8"}); err == nil {
					t.Error("verifies for another node's mesh IP")
				}
			}
			if kpki.NeedsReissue(certPEM, ca.Cert, r.req) {
				t.Error("NeedsReissue is true for the fresh certificate")
			}
		})
	}
}

func TestAPIServerServingDomain(t *testing.T) {
	for _, d := range []string{"", "cluster.local."} {
		r := kpki.APIServerServing(meshIP, serviceIP, d)
		if !slices.Contains(r.DNSNames, "kubernetes.default.svc.cluster.local") {
			t.Errorf("domain %q: DNS names %q", d, r.DNSNames)
		}
	}
	r := kpki.APIServerServing(meshIP, serviceIP, "k.example")
	if !slices.Contains(r.DNSNames, "kubernetes.default.svc.k.example") {
		t.Errorf("custom domain: DNS names %q", r.DNSNames)
	}
	// A single-machine cluster on loopback: no duplicate SAN.
	r = kpki.APIServerServing(netip.MustParseAddr("127.0.0.1"), serviceIP, "")
	if len(r.IPs) != 2 {
		t.Errorf("loopback mesh IP: IPs %v", r.IPs)
	}
}

func TestIssueRejects(t *testing.T) {
	c := newCAs(t)
	for name, r := range map[string]kpki.Request{
		"no CN":           {Client: true},
		"no usage":        {CommonName: "x"},
		"negative":        {CommonName: "x", Client: true, Validity: -time.Hour},
		"invalid IP":      {CommonName: "x", Server: true, IPs: []netip.Addr{{}}},
		"empty DNS name":  {CommonName: "x", Server: true, DNSNames: []string{""}},
		"zero mesh IP":    kpki.KubeletServing("n1", netip.Addr{}),
		"empty node name": kpki.EtcdServer("", meshIP),
	} {
		if _, _, err := c.kube.Issue(r); err == nil {
			t.Errorf("Issue(%s) succeeded", name)
		}
	}
	if _, _, err := (&kpki.CA{}).Issue(kpki.Admin("a")); err == nil {
		t.Error("Issue with an empty CA succeeded")
	}
	// Never outlives the CA.
	cert, _, _ := issue(t, c.kube, kpki.Request{CommonName: "x", Client: true, Validity: 20 * 365 * 24 * time.Hour})
	if cert.NotAfter.After(c.kube.Cert.NotAfter) {
		t.Errorf("leaf NotAfter %v after CA's %v", cert.NotAfter, c.kube.Cert.NotAfter)
	}
}

func TestNeedsReissue(t *testing.T) {
	c := newCAs(t)
	req := kpki.APIServerServing(meshIP, serviceIP, "cluster.local")
	_, fresh, _ := issue(t, c.kube, req)
	_, otherCA, _ := issue(t, c.etcd, req)
	short := req
	short.Validity = 29 * 24 * time.Hour
	_, nearExpiry, _ := issue(t, c.kube, short)
	_, clientOnly, _ := issue(t, c.kube, kpki.Request{CommonName: req.CommonName, DNSNames: req.DNSNames, IPs: req.IPs, Client: true})
	_, kubeletPEM, _ := issue(t, c.kube, kpki.KubeletClient("n1"))

	movedNode := kpki.APIServerServing(netip.MustParseAddr("172.24.0.9"), serviceIP, "cluster.local")
	otherDomain := kpki.APIServerServing(meshIP, serviceIP, "k.example")

	for _, tc := range []struct {
		name string
		cert []byte
		ca   *x509.Certificate
		req  kpki.Request
		want bool
	}{
		{"fresh", fresh, c.kube.Cert, req, false},
		{"missing", nil, c.kube.Cert, req, true},
		{"garbage", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), c.kube.Cert, req, true},
		{"not PEM", []byte("hello"), c.kube.Cert, req, true},
		{"other CA", otherCA, c.kube.Cert, req, true},
		{"no CA", fresh, nil, req, true},
		{"near expiry", nearExpiry, c.kube.Cert, req, true},
		{"missing IP SAN", fresh, c.kube.Cert, movedNode, true},
		{"missing DNS SAN", fresh, c.kube.Cert, otherDomain, true},
		{"missing usage", clientOnly, c.kube.Cert, req, true},
		{"renamed node", kubeletPEM, c.kube.Cert, kpki.KubeletClient("n2"), true},
		{"other groups", kubeletPEM, c.kube.Cert, kpki.Request{CommonName: "system:node:n1", Client: true}, true},
		{"same kubelet", kubeletPEM, c.kube.Cert, kpki.KubeletClient("n1"), false},
		{"CA key as cert", c.kube.KeyPEM, c.kube.Cert, req, true},
	} {
		if got := kpki.NeedsReissue(tc.cert, tc.ca, tc.req); got != tc.want {
			t.Errorf("%s: NeedsReissue = %v, want %v", tc.name, got, tc.want)
		}
	}

	// A short-lived request is not re-issued at once just because its
	// whole life is shorter than RenewBefore.
	hour := kpki.Request{CommonName: "x", Client: true, Validity: 3 * time.Hour}
	_, hourPEM, _ := issue(t, c.kube, hour)
	if kpki.NeedsReissue(hourPEM, c.kube.Cert, hour) {
		t.Error("fresh 3 h certificate needs reissue")
	}
}

func TestServiceAccountKey(t *testing.T) {
	keyPEM, pubPEM, err := kpki.NewServiceAccountKey()
	if err != nil {
		t.Fatal(err)
	}
	derived, err := kpki.ServiceAccountPublic(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if string(derived) != string(pubPEM) {
		t.Fatalf("derived public key differs:\n%s\n%s", derived, pubPEM)
	}
	// Parse them the way kube-apiserver does (--service-account-signing-key-file,
	// --service-account-key-file), then sign and verify a token digest.
	priv, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		t.Fatalf("apiserver would not load the signing key: %v", err)
	}
	pubs, err := keyutil.ParsePublicKeysPEM(pubPEM)
	if err != nil || len(pubs) != 1 {
		t.Fatalf("apiserver would not load the public key: %v (%d keys)", err, len(pubs))
	}
	ecPriv, ok := priv.(*ecdsa.PrivateKey)
	if !ok || ecPriv.Curve.Params().Name != "P-256" {
		t.Fatalf("signing key is %T, want ECDSA P-256 (ES256)", priv)
	}
	digest := sha256.Sum256([]byte("header.payload"))
	sig, err := ecPriv.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pubs[0].(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatal("signature does not verify with the public key")
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Error("SA key is not PKCS #8")
	}
	if b, _ := pem.Decode(pubPEM); b == nil || b.Type != "PUBLIC KEY" {
		t.Error("SA public key is not PKIX")
	}
	if _, err := kpki.ServiceAccountPublic([]byte("junk")); err == nil {
		t.Error("ServiceAccountPublic(junk) succeeded")
	}
	other, _, _ := kpki.NewServiceAccountKey()
	if string(other) == string(keyPEM) {
		t.Error("two SA keys are equal")
	}
}

// handshake runs a real mutual-TLS handshake over a loopback TCP
// connection and returns the client's and the server's errors, and the
// client certificate the server saw.
func handshake(t *testing.T, serverPair tls.Certificate, clientCAs *x509.CertPool, clientPair tls.Certificate, rootCAs *x509.CertPool, serverName string) (clientErr, serverErr error, peer *x509.Certificate) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	type result struct {
		err  error
		peer *x509.Certificate
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		srv := tls.Server(conn, &tls.Config{
			Certificates: []tls.Certificate{serverPair},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    clientCAs,
		})
		if err := srv.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		// A byte each way proves the session works (and, in TLS 1.3,
		// that the client learnt the server accepted its certificate).
		if _, err := srv.Write([]byte{1}); err != nil {
			done <- result{err: err}
			return
		}
		var b [1]byte
		_, err = srv.Read(b[:])
		done <- result{err: err, peer: srv.ConnectionState().PeerCertificates[0]}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	cl := tls.Client(conn, &tls.Config{
		Certificates: []tls.Certificate{clientPair},
		RootCAs:      rootCAs,
		ServerName:   serverName,
	})
	clientErr = cl.Handshake()
	if clientErr == nil {
		var b [1]byte
		if _, clientErr = cl.Read(b[:]); clientErr == nil {
			_, clientErr = cl.Write([]byte{2})
		}
	}
	cl.Close()
	conn.Close()
	r := <-done
	return clientErr, r.err, r.peer
}

func pair(t *testing.T, ca *kpki.CA, r kpki.Request) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	p, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A kubelet connecting to an apiserver: both sides verify the other
// against the Kubernetes CA, by every name a client uses.
func TestMutualTLSHandshake(t *testing.T) {
	c := newCAs(t)
	apiserver := pair(t, c.kube, kpki.APIServerServing(netip.MustParseAddr("127.0.0.1"), serviceIP, ""))
	kubelet := pair(t, c.kube, kpki.KubeletClient("n1"))

	for _, name := range []string{"127.0.0.1", "kubernetes.default.svc", "localhost"} {
		cerr, serr, peer := handshake(t, apiserver, pool(c.kube), kubelet, pool(c.kube), name)
		if cerr != nil || serr != nil {
			t.Fatalf("server name %q: client err %v, server err %v", name, cerr, serr)
		}
		if peer.Subject.CommonName != "system:node:n1" || !slices.Equal(peer.Subject.Organization, []string{"system:nodes"}) {
			t.Errorf("server saw %q %q", peer.Subject.CommonName, peer.Subject.Organization)
		}
	}

	// Wrong name: the client refuses the server.
	if cerr, _, _ := handshake(t, apiserver, pool(c.kube), kubelet, pool(c.kube), "etcd.example"); cerr == nil {
		t.Error("client accepted the apiserver under a name it does not carry")
	}
	// A client certificate from the etcd CA is refused by the apiserver.
	etcdClient := pair(t, c.etcd, kpki.EtcdAgentClient())
	if _, serr, _ := handshake(t, apiserver, pool(c.kube), etcdClient, pool(c.kube), "127.0.0.1"); serr == nil {
		t.Error("apiserver accepted an etcd-CA client certificate")
	}
	// A client trusting only the etcd CA refuses the apiserver.
	if cerr, _, _ := handshake(t, apiserver, pool(c.kube), kubelet, pool(c.etcd), "127.0.0.1"); cerr == nil {
		t.Error("etcd-CA-only client accepted the apiserver")
	}
	// A server-only certificate cannot be used as a client certificate.
	kubeletServing := pair(t, c.kube, kpki.KubeletServing("n1", meshIP))
	if _, serr, _ := handshake(t, apiserver, pool(c.kube), kubeletServing, pool(c.kube), "127.0.0.1"); serr == nil || !strings.Contains(serr.Error(), "usage") {
		t.Errorf("apiserver accepted a serving certificate as a client: %v", serr)
	}

	// etcd: the apiserver's etcd client against an etcd server cert.
	etcdServer := pair(t, c.etcd, kpki.EtcdServer("n1", netip.MustParseAddr("127.0.0.1")))
	apiEtcd := pair(t, c.etcd, kpki.APIServerEtcdClient())
	if cerr, serr, peer := handshake(t, etcdServer, pool(c.etcd), apiEtcd, pool(c.etcd), "127.0.0.1"); cerr != nil || serr != nil {
		t.Errorf("apiserver to etcd: client err %v, server err %v", cerr, serr)
	} else if peer.Subject.CommonName != "kube-apiserver-etcd-client" {
		t.Errorf("etcd saw %q", peer.Subject.CommonName)
	}
	// etcd refuses a kubelet certificate.
	if _, serr, _ := handshake(t, etcdServer, pool(c.etcd), kubelet, pool(c.etcd), "127.0.0.1"); serr == nil {
		t.Error("etcd accepted a kubelet certificate")
	}
}

func BenchmarkIssue(b *testing.B) {
	ca, err := kpki.NewCA("kubernetes")
	if err != nil {
		b.Fatal(err)
	}
	r := kpki.APIServerServing(meshIP, serviceIP, "cluster.local")
	for b.Loop() {
		if _, _, err := ca.Issue(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNeedsReissue(b *testing.B) {
	ca, err := kpki.NewCA("kubernetes")
	if err != nil {
		b.Fatal(err)
	}
	r := kpki.APIServerServing(meshIP, serviceIP, "cluster.local")
	certPEM, _, err := ca.Issue(r)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if kpki.NeedsReissue(certPEM, ca.Cert, r) {
			b.Fatal("fresh certificate needs reissue")
		}
	}
}

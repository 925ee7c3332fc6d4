package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// result is what each side of a handshake saw.
type result struct {
	serverErr, clientErr error
	serverPeer           string // CN of the client certificate the server saw
	clientPeer           string // CN of the server certificate the client saw
	resumed              bool   // the client resumed a session
}

// handshake runs a real TLS connection over 127.0.0.1 between server and
// client. Besides the handshake, the server writes one byte that the client
// reads: in TLS 1.3 the client finishes its handshake before the server has
// checked the client's certificate, and learns of a refusal only when it
// next reads.
func handshake(t *testing.T, server, client *tls.Config, serverName string) result {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var res result
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			res.serverErr = err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		if err := tc.HandshakeContext(ctx); err != nil {
			res.serverErr = err
			return
		}
		if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
			res.serverPeer = pc[0].Subject.CommonName
		}
		if _, err := tc.Write([]byte{1}); err != nil {
			res.serverErr = err
		}
	}()

	client = client.Clone()
	client.ServerName = serverName
	var d tls.Dialer
	d.Config = client
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		res.clientErr = err
	} else {
		tc := conn.(*tls.Conn)
		res.clientPeer = tc.ConnectionState().PeerCertificates[0].Subject.CommonName
		res.resumed = tc.ConnectionState().DidResume
		_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := tc.Read(make([]byte, 1)); err != nil {
			res.clientErr = err
		}
		conn.Close()
	}
	<-done
	return res
}

func TestPinnedClientConfig(t *testing.T) {
	ca := newTestCA(t, "right")
	wrong := newTestCA(t, "wrong")
	certPEM, keyPEM := issue(t, ca, "member-1", meshIP)
	server, err := ServerConfig(certPEM, keyPEM, ca.Cert)
	if err != nil {
		t.Fatal(err)
	}

	// An impostor with a certificate from its own CA who staples the real
	// (public) cluster CA certificate to its chain, hoping a fingerprint
	// check alone lets it through.
	fakeLeafPEM, fakeKeyPEM := issue(t, wrong, "member-1", meshIP)
	fakePair, err := tls.X509KeyPair(fakeLeafPEM, fakeKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	stapled := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{
		Certificate: [][]byte{fakePair.Certificate[0], ca.Cert.Raw},
		PrivateKey:  fakePair.PrivateKey,
	}}}
	otherCA, err := ServerConfig(fakeLeafPEM, fakeKeyPEM, wrong.Cert)
	if err != nil {
		t.Fatal(err)
	}

	fp := Fingerprint(ca.Cert)
	for _, tc := range []struct {
		name    string
		server  *tls.Config
		pin     string
		wantErr string // substring of the client's error; empty means success
		wantIs  error
	}{
		{"right fingerprint", server, fp, "", nil},
		{"fingerprint in upper case with colons", server, colonize(strings.ToUpper(fp)), "", nil},
		{"wrong fingerprint", server, Fingerprint(wrong.Cert),
			fmt.Sprintf("cluster CA fingerprint mismatch: got %s, want %s", fp, Fingerprint(wrong.Cert)), ErrFingerprintMismatch},
		{"server from another CA", otherCA, fp,
			fmt.Sprintf("cluster CA fingerprint mismatch: got %s, want %s", Fingerprint(wrong.Cert), fp), ErrFingerprintMismatch},
		{"leaf from another CA with the right CA stapled", stapled, fp, "does not verify against the pinned cluster CA", nil},
		{"malformed fingerprint", server, "abc", "invalid cluster CA fingerprint", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The joiner dials an underlay address no certificate names:
			// host names must not matter. It names the server by the SNI
			// the join endpoint requires (TestJoinServerNameGate); an
			// impostor's server would accept any.
			sni := JoinServerName(fp)
			if tc.server == otherCA {
				sni = JoinServerName(Fingerprint(wrong.Cert))
			}
			res := handshake(t, tc.server, PinnedClientConfig(tc.pin), sni)
			if tc.wantErr == "" {
				if res.clientErr != nil || res.serverErr != nil {
					t.Fatalf("client: %v; server: %v", res.clientErr, res.serverErr)
				}
				if res.clientPeer != "member-1" {
					t.Fatalf("client saw %q, want member-1", res.clientPeer)
				}
				return
			}
			if res.clientErr == nil || !strings.Contains(res.clientErr.Error(), tc.wantErr) {
				t.Fatalf("client err = %v, want it to contain %q", res.clientErr, tc.wantErr)
			}
			if tc.wantIs != nil && !errors.Is(res.clientErr, tc.wantIs) {
				t.Fatalf("client err = %v, want errors.Is %v", res.clientErr, tc.wantIs)
			}
			if res.serverErr == nil {
				t.Fatal("server handshake succeeded although the client refused")
			}
		})
	}
}

func colonize(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(s[i : i+2])
	}
	return b.String()
}

func TestServerConfigRejectsForeignCert(t *testing.T) {
	ca := newTestCA(t, "a")
	other := newTestCA(t, "b")
	certPEM, keyPEM := issue(t, other, "n1", meshIP)
	if _, err := ServerConfig(certPEM, keyPEM, ca.Cert); err == nil || !strings.Contains(err.Error(), "not signed by the cluster CA") {
		t.Fatalf("err = %v, want a not-signed error", err)
	}
	if _, _, err := MutualConfig(certPEM, keyPEM, ca.Cert, nil); err == nil {
		t.Fatal("MutualConfig accepted a certificate from another CA")
	}
	_, otherKey := issue(t, ca, "n1", meshIP)
	if _, err := ServerConfig(certPEM, otherKey, other.Cert); err == nil {
		t.Fatal("ServerConfig accepted a key that does not match the certificate")
	}
	if _, err := ServerConfig(certPEM, keyPEM, nil); err == nil {
		t.Fatal("ServerConfig accepted a nil CA")
	}
}

func TestMutualConfig(t *testing.T) {
	ca := newTestCA(t, "c")
	other := newTestCA(t, "other")
	serverIP := meshIP
	sCert, sKey := issue(t, ca, "server", serverIP)
	cCert, cKey := issue(t, ca, "client", netip172(9))
	revoked := SerialOf(mustParseCert(t, cCert))
	fCert, fKey := issue(t, other, "client", netip172(9)) // right name, wrong CA
	fsCert, fsKey := issue(t, other, "server", serverIP)

	// allowAll and denyRevoked stand in for the cluster state lookup.
	denyRevoked := func(leaf *x509.Certificate) error {
		if SerialOf(leaf) == revoked {
			return errors.New("node removed from the cluster")
		}
		return nil
	}
	denyServer := func(leaf *x509.Certificate) error {
		if leaf.Subject.CommonName == "server" {
			return errors.New("node removed from the cluster")
		}
		return nil
	}
	foreignConfigs := func(certPEM, keyPEM []byte) (*tls.Config, *tls.Config) {
		// A node of another cluster: it trusts its own CA and presents its
		// own certificate.
		s, c, err := MutualConfig(certPEM, keyPEM, other.Cert, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s, c
	}

	mustMutual := func(certPEM, keyPEM []byte, allow func(*x509.Certificate) error) (*tls.Config, *tls.Config) {
		s, c, err := MutualConfig(certPEM, keyPEM, ca.Cert, allow)
		if err != nil {
			t.Fatal(err)
		}
		return s, c
	}

	goodServer, _ := mustMutual(sCert, sKey, nil)
	_, goodClient := mustMutual(cCert, cKey, nil)
	revokingServer, _ := mustMutual(sCert, sKey, denyRevoked)
	_, distrustingClient := mustMutual(cCert, cKey, denyServer)
	_, foreignClient := foreignConfigs(fCert, fKey)
	foreignServer, _ := foreignConfigs(fsCert, fsKey)
	// A client that trusts our CA but holds a certificate from another one.
	// Go's client leaves out a certificate whose issuer the server did not
	// ask for, so hand it over unconditionally as an attacker would.
	mixedClient := goodClient.Clone()
	mixedPair, err := tls.X509KeyPair(fCert, fKey)
	if err != nil {
		t.Fatal(err)
	}
	mixedClient.Certificates = nil
	mixedClient.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &mixedPair, nil }
	// A client with no certificate at all.
	anonClient := goodClient.Clone()
	anonClient.Certificates = nil

	for _, tc := range []struct {
		name          string
		server        *tls.Config
		client        *tls.Config
		serverName    string
		wantServerErr string
		wantClientErr string
	}{
		{name: "both in the cluster", server: goodServer, client: goodClient, serverName: serverIP.String()},
		{name: "server by node name", server: goodServer, client: goodClient, serverName: "server"},
		{name: "allow refuses the client", server: revokingServer, client: goodClient, serverName: serverIP.String(),
			wantServerErr: `peer certificate "client" (serial ` + revoked + `) refused: node removed from the cluster`, wantClientErr: "bad certificate"},
		{name: "allow refuses the server", server: goodServer, client: distrustingClient, serverName: serverIP.String(),
			wantServerErr: "", wantClientErr: `peer certificate "server"`},
		{name: "client cert from another CA", server: goodServer, client: mixedClient, serverName: serverIP.String(),
			wantServerErr: "unknown authority", wantClientErr: "unknown certificate authority"},
		{name: "client of another cluster", server: goodServer, client: foreignClient, serverName: serverIP.String(),
			wantClientErr: "unknown authority"},
		{name: "server of another cluster", server: foreignServer, client: goodClient, serverName: serverIP.String(),
			wantClientErr: "unknown authority"},
		{name: "client without certificate", server: goodServer, client: anonClient, serverName: serverIP.String(),
			wantServerErr: "didn't provide a certificate", wantClientErr: "certificate required"},
		{name: "server name not in certificate", server: goodServer, client: goodClient, serverName: "172.24.0.99",
			wantClientErr: "172.24.0.99"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := handshake(t, tc.server, tc.client, tc.serverName)
			check := func(side string, err error, want string) {
				t.Helper()
				if want == "" {
					if err != nil && (tc.wantClientErr == "" && tc.wantServerErr == "") {
						t.Errorf("%s: unexpected error %v", side, err)
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("%s err = %v, want it to contain %q", side, err, want)
				}
			}
			check("server", res.serverErr, tc.wantServerErr)
			check("client", res.clientErr, tc.wantClientErr)
			if tc.wantClientErr == "" && tc.wantServerErr == "" {
				if res.serverPeer != "client" || res.clientPeer != "server" {
					t.Errorf("server saw %q, client saw %q", res.serverPeer, res.clientPeer)
				}
			}
			if (tc.wantClientErr != "" || tc.wantServerErr != "") && res.clientErr == nil {
				t.Error("client connection worked although the handshake must fail")
			}
		})
	}
}

func netip172(last byte) netip.Addr { return netip.AddrFrom4([4]byte{172, 24, 0, last}) }

// TestMutualConfigResumption checks that removing a node takes effect on
// resumed TLS sessions too, which skip chain verification.
func TestMutualConfigResumption(t *testing.T) {
	ca := newTestCA(t, "c")
	sCert, sKey := issue(t, ca, "server", meshIP)
	cCert, cKey := issue(t, ca, "client", netip172(9))
	var removed atomic.Bool
	server, _, err := MutualConfig(sCert, sKey, ca.Cert, func(leaf *x509.Certificate) error {
		if removed.Load() && leaf.Subject.CommonName == "client" {
			return errors.New("node removed from the cluster")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_, client, err := MutualConfig(cCert, cKey, ca.Cert, nil)
	if err != nil {
		t.Fatal(err)
	}
	client.ClientSessionCache = tls.NewLRUClientSessionCache(4)

	if res := handshake(t, server, client, meshIP.String()); res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("first connection: server %v, client %v", res.serverErr, res.clientErr)
	}
	if res := handshake(t, server, client, meshIP.String()); res.serverErr != nil || res.clientErr != nil || !res.resumed {
		t.Fatalf("second connection: server %v, client %v, resumed %v; want a resumed session", res.serverErr, res.clientErr, res.resumed)
	}
	removed.Store(true)
	res := handshake(t, server, client, meshIP.String())
	if res.serverErr == nil || !strings.Contains(res.serverErr.Error(), "node removed") || res.clientErr == nil {
		t.Fatalf("after removal: server %v, client %v; want both to fail", res.serverErr, res.clientErr)
	}
}

// The join endpoint shows its certificates (the node's name, the cluster
// ID) only to a client that names JoinServerName of the CA fingerprint:
// others get the unrecognized_name alert and no certificate.
func TestJoinServerNameGate(t *testing.T) {
	ca := newTestCA(t, "right")
	certPEM, keyPEM := issue(t, ca, "member-1", meshIP)
	server, err := ServerConfig(certPEM, keyPEM, ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	fp := Fingerprint(ca.Cert)
	if n := JoinServerName(colonize(strings.ToUpper(fp))); n != JoinServerName(fp) || n == "" || strings.Contains(n, fp[:16]) {
		t.Fatalf("JoinServerName = %q", n)
	}
	if JoinServerName("abc") != "" {
		t.Fatal("a malformed fingerprint has a server name")
	}
	for _, sni := range []string{"", "203.0.113.9", "member-1", JoinServerName(Fingerprint(newTestCA(t, "other").Cert))} {
		insecure := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
		res := handshake(t, server, insecure, sni)
		if res.clientErr == nil || !strings.Contains(res.clientErr.Error(), "unrecognized name") || res.clientPeer != "" {
			t.Errorf("SNI %q: client err = %v, saw %q; want an unrecognized name alert and no certificate", sni, res.clientErr, res.clientPeer)
		}
	}
	res := handshake(t, server, JoinClientConfig(fp), JoinServerName(fp))
	if res.clientErr != nil || res.serverErr != nil || res.clientPeer != "member-1" {
		t.Fatalf("join client: %v / %v, saw %q", res.clientErr, res.serverErr, res.clientPeer)
	}
}

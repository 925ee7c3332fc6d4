package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
)

// AddressedConfig: a client dialing by an address no certificate names
// still verifies the server's chain and allow, on resumed sessions too.
func TestAddressedConfig(t *testing.T) {
	ca := newTestCA(t, "c")
	other := newTestCA(t, "other")
	sCert, sKey := issue(t, ca, "server") // no IP SANs, as nodes get them
	cCert, cKey := issue(t, ca, "client")
	fsCert, fsKey := issue(t, other, "server")
	var refuseServer atomic.Bool
	allow := func(leaf *x509.Certificate) error {
		if refuseServer.Load() && leaf.Subject.CommonName == "server" {
			return errors.New("not a member")
		}
		return nil
	}
	mustAddressed := func(certPEM, keyPEM []byte, trust *CA) (*tls.Config, *tls.Config) {
		s, c, err := AddressedConfig(certPEM, keyPEM, trust.Cert, allow)
		if err != nil {
			t.Fatal(err)
		}
		return s, c
	}
	server, _ := mustAddressed(sCert, sKey, ca)
	_, client := mustAddressed(cCert, cKey, ca)
	client.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	// Another cluster's node.
	foreign, _, err := MutualConfig(fsCert, fsKey, other.Cert, nil)
	if err != nil {
		t.Fatal(err)
	}

	if res := handshake(t, server, client, ""); res.clientErr != nil || res.serverErr != nil || res.clientPeer != "server" {
		t.Fatalf("by address: %+v", res)
	}
	if res := handshake(t, server, client, ""); res.clientErr != nil || !res.resumed {
		t.Fatalf("resumed: %+v", res)
	}
	refuseServer.Store(true)
	if res := handshake(t, server, client, ""); res.clientErr == nil || !strings.Contains(res.clientErr.Error(), "not a member") {
		t.Fatalf("allow refusing the server on a resumed session: %+v", res)
	}
	refuseServer.Store(false)
	if res := handshake(t, foreign, client, ""); res.clientErr == nil || !strings.Contains(res.clientErr.Error(), "does not verify") {
		t.Fatalf("server of another CA: %+v", res)
	}
	if fp, err := FingerprintPEM(sCert); err != nil || fp != Fingerprint(mustParseCert(t, sCert)) {
		t.Fatalf("FingerprintPEM = %q, %v", fp, err)
	}
}

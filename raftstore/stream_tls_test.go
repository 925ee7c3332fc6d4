package raftstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/pki"
)

// testPKI is a cluster CA and the fingerprints of its members'
// certificates: allow admits exactly those, as the agent's check of the
// cluster state does.
type testPKI struct {
	ca      *pki.CA
	mu      sync.Mutex
	members map[string]bool // guarded by mu; certificate fingerprints
}

func newTestPKI(tb testing.TB) *testPKI {
	tb.Helper()
	ca, err := pki.NewCA("test")
	if err != nil {
		tb.Fatal(err)
	}
	return &testPKI{ca: ca, members: map[string]bool{}}
}

func (p *testPKI) allow(leaf *x509.Certificate) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.members[pki.Fingerprint(leaf)] {
		return errors.New("not a member's certificate")
	}
	return nil
}

// node issues a certificate for name and returns the stream layer's TLS
// configs for it; member records it as a member's.
func (p *testPKI) node(tb testing.TB, name string, member bool) (server, client *tls.Config, serial string) {
	tb.Helper()
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		tb.Fatal(err)
	}
	csr, err := pki.NewCSR(key, name)
	if err != nil {
		tb.Fatal(err)
	}
	certPEM, serial, err := p.ca.SignCSR(csr, name, nil, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	if member {
		fp, err := pki.FingerprintPEM(certPEM)
		if err != nil {
			tb.Fatal(err)
		}
		p.mu.Lock()
		p.members[fp] = true
		p.mu.Unlock()
	}
	server, client, err = pki.AddressedConfig(certPEM, keyPEM, p.ca.Cert, p.allow)
	if err != nil {
		tb.Fatal(err)
	}
	return server, client, serial
}

// minted is what the holder of the CA key (it is in every raft.db) can
// make: a certificate for its own key, signed by the CA (or self-signed if
// ca is nil), naming a member and carrying the member's serial.
func minted(tb testing.TB, ca *pki.CA, name, serialHex string) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	sn, _ := new(big.Int).SetString(serialHex, 16)
	tmpl := &x509.Certificate{
		SerialNumber: sn, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	parent, signer := tmpl, any(key)
	if ca != nil {
		parent, signer = ca.Cert, ca.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		tb.Fatal(err)
	}
	chain := [][]byte{der}
	if ca != nil {
		chain = append(chain, ca.Cert.Raw)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key}
}

// dialOnly is a raft.StreamLayer that only dials: an attacker's, or a
// member's client side on its own.
type dialOnly struct {
	net  mesh.Net
	tls  *tls.Config // nil: plain TCP
	done chan struct{}
	once sync.Once
}

func newDialOnlyTransport(n mesh.Net, conf *tls.Config) *raft.NetworkTransport {
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: &dialOnly{net: n, tls: conf, done: make(chan struct{})}, MaxPool: 1, Timeout: 5 * time.Second,
		Logger: hclog.NewNullLogger(),
	})
}

func (d *dialOnly) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := d.net.DialContext(ctx, "tcp", string(addr))
	if err != nil || d.tls == nil {
		return c, err
	}
	tc := tls.Client(c, d.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

func (d *dialOnly) Accept() (net.Conn, error) { <-d.done; return nil, net.ErrClosed }
func (d *dialOnly) Close() error              { d.once.Do(func() { close(d.done) }); return nil }
func (d *dialOnly) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// serveAppendEntries answers every AppendEntries on trans with success and
// counts them, until ctx ends.
func serveAppendEntries(ctx context.Context, trans *raft.NetworkTransport, served *int64, mu *sync.Mutex) {
	for {
		select {
		case rpc := <-trans.Consumer():
			mu.Lock()
			*served++
			mu.Unlock()
			rpc.Respond(&raft.AppendEntriesResponse{Success: true}, nil)
		case <-ctx.Done():
			return
		}
	}
}

func newTransport(s *StreamLayer) *raft.NetworkTransport {
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: s, MaxPool: 2, Timeout: 5 * time.Second, Logger: hclog.NewNullLogger(),
	})
}

// The attack of issue 12 on Raft's port: a process that is not a member
// (no certificate, a self-signed one, or one the CA key from a stolen
// raft.db signed with a member's serial) sends AppendEntries. None reaches
// Raft; a member's does.
func TestStreamLayerRefusesNonMembers(t *testing.T) {
	streamLeakCheck(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := newTestPKI(t)
	srvTLS, cliTLS, serial := p.node(t, "n1", true)
	server := newTransport(newTestStreamLayerTLS(t, srvTLS, cliTLS))
	defer server.Close()
	var (
		mu     sync.Mutex
		served int64
	)
	go serveAppendEntries(ctx, server, &served, &mu)

	_, memberClient, _ := p.node(t, "n2", true)
	_, strangerClient, _ := p.node(t, "n3", false) // CA-signed, never a member (or removed)
	for _, tc := range []struct {
		name string
		conf *tls.Config
	}{
		{"plain", nil},
		{"tls-no-cert", &tls.Config{InsecureSkipVerify: true}},
		{"self-signed", &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{minted(t, nil, "n1", serial)}}},
		{"minted-member-serial", &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{minted(t, p.ca, "n1", serial)}}},
		{"ca-signed-non-member", strangerClient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trans := newDialOnlyTransport(mesh.NewHostNet(streamLoopback), tc.conf)
			defer trans.Close()
			var resp raft.AppendEntriesResponse
			err := trans.AppendEntries("n1", server.LocalAddr(), &raft.AppendEntriesRequest{Term: 99}, &resp)
			if err == nil {
				t.Fatalf("AppendEntries from a non-member succeeded: %+v", resp)
			}
		})
	}
	mu.Lock()
	got := served
	mu.Unlock()
	if got != 0 {
		t.Fatalf("raft was handed %d RPCs from non-members", got)
	}

	member := newDialOnlyTransport(mesh.NewHostNet(streamLoopback), memberClient)
	defer member.Close()
	var resp raft.AppendEntriesResponse
	if err := member.AppendEntries("n1", server.LocalAddr(), &raft.AppendEntriesRequest{Term: 1}, &resp); err != nil || !resp.Success {
		t.Fatalf("a member's AppendEntries: %+v, %v", resp, err)
	}
}

// A member refuses a server that is not a member too: Raft dialing a mesh
// address someone else answers (a local process that took the port while
// the agent was down) must not hand it log entries.
func TestStreamLayerDialRefusesNonMemberServer(t *testing.T) {
	streamLeakCheck(t)
	p := newTestPKI(t)
	impSrv, impCli, _ := p.node(t, "impostor", false)
	impostor := newTestStreamLayerTLS(t, impSrv, impCli)
	defer impostor.Close()
	go func() {
		for {
			c, err := impostor.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = c.Read(make([]byte, 1)); c.Close() }()
		}
	}()
	srv, cli, _ := p.node(t, "n1", true)
	s := newTestStreamLayerTLS(t, srv, cli)
	defer s.Close()
	if c, err := s.Dial(raft.ServerAddress(impostor.Addr().String()), 5*time.Second); err == nil {
		c.Close()
		t.Fatal("dialed a server whose certificate is no member's")
	}
}

// A client that connects and says nothing holds neither Accept nor other
// members' RPCs, and is cut off after the handshake timeout.
func TestStreamLayerSilentClient(t *testing.T) {
	streamLeakCheck(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := newTestPKI(t)
	srvTLS, cliTLS, _ := p.node(t, "n1", true)
	layer, err := NewStreamLayer(StreamConfig{
		Net: mesh.NewHostNet(streamLoopback), Addr: netip.AddrPortFrom(streamLoopback, 0), Sources: streamSources,
		ServerTLS: srvTLS, ClientTLS: cliTLS, HandshakeTimeout: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	server := newTransport(layer)
	defer server.Close()
	var (
		mu     sync.Mutex
		served int64
	)
	go serveAppendEntries(ctx, server, &served, &mu)

	var silent []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", string(server.LocalAddr()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	_, memberClient, _ := p.node(t, "n2", true)
	member := newDialOnlyTransport(mesh.NewHostNet(streamLoopback), memberClient)
	defer member.Close()
	var resp raft.AppendEntriesResponse
	if err := member.AppendEntries("n1", server.LocalAddr(), &raft.AppendEntriesRequest{Term: 1}, &resp); err != nil || !resp.Success {
		t.Fatalf("a member's AppendEntries behind silent clients: %+v, %v", resp, err)
	}
	for _, c := range silent {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("a silent client got data")
		} else if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("a silent client was never cut off")
		}
	}
}

// Connections from outside Sources (pods, wg1) never come out of Accept.
func TestStreamLayerDropsForeignSources(t *testing.T) {
	streamLeakCheck(t)
	s := newTestStreamLayer(t)
	defer s.Close()
	stranger := mesh.NewHostNet(netip.MustParseAddr("127.0.0.2"))
	sc, err := stranger.DialContext(context.Background(), "tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	mc, err := mesh.NewHostNet(streamLoopback).DialContext(context.Background(), "tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	c, err := s.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.RemoteAddr().String() != mc.LocalAddr().String() {
		t.Fatalf("accepted %s, want the member's %s", c.RemoteAddr(), mc.LocalAddr())
	}
	if s.Dropped() != 1 {
		t.Fatalf("Dropped = %d, want 1", s.Dropped())
	}
	_ = sc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := sc.Read(make([]byte, 1)); err == nil {
		t.Fatal("the stranger's connection is open")
	}
}

// The raft cluster of TestStreamLayerRaftCluster, over mutual TLS.
func TestStreamLayerRaftClusterTLS(t *testing.T) {
	streamLeakCheck(t)
	p := newTestPKI(t)
	rc := startRaftCluster(t, 3, func(i int) *StreamLayer {
		srv, cli, _ := p.node(t, fmt.Sprintf("node-%d", i), true)
		return newTestStreamLayerTLS(t, srv, cli)
	}, false)
	defer rc.close(t)
	if err := rc.leader.Apply([]byte("x"), 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
}

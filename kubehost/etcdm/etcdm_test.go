package etcdm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runos/runos-agent/freeport"
)

const etcdBin = "/usr/bin/etcd"

func requireEtcd(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(etcdBin); err != nil {
		if os.Getenv("RUNOS_LAB_REQUIRED") == "1" {
			t.Fatalf("%s required (RUNOS_LAB_REQUIRED=1): %v (apt-get install etcd-server)", etcdBin, err)
		}
		t.Skipf("no %s (apt-get install etcd-server): %v", etcdBin, err)
	}
}

// testPKI is a throwaway etcd CA with a server/peer cert valid for
// 127.0.0.1 and a client cert, written to dir.
type testPKI struct {
	dir                  string
	caFile               string
	serverCert, serverKy string
	client               tls.Certificate
	pool                 *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test etcd CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, cn string, usage []x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  usage,
			DNSNames:     []string{"localhost"},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	}
	p := &testPKI{dir: dir, pool: x509.NewCertPool()}
	p.pool.AddCert(caCert)
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	p.caFile = write("ca.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	// One cert serves as client-facing, peer server and peer client cert.
	sc, sk := issue(2, "etcd", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})
	p.serverCert, p.serverKy = write("server.crt", sc), write("server.key", sk)
	cc, ck := issue(3, "runos-agent", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	p.client, err = tls.X509KeyPair(cc, ck)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *testPKI) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{p.client}, MinVersion: tls.VersionTLS12}
}

type etcdProc struct {
	name               string
	clientURL, peerURL string
	cmd                *exec.Cmd
	done               chan struct{}
	log                string
}

// member is a member's URLs before it runs (AddLearner needs the peer URL
// first).
func newMember(t *testing.T, name string) *etcdProc {
	return &etcdProc{
		name:      name,
		clientURL: fmt.Sprintf("https://127.0.0.1:%d", freeport.For(t)),
		peerURL:   fmt.Sprintf("https://127.0.0.1:%d", freeport.For(t)),
	}
}

// start runs the member with TLS on both sides and client-cert-auth; it
// is killed in t.Cleanup.
func (m *etcdProc) start(t *testing.T, p *testPKI, initialCluster, state string) {
	t.Helper()
	dir := t.TempDir()
	m.log = filepath.Join(dir, m.name+".log")
	logf, err := os.Create(m.log)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(etcdBin,
		"--name", m.name,
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", m.clientURL,
		"--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", m.peerURL,
		"--initial-advertise-peer-urls", m.peerURL,
		"--initial-cluster", initialCluster,
		"--initial-cluster-state", state,
		"--client-cert-auth",
		"--trusted-ca-file", p.caFile,
		"--cert-file", p.serverCert,
		"--key-file", p.serverKy,
		"--peer-client-cert-auth",
		"--peer-trusted-ca-file", p.caFile,
		"--peer-cert-file", p.serverCert,
		"--peer-key-file", p.serverKy,
	)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start etcd %s: %v", m.name, err)
	}
	m.done = make(chan struct{})
	go func() {
		m.cmd.Wait()
		logf.Close()
		close(m.done)
	}()
	t.Cleanup(func() {
		m.kill()
		if t.Failed() {
			if b, err := os.ReadFile(m.log); err == nil {
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				if len(lines) > 30 {
					lines = lines[len(lines)-30:]
				}
				t.Logf("etcd %s log tail:\n%s", m.name, strings.Join(lines, "\n"))
			}
		}
	})
}

func (m *etcdProc) kill() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	select {
	case <-m.done:
		return
	default:
	}
	m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.done
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitHealthy polls /health; the deadline only bounds a hung test.
func waitHealthy(t *testing.T, c *Client, m *etcdProc) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := c.Healthy(testCtx(t, 5*time.Second), m.clientURL)
		if err == nil {
			return
		}
		select {
		case <-m.done:
			t.Fatalf("etcd %s exited: %v", m.name, m.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd %s not healthy: %v", m.name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func newClient(t *testing.T, eps []string, cfg *tls.Config) *Client {
	t.Helper()
	c, err := New(eps, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestAddPromoteRemove(t *testing.T) {
	requireEtcd(t)
	p := newTestPKI(t)
	m1 := newMember(t, "m1")
	m1.start(t, p, "m1="+m1.peerURL, "new")
	c := newClient(t, []string{m1.clientURL}, p.clientTLS())
	waitHealthy(t, c, m1)

	ms, err := c.List(testCtx(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Name != "m1" || ms[0].IsLearner || ms[0].ID == 0 ||
		len(ms[0].ClientURLs) != 1 || ms[0].ClientURLs[0] != m1.clientURL {
		t.Fatalf("initial members %+v", ms)
	}
	m1ID := ms[0].ID

	m2 := newMember(t, "m2")
	added, all, err := c.AddLearner(testCtx(t, 30*time.Second), m2.peerURL)
	if err != nil {
		t.Fatal(err)
	}
	if !added.IsLearner || added.ID == 0 || added.Name != "" || len(added.PeerURLs) != 1 || added.PeerURLs[0] != m2.peerURL {
		t.Fatalf("added %+v", added)
	}
	if len(all) != 2 {
		t.Fatalf("members after add: %+v", all)
	}
	// A retried add must not create a second member.
	if _, _, err := c.AddLearner(testCtx(t, 30*time.Second), m2.peerURL); !errors.Is(err, ErrMemberExists) {
		t.Fatalf("second add of the same peer URL: %v, want ErrMemberExists", err)
	}

	// Not started: it cannot be in sync.
	if err := c.Promote(testCtx(t, 30*time.Second), added.ID); !errors.Is(err, ErrLearnerNotReady) {
		t.Fatalf("promote of an unstarted learner: %v, want ErrLearnerNotReady", err)
	}

	ic := InitialCluster(all, "m2", m2.peerURL)
	if want := "m1=" + m1.peerURL + ",m2=" + m2.peerURL; ic != want {
		t.Fatalf("InitialCluster = %q, want %q", ic, want)
	}
	m2.start(t, p, ic, "existing")

	deadline := time.Now().Add(90 * time.Second)
	for {
		err := c.Promote(testCtx(t, 30*time.Second), added.ID)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrLearnerNotReady) {
			t.Fatalf("promote: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("learner never caught up: %v", err)
		}
		select {
		case <-m2.done:
			t.Fatalf("m2 exited: %v", m2.cmd.ProcessState)
		case <-time.After(200 * time.Millisecond):
		}
	}

	ms, err = c.List(testCtx(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	byID := map[uint64]Member{}
	for _, m := range ms {
		byID[m.ID] = m
	}
	if len(ms) != 2 || byID[m1ID].IsLearner || byID[added.ID].IsLearner {
		t.Fatalf("want 2 voters, got %+v", ms)
	}
	// etcd runs its catch-up check before the learner check, so a voter a
	// little behind the leader is also "not ready" for a moment.
	deadline = time.Now().Add(60 * time.Second)
	for {
		err := c.Promote(testCtx(t, 30*time.Second), added.ID)
		if errors.Is(err, ErrMemberNotLearner) {
			break
		}
		if !errors.Is(err, ErrLearnerNotReady) || time.Now().After(deadline) {
			t.Fatalf("promote of a voter: %v, want ErrMemberNotLearner", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Both endpoints now; m2 answers as a voter too.
	c.SetEndpoints([]string{m2.clientURL, m1.clientURL})
	waitHealthy(t, c, m2)

	// etcd refuses to remove a voter until every voter has been connected
	// for 5 s (its strict reconfiguration check).
	deadline = time.Now().Add(60 * time.Second)
	for {
		err := c.Remove(testCtx(t, 30*time.Second), added.ID)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrUnhealthyCluster) || time.Now().After(deadline) {
			t.Fatalf("remove: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The remove may have gone through m2; m1 applies it a moment later
	// (etcd 3.4's member list is the answering member's local view).
	c.SetEndpoints([]string{m1.clientURL})
	deadline = time.Now().Add(30 * time.Second)
	for {
		ms, err = c.List(testCtx(t, 30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) == 1 && ms[0].ID == m1ID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after remove: %+v", ms)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.Remove(testCtx(t, 30*time.Second), added.ID); !errors.Is(err, ErrMemberNotFound) {
		t.Fatalf("second remove: %v, want ErrMemberNotFound", err)
	}
}

func TestAuthAndFailover(t *testing.T) {
	requireEtcd(t)
	p := newTestPKI(t)
	m1 := newMember(t, "m1")
	m1.start(t, p, "m1="+m1.peerURL, "new")
	good := newClient(t, []string{m1.clientURL}, p.clientTLS())
	waitHealthy(t, good, m1)

	t.Run("no client cert is refused", func(t *testing.T) {
		c := newClient(t, []string{m1.clientURL}, &tls.Config{RootCAs: p.pool})
		_, err := c.List(testCtx(t, 30*time.Second))
		if err == nil {
			t.Fatal("List without a client certificate succeeded")
		}
		t.Logf("refused: %v", err)
		if err := c.Healthy(testCtx(t, 30*time.Second), m1.clientURL); err == nil {
			t.Fatal("/health without a client certificate succeeded")
		}
	})

	t.Run("untrusted server is refused", func(t *testing.T) {
		cfg := p.clientTLS()
		cfg.RootCAs = x509.NewCertPool()
		c := newClient(t, []string{m1.clientURL}, cfg)
		if _, err := c.List(testCtx(t, 30*time.Second)); err == nil {
			t.Fatal("List trusted a server outside the CA")
		}
	})

	t.Run("dead endpoint fails over", func(t *testing.T) {
		dead := fmt.Sprintf("https://127.0.0.1:%d", freeport.For(t))
		c := newClient(t, []string{dead, m1.clientURL}, p.clientTLS())
		for i := range 2 {
			ms, err := c.List(testCtx(t, 30*time.Second))
			if err != nil {
				t.Fatalf("List %d: %v", i, err)
			}
			if len(ms) != 1 || ms[0].Name != "m1" {
				t.Fatalf("members %+v", ms)
			}
		}
		// An add is not idempotent, but a refused connection surely did
		// not reach etcd: it moves on too.
		c.SetEndpoints([]string{dead, m1.clientURL})
		peer := fmt.Sprintf("https://127.0.0.1:%d", freeport.For(t))
		added, _, err := c.AddLearner(testCtx(t, 30*time.Second), peer)
		if err != nil {
			t.Fatalf("AddLearner with a dead first endpoint: %v", err)
		}
		if err := c.Remove(testCtx(t, 30*time.Second), added.ID); err != nil {
			t.Fatalf("removing the learner: %v", err)
		}
		if err := c.Healthy(testCtx(t, 30*time.Second), dead); err == nil {
			t.Fatal("dead endpoint healthy")
		}
		// All dead: an error naming the failure, not a hang.
		c.SetEndpoints([]string{dead})
		if _, err := c.List(testCtx(t, 30*time.Second)); err == nil {
			t.Fatal("List with only a dead endpoint succeeded")
		}
	})
}

func TestNewValidates(t *testing.T) {
	cfg := &tls.Config{}
	if _, err := New(nil, cfg); err == nil {
		t.Error("no endpoints accepted")
	}
	if _, err := New([]string{"https://127.0.0.1:2379"}, nil); err == nil {
		t.Error("nil TLS config accepted")
	}
	if _, err := New([]string{"http://127.0.0.1:2379"}, cfg); err == nil {
		t.Error("plain http endpoint accepted")
	}
	c, err := New([]string{"https://127.0.0.1:2379/"}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.AddLearner(context.Background(), "not a url"); err == nil {
		t.Error("bad peer URL accepted")
	}
}

func TestInitialCluster(t *testing.T) {
	for _, tc := range []struct {
		name    string
		members []Member
		want    string
	}{
		{
			name: "joining learner without name",
			members: []Member{
				{ID: 1, Name: "a", PeerURLs: []string{"https://10.0.0.1:2380"}},
				{ID: 2, PeerURLs: []string{"https://10.0.0.2:2380"}, IsLearner: true},
			},
			want: "a=https://10.0.0.1:2380,n=https://10.0.0.2:2380",
		},
		{
			name: "restart of a named member",
			members: []Member{
				{ID: 1, Name: "a", PeerURLs: []string{"https://10.0.0.1:2380"}},
				{ID: 2, Name: "n", PeerURLs: []string{"https://10.0.0.2:2380"}},
			},
			want: "a=https://10.0.0.1:2380,n=https://10.0.0.2:2380",
		},
		{
			name: "not in the list yet",
			members: []Member{
				{ID: 1, Name: "a", PeerURLs: []string{"https://10.0.0.1:2380", "https://10.1.0.1:2380"}},
			},
			want: "a=https://10.0.0.1:2380,a=https://10.1.0.1:2380,n=https://10.0.0.2:2380",
		},
		{
			name: "another unstarted member keeps its place",
			members: []Member{
				{ID: 1, Name: "a", PeerURLs: []string{"https://10.0.0.1:2380"}},
				{ID: 0xbeef, PeerURLs: []string{"https://10.0.0.3:2380"}, IsLearner: true},
				{ID: 2, PeerURLs: []string{"https://10.0.0.2:2380"}, IsLearner: true},
			},
			want: "a=https://10.0.0.1:2380,beef=https://10.0.0.3:2380,n=https://10.0.0.2:2380",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := InitialCluster(tc.members, "n", "https://10.0.0.2:2380"); got != tc.want {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestDecodeMember(t *testing.T) {
	// grpc-gateway renders uint64 as strings; numbers are accepted too.
	for _, in := range []string{
		`{"ID":"18426553842996861188","name":"x","peerURLs":["https://a:2380"],"isLearner":true}`,
		`{"ID":18426553842996861188,"name":"x","peerURLs":["https://a:2380"],"isLearner":true}`,
	} {
		var m jsonMember
		if err := json.Unmarshal([]byte(in), &m); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := m.member(); got.ID != 18426553842996861188 || got.Name != "x" || !got.IsLearner || got.PeerURLs[0] != "https://a:2380" {
			t.Fatalf("%s: %+v", in, got)
		}
	}
	var m jsonMember
	if err := json.Unmarshal([]byte(`{"ID":"-1"}`), &m); err == nil {
		t.Fatal("negative ID accepted")
	}
}

func TestAPIErrorIs(t *testing.T) {
	e := &APIError{Message: "etcdserver: can only promote a learner member which is in sync with leader", Code: 9}
	if !errors.Is(e, ErrLearnerNotReady) || errors.Is(e, ErrMemberNotLearner) {
		t.Fatal("not-ready message mapped wrongly")
	}
	e = &APIError{Message: "etcdserver: can only promote a learner member", Code: 9}
	if !errors.Is(e, ErrMemberNotLearner) || errors.Is(e, ErrLearnerNotReady) {
		t.Fatal("not-learner message mapped wrongly")
	}
}

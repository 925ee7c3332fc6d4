package cloud

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/goleak"

	"github.com/runos/runos-agent/cloudlink"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newServer(t *testing.T) *Server {
	t.Helper()
	s, err := New(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", STUNListen: "127.0.0.1:0", ConsoleListen: "127.0.0.1:0"},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func register(t *testing.T, s *Server, name string) (*raftstore.CloudRegistration, seal.Key) {
	t.Helper()
	tok, err := s.CreateToken(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := seal.NewKey()
	reg, err := cloudlink.Register(context.Background(), s.URL(), tok.Token, "agent-"+name, key)
	if err != nil {
		t.Fatal(err)
	}
	return reg, key
}

// session opens a raw session with reg's certificate and returns the
// upgraded connection (or the refusal).
func openSession(t *testing.T, s *Server, reg *raftstore.CloudRegistration, key seal.Key) (net.Conn, *bufio.Reader, error) {
	t.Helper()
	keyPEM, err := seal.Open(key, raftstore.CloudKeyPurpose, reg.ClientKeySealed)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(reg.ClientCertPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	tc := pki.PinnedClientConfig(reg.CAFingerprint)
	tc.Certificates = []tls.Certificate{cert}
	conn, err := tls.Dial("tcp", s.Addr(), tc)
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(func() { conn.Close() })
	io.WriteString(conn, "GET /v1/link HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: "+cloudlink.LinkProtocol+"\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		return nil, nil, &refusal{string(b)}
	}
	return conn, br, nil
}

type refusal struct{ body string }

func (r *refusal) Error() string { return r.body }

func hello(t *testing.T, conn net.Conn, br *bufio.Reader, cloudID, agentID string) *cloudlink.Msg {
	t.Helper()
	if err := cloudlink.WriteFrame(conn, &cloudlink.Msg{Type: cloudlink.MsgHello, Hello: &cloudlink.Hello{CloudClusterID: cloudID, ClusterID: agentID, Node: "n1"}}); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := cloudlink.ReadFrame(br)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestRegistrationRefusals(t *testing.T) {
	s := newServer(t)
	key, _ := seal.NewKey()
	tok, _ := s.CreateToken("a", time.Hour)
	if _, err := cloudlink.Register(context.Background(), s.URL(), tok.Token, "agent-a", key); err != nil {
		t.Fatal(err)
	}
	short, _ := s.CreateToken("b", time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	parsed, _ := cloudlink.ParseRegToken(tok.Token)
	other := cloudlink.RegToken{CAFingerprint: strings.Repeat("1", 64), ID: parsed.ID, Secret: parsed.Secret}
	wrongSecret := cloudlink.RegToken{CAFingerprint: parsed.CAFingerprint, ID: parsed.ID, Secret: strings.Repeat("0", 32)}
	revoked, _ := s.CreateToken("c", time.Hour)
	if err := s.Revoke("c"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, token, want string }{
		{"used", tok.Token, "already been used"},
		{"expired", short.Token, "expired"},
		{"wrong server certificate", other.String(), "fingerprint mismatch"},
		{"wrong secret", wrongSecret.String(), "token is invalid"},
		{"garbage", "hello", "malformed cloud registration token"},
		{"revoked", revoked.Token, "revoked"},
	} {
		_, err := cloudlink.Register(context.Background(), s.URL(), tc.token, "agent-x", key)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := s.CreateToken("c", time.Hour); err == nil {
		t.Error("token created for a revoked cluster")
	}
}

func TestSessionRefusals(t *testing.T) {
	s := newServer(t)
	regA, keyA := register(t, s, "a")
	regB, keyB := register(t, s, "b")

	// A client certificate of another cluster.
	conn, br, err := openSession(t, s, regA, keyA)
	if err != nil {
		t.Fatal(err)
	}
	if m := hello(t, conn, br, regB.CloudClusterID, "agent-b"); m.Type != cloudlink.MsgError || !strings.Contains(m.Error, "belongs to cluster") {
		t.Fatalf("hello for another cluster: %+v", m)
	}

	// Malformed and oversized frames: a clear error, then the session
	// ends; the mirror keeps what it had and a new session works.
	for _, tc := range []struct {
		name  string
		frame []byte
		want  string
	}{
		{"malformed", append(binary.BigEndian.AppendUint32(nil, 5), "{{{{{"...), "malformed"},
		{"oversized", binary.BigEndian.AppendUint32(nil, 100<<20), "exceeds"},
		{"no type", append(binary.BigEndian.AppendUint32(nil, 2), "{}"...), "no type"},
	} {
		conn, br, err := openSession(t, s, regA, keyA)
		if err != nil {
			t.Fatal(err)
		}
		if m := hello(t, conn, br, regA.CloudClusterID, "agent-a"); m.Type != cloudlink.MsgWelcome {
			t.Fatalf("%s: hello answered %+v", tc.name, m)
		}
		if err := cloudlink.WriteFrame(conn, &cloudlink.Msg{Type: cloudlink.MsgSnapshot, Snapshot: &cloudlink.Snapshot{Index: 7}}); err != nil {
			t.Fatal(err)
		}
		conn.Write(tc.frame)
		var got *cloudlink.Msg
		for {
			m, err := cloudlink.ReadFrame(br)
			if err != nil {
				break
			}
			got = m
		}
		if got == nil || got.Type != cloudlink.MsgError || !strings.Contains(got.Error, tc.want) {
			t.Errorf("%s: last frame %+v, want an error with %q", tc.name, got, tc.want)
		}
		if c, _ := s.store.findCluster("a"); c.Cursor != 7 {
			t.Errorf("%s: cursor %d after the bad frame, want 7 (kept)", tc.name, c.Cursor)
		}
	}

	// A client certificate another CA signed fails the TLS handshake.
	other := newServer(t)
	regX, keyX := register(t, other, "x")
	regX.CAFingerprint = regA.CAFingerprint
	if _, _, err := openSession(t, s, regX, keyX); err == nil {
		t.Fatal("a certificate of another CA was accepted")
	}

	// A revoked cluster is refused before the upgrade.
	if err := s.Revoke("a"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := openSession(t, s, regA, keyA); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked cluster: %v", err)
	}
	// A certificate from a registration that was replaced is refused.
	regB2, keyB2 := register(t, s, "b")
	if _, _, err := openSession(t, s, regB, keyB); err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("old certificate of re-registered cluster b: %v", err)
	}
	if _, _, err := openSession(t, s, regB2, keyB2); err != nil {
		t.Fatalf("new certificate of cluster b: %v", err)
	}
}

func TestChangesApplyOnceAndResyncReplaces(t *testing.T) {
	s := newServer(t)
	reg, key := register(t, s, "a")
	conn, br, err := openSession(t, s, reg, key)
	if err != nil {
		t.Fatal(err)
	}
	if m := hello(t, conn, br, reg.CloudClusterID, "agent-a"); m.Type != cloudlink.MsgWelcome || m.Index != 0 {
		t.Fatalf("welcome %+v", m)
	}
	send := func(m *cloudlink.Msg) uint64 {
		t.Helper()
		if err := cloudlink.WriteFrame(conn, m); err != nil {
			t.Fatal(err)
		}
		for {
			a, err := cloudlink.ReadFrame(br)
			if err != nil {
				t.Fatal(err)
			}
			if a.Type == cloudlink.MsgAck {
				return a.Index
			}
		}
	}
	send(&cloudlink.Msg{Type: cloudlink.MsgSnapshot, Snapshot: &cloudlink.Snapshot{Index: 10}})
	ch := []cloudlink.Change{{Index: 11, Op: "join", NodeID: "n1", Node: &apiNode}, {Index: 12, Op: "event"}}
	if got := send(&cloudlink.Msg{Type: cloudlink.MsgChanges, Changes: ch}); got != 12 {
		t.Fatalf("ack %d", got)
	}
	// Sent again (a lost ack): ignored, counted.
	if got := send(&cloudlink.Msg{Type: cloudlink.MsgChanges, Changes: append(ch, cloudlink.Change{Index: 13, Op: "event"})}); got != 13 {
		t.Fatalf("ack %d", got)
	}
	m, _ := s.MirrorOf("a")
	if len(m.Changes) != 3 || m.Cluster.Duplicates != 2 || len(m.Nodes) != 1 {
		t.Fatalf("mirror %+v", m)
	}
	// A cloud restarted from its data dir resumes from the cursor.
	s.Close()
	s2, err := New(Config{DataDir: s.cfg.DataDir, Listen: "127.0.0.1:0"}, s.log)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	conn2, br2, err := openSession(t, s2, reg, key)
	if err != nil {
		t.Fatal(err)
	}
	if m := hello(t, conn2, br2, reg.CloudClusterID, "agent-a"); m.Type != cloudlink.MsgWelcome || m.Index != 13 {
		t.Fatalf("welcome after restart %+v", m)
	}
}

func TestSTUNResponder(t *testing.T) {
	s := newServer(t)
	c, err := net.Dial("udp", s.STUNAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	c.Write(req.Raw)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	m := &stun.Message{Raw: buf[:n]}
	if err := m.Decode(); err != nil || m.TransactionID != req.TransactionID {
		t.Fatalf("answer %v %v", m, err)
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(m); err != nil || xa.String() != c.LocalAddr().String() {
		t.Fatalf("mapped %v, want %v (%v)", xa, c.LocalAddr(), err)
	}
	// Garbage is ignored, the responder keeps answering.
	c.Write([]byte("garbage"))
	c.Write(req.Raw)
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}
}

func TestConsoleServesPageAndAPI(t *testing.T) {
	s := newServer(t)
	register(t, s, "a")
	for path, want := range map[string]string{
		"/":                     "runos-cloud",
		"/api/clusters":         `"name":"a"`,
		"/clusters/a/v1/nodes":  `"nodes":[]`,
		"/clusters/a/v1/status": `"name":"a"`,
		"/clusters/zz/v1/nodes": "no such cluster",
	} {
		resp, err := http.Get("http://" + s.ConsoleAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), want) {
			t.Errorf("%s: %s, want %q", path, b, want)
		}
	}
}

var apiNode = apiNodeT()

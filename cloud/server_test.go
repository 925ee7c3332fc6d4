package cloud

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
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
	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
	"github.com/runos/runos-agent/ui"
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
	io.WriteString(conn, "GET /v1/link HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: "+cloudproto.LinkProtocol+"\r\n\r\n")
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

func hello(t *testing.T, conn net.Conn, br *bufio.Reader, cloudID, agentID string) *cloudproto.Msg {
	t.Helper()
	if err := cloudproto.WriteFrame(conn, &cloudproto.Msg{Type: cloudproto.MsgHello, Hello: &cloudproto.Hello{CloudClusterID: cloudID, ClusterID: agentID, Node: "n1"}}); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := cloudproto.ReadFrame(br)
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
	parsed, _ := cloudproto.ParseRegToken(tok.Token)
	other := cloudproto.RegToken{CAFingerprint: strings.Repeat("1", 64), ID: parsed.ID, Secret: parsed.Secret}
	wrongSecret := cloudproto.RegToken{CAFingerprint: parsed.CAFingerprint, ID: parsed.ID, Secret: strings.Repeat("0", 32)}
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
	if m := hello(t, conn, br, regB.CloudClusterID, "agent-b"); m.Type != cloudproto.MsgError || !strings.Contains(m.Error, "belongs to cluster") {
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
		if m := hello(t, conn, br, regA.CloudClusterID, "agent-a"); m.Type != cloudproto.MsgWelcome {
			t.Fatalf("%s: hello answered %+v", tc.name, m)
		}
		if err := cloudproto.WriteFrame(conn, &cloudproto.Msg{Type: cloudproto.MsgSnapshot, Snapshot: &cloudproto.Snapshot{Index: 7}}); err != nil {
			t.Fatal(err)
		}
		conn.Write(tc.frame)
		var got *cloudproto.Msg
		for {
			m, err := cloudproto.ReadFrame(br)
			if err != nil {
				break
			}
			got = m
		}
		if got == nil || got.Type != cloudproto.MsgError || !strings.Contains(got.Error, tc.want) {
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
	if m := hello(t, conn, br, reg.CloudClusterID, "agent-a"); m.Type != cloudproto.MsgWelcome || m.Index != 0 {
		t.Fatalf("welcome %+v", m)
	}
	send := func(m *cloudproto.Msg) uint64 {
		t.Helper()
		if err := cloudproto.WriteFrame(conn, m); err != nil {
			t.Fatal(err)
		}
		for {
			a, err := cloudproto.ReadFrame(br)
			if err != nil {
				t.Fatal(err)
			}
			if a.Type == cloudproto.MsgAck {
				return a.Index
			}
		}
	}
	send(&cloudproto.Msg{Type: cloudproto.MsgSnapshot, Snapshot: &cloudproto.Snapshot{Index: 10}})
	ch := []cloudproto.Change{{Index: 11, Op: "join", NodeID: "n1", Node: &apiNode}, {Index: 12, Op: "event"}}
	if got := send(&cloudproto.Msg{Type: cloudproto.MsgChanges, Changes: ch}); got != 12 {
		t.Fatalf("ack %d", got)
	}
	// Sent again (a lost ack): ignored, counted.
	if got := send(&cloudproto.Msg{Type: cloudproto.MsgChanges, Changes: append(ch, cloudproto.Change{Index: 13, Op: "event"})}); got != 13 {
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
	if m := hello(t, conn2, br2, reg.CloudClusterID, "agent-a"); m.Type != cloudproto.MsgWelcome || m.Index != 13 {
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

// consoleLogin resets the console password through the admin path and
// signs in over HTTP: the session cookie and CSRF token.
func consoleLogin(t *testing.T, s *Server) (cookie, csrf string) {
	t.Helper()
	pw, err := s.ResetConsolePassword()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post("http://"+s.ConsoleAddr()+"/ui/login", "application/json", strings.NewReader(`{"username":"admin","password":"`+pw+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var info ui.SessionInfo
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil || resp.StatusCode != 200 {
		t.Fatalf("console sign-in: %d %v", resp.StatusCode, err)
	}
	for _, c := range resp.Cookies() {
		if c.Name == "runos_session_cloud" {
			return c.Name + "=" + c.Value, info.CSRFToken
		}
	}
	t.Fatal("console sign-in set no session cookie")
	return "", ""
}

func consoleDo(t *testing.T, s *Server, method, path, cookie, csrf, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+s.ConsoleAddr()+path, strings.NewReader(body))
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	if csrf != "" {
		req.Header.Set("X-CSRF-Token", csrf)
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

func TestConsoleServesPageAndAPI(t *testing.T) {
	s := newServer(t)
	if s.InitialPassword() == "" {
		t.Fatal("a new data dir made no console password")
	}
	register(t, s, "a")
	paths := map[string]string{
		"/":                                        "RunOS cloud",
		"/console.js":                              "api/clusters",
		"/api/clusters":                            `"name":"a"`,
		"/clusters/a/v1/nodes":                     `"nodes":[]`,
		"/clusters/a/v1/status":                    `"name":"a"`,
		"/clusters/a/v1/cloud":                     `"state":"disconnected"`,
		"/clusters/zz/v1/nodes":                    "no such cluster",
		"/clusters/zz/":                            "no such cluster",
		"/clusters/a/":                             `"base":"/clusters/a/"`,
		"/clusters/a/js/pages/cloud.js":            "registerPage",
		"/clusters/a/ui/session":                   "csrf_token",
		"/api/clusters/a/commands":                 "[]",
		"/clusters/a/v1/commands/nope-1":           "no such command",
		"/clusters/a/v1/events?after=0&wait=300ms": `"events":[]`,
		"/clusters/a/v1/events?wait=soon":          "invalid wait",
	}
	// Without a session: nothing but the sign-in page and its files.
	for path := range paths {
		code, body := consoleDo(t, s, "GET", path, "", "", "")
		want := 401
		if path == "/" || path == "/clusters/a/" || path == "/clusters/zz/" {
			want = 303
		}
		if code != want {
			t.Errorf("GET %s without a session: %d %s, want %d", path, code, body, want)
		}
	}
	for _, p := range []string{"/login", "/clusters/a/login", "/style.css"} {
		if code, _ := consoleDo(t, s, "GET", p, "", "", ""); code != 200 {
			t.Errorf("GET %s: %d", p, code)
		}
	}
	if code, body := consoleDo(t, s, "POST", "/api/admin/reset-password", "", "", "{}"); code == 200 {
		t.Errorf("reset-password reachable on the console: %s", body)
	}
	cookie, csrf := consoleLogin(t, s)
	if code, body := consoleDo(t, s, "POST", "/api/admin/reset-password", cookie, csrf, "{}"); code == 200 {
		t.Errorf("reset-password reachable on the console with a session: %s", body)
	}
	for path, want := range paths {
		_, body := consoleDo(t, s, "GET", path, cookie, "", "")
		if !strings.Contains(body, want) {
			t.Errorf("%s: %s, want %q", path, body, want)
		}
	}
	// Changes need the CSRF token.
	if code, _ := consoleDo(t, s, "POST", "/api/tokens", cookie, "", `{"cluster":"b"}`); code != 403 {
		t.Errorf("token without CSRF: %d", code)
	}
	if code, _ := consoleDo(t, s, "POST", "/clusters/a/v1/tokens", cookie, "", `{}`); code != 403 {
		t.Errorf("cluster command without CSRF: %d", code)
	}
	if code, body := consoleDo(t, s, "POST", "/clusters/a/v1/tokens", cookie, csrf, `{"ttl":"1h","uses":1}`); code != 202 || !strings.Contains(body, `"kind":"create_token"`) {
		t.Errorf("token through the shared UI: %d %s", code, body)
	}
	// A reset ends the session.
	if _, err := s.ResetConsolePassword(); err != nil {
		t.Fatal(err)
	}
	if code, _ := consoleDo(t, s, "GET", "/api/clusters", cookie, "", ""); code != 401 {
		t.Errorf("session after a reset: %d", code)
	}
}

var apiNode = apiNodeT()

package cloud

import (
	"bufio"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// reissueOver asks for a new certificate over an open session and returns
// the registration with it (the key sealed with key).
func reissueOver(t *testing.T, conn net.Conn, br *bufio.Reader, reg *raftstore.CloudRegistration, key seal.Key) (*raftstore.CloudRegistration, *cloudproto.Reissue) {
	t.Helper()
	k, keyPEM, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := pki.NewCSR(k, "runos-cluster")
	if err := cloudproto.WriteFrame(conn, &cloudproto.Msg{Type: cloudproto.MsgReissue, Reissue: &cloudproto.Reissue{CSR: string(csr)}}); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		m, err := cloudproto.ReadFrame(br)
		if err != nil {
			t.Fatal(err)
		}
		if m.Type != cloudproto.MsgReissued {
			continue
		}
		if m.Reissue.Error != "" {
			return nil, m.Reissue
		}
		next := *reg
		next.ClientCertPEM = []byte(m.Reissue.CertPEM)
		if next.ClientKeySealed, err = seal.Seal(key, raftstore.CloudKeyPurpose, keyPEM); err != nil {
			t.Fatal(err)
		}
		return &next, m.Reissue
	}
}

// After a re-issue only the new certificate opens a session: the old one
// is refused at the upgrade, a session upgraded with it a moment before
// cannot take over, and neither drops the current session.
func TestReissueRefusesTheOldCertificate(t *testing.T) {
	s := newServer(t)
	reg, key := register(t, s, "a")
	id := reg.CloudClusterID

	// An old-certificate session upgraded before the re-issue, not yet
	// past hello (a removed node racing the rotation).
	early, earlyBR, err := openSession(t, s, reg, key)
	if err != nil {
		t.Fatal(err)
	}
	conn, br, err := openSession(t, s, reg, key)
	if err != nil {
		t.Fatal(err)
	}
	if m := hello(t, conn, br, id, "agent-a"); m.Type != cloudproto.MsgWelcome {
		t.Fatalf("hello: %+v", m)
	}
	next, _ := reissueOver(t, conn, br, reg, key)
	if next == nil {
		t.Fatal("re-issue refused")
	}
	if c, _ := s.store.findCluster("a"); c.CertFingerprint != pki.Fingerprint(mustCert(t, next.ClientCertPEM)) {
		t.Fatal("the cloud does not hold the new certificate as current")
	}

	if _, _, err := openSession(t, s, reg, key); err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("old certificate after the re-issue: %v, want refused", err)
	}
	// The early session was ended by the re-issue, or is refused at hello.
	if err := cloudproto.WriteFrame(early, &cloudproto.Msg{Type: cloudproto.MsgHello, Hello: &cloudproto.Hello{CloudClusterID: id, ClusterID: "agent-a", Node: "impostor"}}); err == nil {
		early.SetReadDeadline(time.Now().Add(10 * time.Second))
		if m, err := cloudproto.ReadFrame(earlyBR); err == nil && m.Type == cloudproto.MsgWelcome {
			t.Fatal("a session upgraded with the old certificate took over after the re-issue")
		}
	}
	if leader, ok := s.connected(id); !ok || leader != "n1" {
		t.Fatalf("current session dropped: held by %q, %v", leader, ok)
	}
	// The current session still works, and the new certificate opens one.
	if err := cloudproto.WriteFrame(conn, &cloudproto.Msg{Type: cloudproto.MsgPing}); err != nil {
		t.Fatal(err)
	}
	if m, err := cloudproto.ReadFrame(br); err != nil || m.Type != cloudproto.MsgPong {
		t.Fatalf("current session after the re-issue: %+v %v", m, err)
	}
	conn2, br2, err := openSession(t, s, next, key)
	if err != nil {
		t.Fatalf("new certificate: %v", err)
	}
	if m := hello(t, conn2, br2, id, "agent-a"); m.Type != cloudproto.MsgWelcome {
		t.Fatalf("hello with the new certificate: %+v", m)
	}
	// The new session may re-issue again; a garbage CSR is a clear error
	// that keeps the session.
	if _, r := reissueOver(t, conn2, br2, next, key); r.Error != "" {
		t.Fatalf("re-issue on the new session: %s", r.Error)
	}
	if err := cloudproto.WriteFrame(conn2, &cloudproto.Msg{Type: cloudproto.MsgReissue, Reissue: &cloudproto.Reissue{CSR: "nope"}}); err != nil {
		t.Fatal(err)
	}
	if m, err := cloudproto.ReadFrame(br2); err != nil || m.Type != cloudproto.MsgReissued || !strings.Contains(m.Reissue.Error, "CSR") {
		t.Fatalf("garbage CSR: %+v %v", m, err)
	}
}

func mustCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	c, err := pki.ParseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

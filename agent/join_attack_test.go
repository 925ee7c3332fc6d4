package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/pki"
)

// quietIndex waits until the leader's commit index holds still (the
// cluster's own start-up writes are done) and returns it.
func quietIndex(t *testing.T, a *Agent) uint64 {
	t.Helper()
	last := a.store.Status().CommitIndex
	for stable := 0; stable < 10; {
		time.Sleep(50 * time.Millisecond)
		if now := a.store.Status().CommitIndex; now != last {
			last, stable = now, 0
		} else {
			stable++
		}
	}
	return last
}

// badJoinRequest is a join request as an attacker who has the join command
// of some expired or guessed token sends it: the right CA fingerprint, a
// well-formed token whose secret is wrong, a valid CSR and key.
func badJoinRequest(t *testing.T, caFingerprint string) []byte {
	t.Helper()
	creds, err := datadir.NewCredentials("evil")
	if err != nil {
		t.Fatal(err)
	}
	return mustJSON(api.JoinRequest{
		Token: datadir.NewToken(caFingerprint).String(), Name: "evil", NodeID: datadir.NewNodeID(),
		PublicKey: creds.WGKey.PublicKey().String(), CSR: creds.CSR, Endpoints: []string{"127.0.0.1:9"},
	})
}

// Attack: 300 join attempts with a bad token from one source. On the old
// code every attempt was a Raft write (sign the CSR, propose the join, let
// the FSM refuse the token): 301 entries in half a second, no limit. Now
// none reaches Raft, and the source is rate limited (429, Retry-After).
func TestAttackBadJoinsWriteNothing(t *testing.T) {
	c := newCluster(t, 1)
	a := c.agents[0]
	member := a.cfg.Endpoints[0]
	before := quietIndex(t, a)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.JoinClientConfig(a.cfg.CAFingerprint)}}
	defer client.CloseIdleConnections()
	codes := map[int]int{}
	retryAfter := ""
	for range 300 {
		resp, err := client.Post("https://"+member+"/v1/join", "application/json", bytes.NewReader(badJoinRequest(t, a.cfg.CAFingerprint)))
		if err != nil {
			t.Fatal(err)
		}
		var e api.Error
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		codes[resp.StatusCode]++
		if resp.StatusCode == http.StatusTooManyRequests {
			retryAfter = resp.Header.Get("Retry-After")
		}
		if strings.Contains(e.Error, a.Name()) || strings.Contains(e.Error, a.cfg.ClusterID) {
			t.Fatalf("error %q names the node or the cluster", e.Error)
		}
	}
	after := a.store.Status().CommitIndex
	if after != before {
		t.Errorf("300 bad joins added %d Raft entries (index %d -> %d), want 0", after-before, before, after)
	}
	if codes[http.StatusOK] != 0 || codes[http.StatusTooManyRequests] == 0 || retryAfter == "" {
		t.Errorf("status codes %v (Retry-After %q): want no 200 and 429s with Retry-After", codes, retryAfter)
	}
	t.Logf("status codes of 300 bad joins: %v; Raft index %d -> %d", codes, before, after)
}

// Attack: a stranger without the CA fingerprint opens a TLS connection to
// the join port. On the old code the handshake gave it the node's
// certificate (its name) and the CA's (the cluster ID). Now the handshake
// fails unless the client names the fingerprint-derived server name.
func TestAttackJoinHandshakeRevealsNothing(t *testing.T) {
	c := newCluster(t, 1)
	a := c.agents[0]
	member := a.cfg.Endpoints[0]
	for _, sni := range []string{"", "runos", a.Name(), strings.Repeat("0", 64)} {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", member, &tls.Config{InsecureSkipVerify: true, ServerName: sni})
		if err != nil {
			continue
		}
		for _, cert := range conn.ConnectionState().PeerCertificates {
			if bytes.Contains(cert.Raw, []byte(a.Name())) || bytes.Contains(cert.Raw, []byte(a.cfg.ClusterID)) {
				t.Errorf("SNI %q: the handshake revealed %q (node %s, cluster %s)", sni, cert.Subject.CommonName, a.Name(), a.cfg.ClusterID)
			}
		}
		conn.Close()
	}
	// Someone with the fingerprint still gets in (the joiner's config).
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", member, pki.JoinClientConfig(a.cfg.CAFingerprint))
	if err != nil {
		t.Fatalf("pinned handshake: %v", err)
	}
	conn.Close()
}

// Attack: the local API handed out tokens of any lifetime and up to 1000
// uses. Now the cluster's policy (24 h / 10 by default) refuses them with
// a 400 that says why.
func TestAttackLocalAPITokenBeyondPolicy(t *testing.T) {
	c := newCluster(t, 1)
	a := c.agents[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, req := range []api.TokenRequest{{TTL: fmt.Sprint(100*365*24, "h")}, {TTL: "1h", Uses: 1000}} {
		_, err := a.CreateToken(ctx, req)
		if !errors.Is(err, httpapi.ErrBadRequest) || !strings.Contains(err.Error(), "maximum") {
			t.Errorf("token %+v: err = %v, want a 400 naming the maximum", req, err)
		}
	}
	if _, err := a.CreateToken(ctx, api.TokenRequest{TTL: "24h", Uses: 10}); err != nil {
		t.Errorf("token at the policy's limits: %v", err)
	}
	// `runos-agent token policy`: read, refuse out of bounds, change.
	if p, err := a.SetTokenPolicy(ctx, api.TokenPolicy{}); err != nil || p.MaxTTL != "24h0m0s" || p.MaxUses != 10 {
		t.Errorf("policy = %+v, %v", p, err)
	}
	if _, err := a.SetTokenPolicy(ctx, api.TokenPolicy{MaxTTL: "87600h"}); !errors.Is(err, httpapi.ErrBadRequest) {
		t.Errorf("a ten-year policy: err = %v, want a 400", err)
	}
	if p, err := a.SetTokenPolicy(ctx, api.TokenPolicy{MaxTTL: "72h"}); err != nil || p.MaxTTL != "72h0m0s" || p.MaxUses != 10 {
		t.Fatalf("set policy = %+v, %v", p, err)
	}
	if _, err := a.CreateToken(ctx, api.TokenRequest{TTL: "48h"}); err != nil {
		t.Errorf("48 h token under a 72 h policy: %v", err)
	}
}

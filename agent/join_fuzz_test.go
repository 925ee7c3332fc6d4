package agent

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/httpapi"
)

// FuzzJoinHandler sends arbitrary bodies to a real member's join handler
// (its Admit, without TLS): no panic, no admission, and not one Raft entry,
// since no body the fuzzer makes holds a valid secret.
func FuzzJoinHandler(f *testing.F) {
	c := newCluster(f, 1)
	a := c.agents[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	good, err := a.CreateToken(ctx, api.TokenRequest{})
	if err != nil {
		f.Fatal(err)
	}
	// The node's own startup writes (init's UI credential) may still be
	// on their way; none may land while the fuzzer watches the log.
	eventually(f, "init's UI credential stored", func() error {
		if st, _ := a.store.State(); st.UI.AdminHash == "" {
			return errors.New("not yet")
		}
		return nil
	})
	tok, _ := datadir.ParseToken(good.Token)
	wrong := datadir.Token{CAFingerprint: tok.CAFingerprint, ID: tok.ID, Secret: strings.Repeat("0", 32)}.String()
	creds, err := datadir.NewCredentials("evil")
	if err != nil {
		f.Fatal(err)
	}
	req := api.JoinRequest{Token: wrong, Name: "evil", NodeID: datadir.NewNodeID(), PublicKey: creds.WGKey.PublicKey().String(),
		CSR: creds.CSR, Endpoints: []string{"127.0.0.1:9"}}
	f.Add(mustJSON(req))
	req.Token = datadir.NewToken(tok.CAFingerprint).String()
	f.Add(mustJSON(req))
	req.Endpoints = []string{"0.0.0.0:9", "[ff02::1]:1"}
	f.Add(mustJSON(req))
	f.Add([]byte(`{"token":"RO1` + tok.CAFingerprint + `::` + tok.ID + `.","name":"x"}`))
	f.Add([]byte("{"))
	f.Add([]byte(`{"token":null,"csr":"AAAA","endpoints":[1]}`))
	h, err := httpapi.NewJoinHandler(a, httpapi.JoinLimits{PerSourceBurst: 1 << 30, GlobalBurst: 1 << 30})
	if err != nil {
		f.Fatal(err)
	}
	before := a.store.Status().CommitIndex
	f.Fuzz(func(t *testing.T, body []byte) {
		// A short deadline: an unknown token ID waits for replication.
		rctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequestWithContext(rctx, http.MethodPost, "/v1/join", bytes.NewReader(body)))
		if rec.Code == http.StatusOK {
			t.Fatalf("admitted: %s", rec.Body)
		}
		if after := a.store.Status().CommitIndex; after != before {
			t.Fatalf("a refused join wrote to Raft (index %d -> %d); answer %d %s", before, after, rec.Code, rec.Body)
		}
		if names := func(s string) bool {
			return !bytes.Contains(body, []byte(s)) && bytes.Contains(rec.Body.Bytes(), []byte(s))
		}; names(a.Name()) || names(a.cfg.ClusterID) {
			t.Fatalf("the answer names the node or the cluster: %s", rec.Body)
		}
	})
}

package uitest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, agenttest.LeakOptions()...)
}

// uiCluster is a 3-node in-process cluster with UIs on free loopback
// ports, once every node holds the UI credential init made.
func uiCluster(t *testing.T) *agenttest.Cluster {
	t.Helper()
	// Raft at 2 s instead of agenttest's 300 ms: these tests pick the
	// leader's page once and drive it for a minute while other test
	// packages load both cores; a spurious election would move the cloud
	// session away from the page under test. Health timers stay fast.
	tuning := agenttest.FastTuning()
	tuning.RaftHeartbeat, tuning.RaftElection = 2*time.Second, 2*time.Second
	c := agenttest.Start(t, 3, agenttest.WithUI(), agenttest.WithLoopbackSockets(), agenttest.WithTuning(tuning))
	if c.AdminPassword() == "" {
		t.Fatal("init returned no admin password")
	}
	agenttest.Eventually(t, "UI credential in the cluster", func() error {
		for _, a := range c.Running() {
			if st, _ := a.Store().State(); st.UI.AdminHash == "" {
				return fmt.Errorf("%s has no UI credential yet", a.Name())
			}
		}
		// init's credential file is gone once the cluster holds it.
		if _, err := os.Stat(filepath.Join(c.Dirs()[0], "ui-init.json")); err == nil {
			return errors.New("ui-init.json still in node0's data dir")
		}
		return nil
	})
	return c
}

// uiClient is a Go HTTP client of one node's UI carrying a session cookie
// by hand (so one session can be presented to every node).
type uiClient struct {
	t      *testing.T
	cookie string
	csrf   string
}

func do(t *testing.T, method, url, body string, hdr map[string]string) (int, string, *http.Response) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp
}

func login(t *testing.T, uiURL, password string) (*uiClient, error) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"username": "admin", "password": password})
	code, text, resp := do(t, "POST", uiURL+"ui/login", string(body), nil)
	if code != 200 {
		return nil, fmt.Errorf("login on %s: %d %s", uiURL, code, text)
	}
	var info struct {
		CSRFToken string `json:"csrf_token"`
	}
	if err := json.Unmarshal([]byte(text), &info); err != nil {
		return nil, err
	}
	for _, c := range resp.Cookies() {
		if strings.HasPrefix(c.Name, "runos_session_") {
			return &uiClient{t: t, cookie: c.Name + "=" + c.Value, csrf: info.CSRFToken}, nil
		}
	}
	return nil, errors.New("no session cookie")
}

func (c *uiClient) do(method, url, body string) (int, string) {
	c.t.Helper()
	code, text, _ := do(c.t, method, url, body, map[string]string{"Cookie": c.cookie, "X-CSRF-Token": c.csrf})
	return code, text
}

// TestSessionsAcrossNodes: a session made on one node works on every node
// (the key is in Raft), a password reset through any node's unix socket
// ends every session everywhere, and a sign-out is honoured by all nodes.
func TestSessionsAcrossNodes(t *testing.T) {
	c := uiCluster(t)
	urls := []string{c.Agent(0).UIURL(), c.Agent(1).UIURL(), c.Agent(2).UIURL()}

	s1, err := login(t, urls[1], c.AdminPassword())
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range urls {
		if code, body := s1.do("GET", u+"v1/nodes", ""); code != 200 || !strings.Contains(body, `"node2"`) {
			t.Fatalf("session from node1 on %s: %d %s", u, code, body)
		}
	}
	// A change through another node's UI, with the session's CSRF token.
	code, body := s1.do("POST", urls[2]+"v1/tokens", `{"ttl":"10m","uses":1}`)
	if code != 200 || !strings.Contains(body, "runos-agent join") {
		t.Fatalf("token through node2's UI: %d %s", code, body)
	}
	if code, _, _ := do(t, "POST", urls[2]+"v1/tokens", `{}`, map[string]string{"Cookie": s1.cookie}); code != 403 {
		t.Fatalf("change without CSRF token: %d", code)
	}

	// The password can be reset only on the unix socket: the API the CLI
	// uses. Through the UI it is refused, and so it is by the API handler
	// itself on any TCP listener.
	if code, body := s1.do("POST", urls[0]+"v1/ui/reset-password", ""); code != 403 {
		t.Fatalf("reset through the UI: %d %s", code, body)
	}
	tcpAPI := httptest.NewServer(c.Agent(0).LocalAPIHandler())
	defer tcpAPI.Close()
	if code, body, _ := do(t, "POST", tcpAPI.URL+"/v1/ui/reset-password", "", nil); code != 403 || !strings.Contains(body, "unix socket") {
		t.Fatalf("reset over TCP: %d %s", code, body)
	}
	if code, _ := s1.do("GET", urls[0]+"v1/status", ""); code != 200 {
		t.Fatalf("the refused resets ended the session: %d", code)
	}
	// Every session on every node ends.
	pw, err := api.NewClient(c.Dirs()[2]).ResetUIPassword(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if pw.Password == "" || pw.Password == c.AdminPassword() || pw.User != "admin" {
		t.Fatalf("reset answered %+v", pw)
	}
	agenttest.Eventually(t, "old session refused on every node", func() error {
		for _, u := range urls {
			if code, _ := s1.do("GET", u+"v1/status", ""); code != 401 {
				return fmt.Errorf("%s answered %d", u, code)
			}
		}
		return nil
	})
	if _, err := login(t, urls[0], c.AdminPassword()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("old password after reset: %v", err)
	}
	var s2 *uiClient
	agenttest.Eventually(t, "new password accepted on node0", func() (err error) {
		s2, err = login(t, urls[0], pw.Password)
		return err
	})

	// Sign-out is recorded in Raft: the copied cookie dies everywhere.
	if code, body := s2.do("POST", urls[0]+"ui/logout", ""); code != 204 {
		t.Fatalf("logout: %d %s", code, body)
	}
	agenttest.Eventually(t, "signed-out session refused on every node", func() error {
		for _, u := range urls {
			if code, _ := s2.do("GET", u+"v1/nodes", ""); code != 401 {
				return fmt.Errorf("%s answered %d", u, code)
			}
		}
		return nil
	})
}

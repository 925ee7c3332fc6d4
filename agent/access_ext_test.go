package agent_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/raftstore"
)

// The local API's user-access routes: what a user's mistakes answer (status
// and message) and that a refused request leaves nothing behind; a device
// added through one node is listed, moved and removed through another.
func TestAccessAPI(t *testing.T) {
	c := agenttest.Start(t, 2)
	h0, h1 := c.Agent(0).LocalAPIHandler(), c.Agent(1).LocalAPIHandler()
	call := func(h http.Handler, method, path, body string, out any) (int, string) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
		if out != nil && rec.Code == http.StatusOK {
			if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
				t.Fatalf("%s %s: %v: %s", method, path, err, rec.Body)
			}
		}
		return rec.Code, rec.Body.String()
	}
	key, _ := mesh.GeneratePrivateKey()
	pub := key.PublicKey().String()
	for _, tc := range []struct {
		body string
		code int
		msg  string
	}{
		{`{"name":"x","via":"nosuch","endpoint":"vpn.example.com"}`, 404, "no such node"},
		{`{"name":"x","public_key":"abc","endpoint":"vpn.example.com"}`, 400, "bad public key"},
		{`{"name":"Not A Name","endpoint":"vpn.example.com"}`, 400, "invalid device name"},
		{`{"name":"x","endpoint":"a b"}`, 400, "want host or host:port"},
		// In-process nodes advertise loopback only: no address a device can dial.
		{`{"name":"x"}`, 400, "give one with --endpoint"},
		{`{"name":`, 400, "malformed"},
	} {
		code, body := call(h0, "POST", "/v1/access", tc.body, nil)
		if code != tc.code || !strings.Contains(body, tc.msg) {
			t.Errorf("POST %s: %d %s, want %d %q", tc.body, code, body, tc.code, tc.msg)
		}
	}
	if st, _ := c.Agent(0).Store().State(); len(st.Access.Devices) != 0 || st.Access.PublicKey != "" {
		t.Fatalf("refused adds left %+v", st.Access)
	}

	var added api.AccessConfig
	if code, body := call(h0, "POST", "/v1/access", `{"name":"laptop","via":"node1","public_key":"`+pub+`","endpoint":"vpn.example.com"}`, &added); code != 200 {
		t.Fatalf("add: %d %s", code, body)
	}
	if added.Device.Address != "172.24.200.2" || added.Device.Via != "node1" || len(added.QRPNG) == 0 ||
		!strings.Contains(added.Config, "PrivateKey = <your private key>") || !strings.Contains(added.Config, "Endpoint = vpn.example.com:51821") {
		t.Fatalf("add answered %+v", added)
	}
	if code, body := call(h1, "POST", "/v1/access", `{"name":"laptop","endpoint":"vpn.example.com"}`, nil); code != 409 || !strings.Contains(body, "already taken") {
		t.Errorf("duplicate name: %d %s", code, body)
	}
	if code, body := call(h1, "POST", "/v1/access", `{"name":"other","public_key":"`+pub+`","endpoint":"vpn.example.com"}`, nil); code != 409 || !strings.Contains(body, "already used") {
		t.Errorf("duplicate key: %d %s", code, body)
	}
	// Listed from the other node, with the entry node's answer.
	agenttest.Eventually(t, "node1 lists the device", func() error {
		var list api.AccessDevices
		if code, body := call(h1, "GET", "/v1/access", "", &list); code != 200 || len(list.Devices) != 1 || list.Devices[0].Name != "laptop" {
			return &testErr{body}
		}
		if st, _ := c.Agent(1).Store().State(); func() bool { a, ok := st.NodeWG1Addr("node1"); return !ok || a != raftstore.AccessGateway }() {
			return &testErr{"node1 has no wg1 address"}
		}
		return nil
	})
	var moved api.AccessConfig
	if code, body := call(h1, "POST", "/v1/access/laptop/move", `{"to":"node0","endpoint":"vpn2.example.com"}`, &moved); code != 200 {
		t.Fatalf("move: %d %s", code, body)
	}
	if moved.Device.Via != "node0" || moved.Device.Address != added.Device.Address ||
		strings.Replace(added.Config, "vpn.example.com", "vpn2.example.com", 1) != moved.Config {
		t.Fatalf("moved config:\n%s\nwas:\n%s", moved.Config, added.Config)
	}
	if code, body := call(h1, "POST", "/v1/access/laptop/move", `{"to":"nosuch"}`, nil); code != 404 {
		t.Errorf("move to an unknown node: %d %s", code, body)
	}
	if code, body := call(h1, "DELETE", "/v1/access/nosuch", "", nil); code != 404 || !strings.Contains(body, "no such device") {
		t.Errorf("remove unknown: %d %s", code, body)
	}
	if code, body := call(h1, "DELETE", "/v1/access/laptop", "", nil); code != 204 {
		t.Fatalf("remove: %d %s", code, body)
	}
	agenttest.Eventually(t, "every node drops the device", func() error {
		for _, a := range c.Running() {
			if st, _ := a.Store().State(); len(st.Access.Devices) != 0 {
				return &testErr{a.Name() + " still has it"}
			}
		}
		return nil
	})
}

type testErr struct{ s string }

func (e *testErr) Error() string { return e.s }

package uitest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/ui"
)

// memAuthority keeps the UI credential in memory: the server under test
// is the real ui.Server, only not inside an agent.
type memAuthority struct {
	cred ui.Credential
	mu   sync.Mutex
	// revoked is guarded by mu.
	revoked map[string]time.Time
}

func newMemAuthority(t *testing.T, password string) *memAuthority {
	t.Helper()
	hash, err := ui.HashPassword(password)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ui.NewSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	return &memAuthority{cred: ui.Credential{PasswordHash: hash, SessionKey: key}, revoked: map[string]time.Time{}}
}

func (m *memAuthority) Credential() (ui.Credential, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.cred
	c.Revoked = map[string]time.Time{}
	for id, until := range m.revoked {
		c.Revoked[id] = until
	}
	return c, nil
}

func (m *memAuthority) RevokeSession(ctx context.Context, id string, until time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.revoked[id] = until
	return nil
}

// managedKubeStatus is what GET /v1/kube/status answers on a managed
// cluster of node0..node2: node0 a Ready control-plane node, node1 with a
// crash-looping kubelet (its last error carries markup, which must stay
// text), node2 unreachable.
func managedKubeStatus() *api.KubeStatus {
	since := time.Now().Add(-90 * time.Second)
	comp := func(name, version string) api.KubeComponent {
		return api.KubeComponent{Name: name, Running: true, PID: 4000 + len(name), Version: version, Since: since}
	}
	return &api.KubeStatus{
		Managed: true, Version: api.DefaultKubeVersion, EnabledAt: time.Now().Add(-time.Hour),
		Etcd: []api.KubeEtcdMember{{Node: "node0", Phase: "bootstrap"}},
		Nodes: []api.KubeNodeStatus{
			{Name: "node0", Ready: true, Components: []api.KubeComponent{
				comp("api-balancer", ""), comp("cluster-dns", ""), comp("containerd", "1.6.20"), comp("etcd", "3.4.23"),
				comp("kube-apiserver", "v1.34.4"), comp("kube-controller-manager", "v1.34.4"), comp("kube-proxy", "v1.34.4"),
				comp("kube-scheduler", "v1.34.4"), comp("kubelet", "v1.34.4"),
			}},
			{Name: "node1", Ready: false, Components: []api.KubeComponent{
				comp("containerd", "1.6.20"),
				{Name: "kubelet", Version: "v1.34.4", Restarts: 7, LastError: `exit status 1: <img src=x id=xss onerror="window.__xss=1">bad flag --foo`},
			}},
			{Name: "node2", Error: "node2 cannot be reached: connection refused", Components: []api.KubeComponent{}},
		},
	}
}

// TestBrowserManagedKube: the nodes table and a node's page show managed
// Kubernetes as GET /v1/kube/status reports it. The UI server is the real
// one over a real cluster's local API; only that endpoint answers a
// managed cluster (running one needs root and the Kubernetes binaries:
// e2e TestKubeManaged does that).
func TestBrowserManagedKube(t *testing.T) {
	b := newBrowser(t)
	recordCSP(b)
	c := uiCluster(t)
	status, err := json.Marshal(managedKubeStatus())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	asked := 0 // guarded by mu
	agentAPI := c.Agent(0).LocalAPIHandler()
	apiHandler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/v1/kube/status" {
			mu.Lock()
			asked++
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.Write(status)
			return
		}
		agentAPI.ServeHTTP(w, r)
	})
	const password = "kube-test-password"
	srv, err := ui.New(ui.Config{API: apiHandler, Auth: newMemAuthority(t, password), Node: "node0", Cluster: "kube"}, agenttest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer func() {
		// The page's events long poll would hold Close for up to 30 s.
		hs.CloseClientConnections()
		hs.Close()
	}()
	base := hs.URL + "/"

	b.run("sign in", chromedp.Navigate(base+"#/nodes"), chromedp.WaitVisible(chromedp.CSS("#password")),
		chromedp.SendKeys(chromedp.CSS("#password"), password), chromedp.Click(chromedp.CSS("#submit")),
		chromedp.WaitVisible(chromedp.CSS("table.nodes-table")))
	cell := func(node string) string {
		return fmt.Sprintf(`document.querySelector('tr.node-row[data-node=%q] td.kube')`, node)
	}
	b.waitJS("Kubernetes column", cell("node0")+`?.dataset.kube === 'ready' && `+cell("node1")+`?.dataset.kube === 'notready' && `+cell("node2")+`?.dataset.kube === 'notready'`)
	for node, want := range map[string]string{"node0": "Ready", "node1": "NotReady", "node2": "NotReady"} {
		if got := eval[string](b, cell(node)+`.textContent`); got != want {
			t.Errorf("%s's Kubernetes cell says %q, want %q", node, got, want)
		}
	}
	if got := eval[string](b, cell("node2")+`.title`); !strings.Contains(got, "cannot be reached") {
		t.Errorf("node2's cell does not explain itself: title %q", got)
	}
	b.screenshot("kube-nodes")

	// A control-plane node: every component running, with its version.
	b.run("node0", chromedp.Navigate(base+"#/nodes/node0"))
	b.waitJS("node0's components", `document.querySelectorAll('#kube-node .kube-components tbody tr').length === 9`)
	if got := eval[string](b, `document.querySelector('#kube-node h2').textContent`); !strings.Contains(got, "Ready") || !strings.Contains(got, api.DefaultKubeVersion) {
		t.Errorf("node0's Kubernetes heading %q", got)
	}
	row := func(comp string) string {
		return fmt.Sprintf(`document.querySelector('#kube-node tr[data-component=%q]')`, comp)
	}
	for comp, version := range map[string]string{"kube-apiserver": "v1.34.4", "etcd": "3.4.23", "containerd": "1.6.20", "cluster-dns": "–"} {
		got := eval[[]string](b, `[...`+row(comp)+`.querySelectorAll('td')].map((td) => td.innerText.trim())`)
		if len(got) != 6 || !strings.HasPrefix(got[0], comp) || got[1] != "running" || got[2] != version || got[3] != "0" || got[5] != "–" {
			t.Errorf("%s's row: %q", comp, got)
		}
	}
	if txt := eval[string](b, `document.getElementById('kube-node').innerText`); strings.Contains(txt, "null") || strings.Contains(txt, "undefined") {
		t.Errorf("node0's Kubernetes card shows a missing value: %q", txt)
	}
	b.screenshot("kube-node-detail")

	// A node whose kubelet keeps failing: down, its restarts and the last
	// error, as text.
	b.run("node1", chromedp.Navigate(base+"#/nodes/node1"))
	b.waitJS("node1's kubelet down", row("kubelet")+`?.querySelector('[data-status]')?.dataset.status === 'down'`)
	got := eval[[]string](b, `[...`+row("kubelet")+`.querySelectorAll('td')].map((td) => td.innerText.trim())`)
	if len(got) != 6 || got[3] != "7" || !strings.Contains(got[5], `<img src=x id=xss`) || !strings.Contains(got[5], "bad flag --foo") {
		t.Errorf("node1's kubelet row: %q", got)
	}
	if eval[bool](b, `document.getElementById('xss') !== null || window.__xss === 1`) {
		t.Error("a component's last error was rendered as markup")
	}
	if got := eval[string](b, `document.querySelector('#kube-node h2').textContent`); !strings.Contains(got, "NotReady") {
		t.Errorf("node1's Kubernetes heading %q", got)
	}
	b.screenshot("kube-node-failing")

	// An unreachable node: why its components are unknown.
	b.run("node2", chromedp.Navigate(base+"#/nodes/node2"))
	b.waitJS("node2's error", `document.getElementById('kube-node-error')?.textContent.includes('cannot be reached')`)

	// The status asks every node: the pages share it instead of asking on
	// every 2 s refresh.
	mu.Lock()
	n := asked
	mu.Unlock()
	b.run("nodes again", chromedp.Navigate(base+"#/nodes"))
	b.waitJS("table", cell("node0")+`?.dataset.kube === 'ready'`)
	time.Sleep(4 * time.Second)
	mu.Lock()
	more := asked - n
	mu.Unlock()
	if more > 2 {
		t.Errorf("the page asked for the Kubernetes status %d times in about 4 s", more)
	}

	// A phone: the column stays (it says something), the page fits.
	b.run("phone", chromedp.EmulateViewport(390, 844), chromedp.Navigate(base+"#/nodes"))
	b.waitJS("column on a phone", cell("node0")+`?.offsetWidth > 0`)
	if w := eval[int](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("nodes page is %d px wide on a 390 px phone", w)
	}
	b.run("phone node", chromedp.Navigate(base+"#/nodes/node1"))
	b.waitJS("components on a phone", row("kubelet")+` !== null`)
	if w := eval[int](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("node page is %d px wide on a 390 px phone", w)
	}
	b.screenshot("phone-kube-node")
	b.run("desktop", chromedp.EmulateViewport(1280, 900))

	checkCSP(b, "managed Kubernetes pages")
}

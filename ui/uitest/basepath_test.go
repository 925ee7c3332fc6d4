package uitest

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/runos/runos-agent/ui"
)

// TestBrowserUnderBasePath serves the same files the way the cloud console
// will: under /clusters/ID/, with its own session endpoint, the API under
// the same prefix and no per-node v1/status. Every request the page makes
// must stay under the prefix, and the pages must work without a status.
func TestBrowserUnderBasePath(t *testing.T) {
	b := newBrowser(t)
	c := uiCluster(t)
	const prefix = "/clusters/c1/"
	agentAPI := c.Agent(1).LocalAPIHandler()

	var mu sync.Mutex
	var outside []string
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+prefix+"{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := ui.RenderIndex(w, ui.PageConfig{Base: prefix, Mode: "cloud"}); err != nil {
			t.Error(err)
		}
	})
	mux.HandleFunc("GET "+prefix+"ui/session", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"user":"operator","csrf_token":"cloud-token"}`))
	})
	mux.Handle(prefix+"v1/", http.StripPrefix(strings.TrimSuffix(prefix, "/"), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/status" {
			http.Error(w, `{"error":"no per-node status in the mirror"}`, http.StatusNotFound)
			return
		}
		if r.Method != http.MethodGet && r.Header.Get("X-CSRF-Token") != "cloud-token" {
			t.Errorf("%s %s without the session's CSRF token", r.Method, r.URL.Path)
		}
		agentAPI.ServeHTTP(w, r)
	})))
	mux.Handle(prefix, http.StripPrefix(strings.TrimSuffix(prefix, "/"), http.FileServerFS(ui.Assets())))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, prefix) && r.URL.Path != "/favicon.ico" {
			mu.Lock()
			outside = append(outside, r.Method+" "+r.URL.Path)
			mu.Unlock()
		}
		mux.ServeHTTP(w, r)
	}))
	defer func() {
		// The page's events long poll would hold Close for up to 30 s.
		srv.CloseClientConnections()
		srv.Close()
	}()
	base := srv.URL + prefix

	b.run("nodes", chromedp.Navigate(base+"#/nodes"))
	b.waitJS("three healthy nodes", `document.querySelectorAll('tr.node-row.healthy').length === 3`)
	// The mirror cannot ask nodes for their Kubernetes components.
	if n := eval[int](b, `document.querySelectorAll('th.kube, td.kube').length`); n != 0 {
		t.Errorf("the cloud console shows %d Kubernetes cells", n)
	}
	if who := eval[string](b, `document.getElementById('who').textContent`); who != "operator" {
		t.Errorf("signed-in user shown as %q", who)
	}
	b.run("overview", chromedp.Navigate(base+"#/"))
	b.waitJS("overview without a node status", `document.querySelector('.count.healthy')?.textContent === '3' && document.querySelectorAll('.tile').length === 4`)
	if text := eval[string](b, `document.querySelector('.tiles').innerText`); !strings.Contains(text, "node0") {
		t.Errorf("leader missing from the overview: %q", text)
	}
	b.screenshot("cloud-overview")
	b.run("mesh", chromedp.Navigate(base+"#/mesh"))
	b.waitJS("mesh with unmeasured links", `document.querySelectorAll('svg .mesh-node').length === 3 && document.querySelectorAll('svg .link.unknown').length === 3`)
	b.run("node", chromedp.Navigate(base+"#/nodes/node2"))
	b.waitJS("node page", `document.body.innerText.includes('Paths are measured by each node')`)
	if eval[bool](b, `document.getElementById('kube-node') !== null`) {
		t.Error("the cloud console's node page has a Kubernetes card")
	}
	if txt := eval[string](b, `document.getElementById('main').innerText`); strings.Contains(txt, "null") || strings.Contains(txt, "undefined") {
		t.Errorf("the cloud console's node page shows a missing value: %q", txt)
	}
	b.run("token", chromedp.Navigate(base+"#/tokens"), chromedp.WaitVisible(chromedp.CSS("#token-create")), chromedp.Click(chromedp.CSS("#token-create")))
	b.waitJS("join command", `document.getElementById('join-command')?.textContent.includes('runos-agent join')`)

	mu.Lock()
	defer mu.Unlock()
	if len(outside) > 0 {
		t.Errorf("the page requested paths outside %s: %v", prefix, outside)
	}
}

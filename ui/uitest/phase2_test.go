package uitest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/runos/runos-agent/agent"
	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloud"
	"github.com/runos/runos-agent/kube/kubetest"
)

// startCloud runs a real runos-cloud in-process: TLS for the clusters and
// the console on 127.0.0.1.
func startCloud(t *testing.T) *cloud.Server {
	t.Helper()
	s, err := cloud.New(cloud.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", ConsoleListen: "127.0.0.1:0"}, agenttest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func leaderOf(t *testing.T, c *agenttest.Cluster) *agent.Agent {
	t.Helper()
	var l *agent.Agent
	agenttest.Eventually(t, "a leader", func() error {
		if l = c.Leader(); l == nil {
			return fmt.Errorf("no leader")
		}
		return nil
	})
	return l
}

// setValue fills an input or textarea at once (SendKeys types a long
// kubeconfig too slowly).
func setValue(b *browser, sel, value string) {
	b.t.Helper()
	v, _ := json.Marshal(value)
	eval[bool](b, fmt.Sprintf(`(() => { const e = document.querySelector(%q); e.value = %s; return true; })()`, sel, v))
}

// viewShot saves what the viewport shows (a phone's screen, not the whole
// long page).
func (b *browser) viewShot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	chromedp.Run(ctx, chromedp.Evaluate[bool](`window.scrollTo(0, 0) || true`))
	time.Sleep(150 * time.Millisecond)
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.out, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// recordCSP makes every page the tab loads keep its Content-Security-Policy
// violations in localStorage (per origin, across reloads).
func recordCSP(b *browser) {
	b.t.Helper()
	b.run("record CSP violations", chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: `
			document.addEventListener('securitypolicyviolation', (e) => {
				const v = JSON.parse(localStorage.getItem('csp') || '[]');
				v.push(e.violatedDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sourceFile || '') + ':' + e.lineNumber);
				localStorage.setItem('csp', JSON.stringify(v));
			});`})
		return err
	}))
}

func checkCSP(b *browser, where string) {
	b.t.Helper()
	if v := eval[string](b, `localStorage.getItem('csp') || ''`); v != "" {
		b.t.Errorf("%s: the page broke its Content-Security-Policy: %s", where, v)
	}
}

// TestBrowserCloudServicesApps drives the phase-2 pages in Chromium against
// a real 3-node cluster, a real runos-cloud and (when built) a real
// kube-apiserver: the new pages refuse to show without a session; connect
// the cluster to the cloud from the Cloud page and watch it become
// connected (also on the overview); the catalog; a deploy with a bad
// override refused with the server's message, then a deploy that shows up
// pending (no Kubernetes target yet), then applied once the kubeconfig is
// set on the page; connection details revealed on request; an app using
// the instance; deletes with confirmation; then the cloud console: its
// sign-in, the cluster list, and the cluster's nodes, overview, a join
// token and a service deploy and delete (as cloud commands) through the
// shared UI.
func TestBrowserCloudServicesApps(t *testing.T) {
	b := newBrowser(t)
	recordCSP(b)
	c := uiCluster(t)
	cs := startCloud(t)
	leader := leaderOf(t, c)
	base := leader.UIURL()

	// Without a session: the new pages end on the sign-in page, their API
	// paths and scripts answer 401.
	for _, route := range []string{"#/cloud", "#/services", "#/services/deploy/redis", "#/apps"} {
		b.run("open "+route, chromedp.Navigate(base+route), chromedp.WaitVisible(chromedp.CSS("#login")))
		if loc := b.location(); loc != base+"login"+route {
			t.Errorf("%s without a session landed on %s", route, loc)
		}
	}
	for _, p := range []string{"v1/cloud", "v1/catalog", "v1/services", "v1/apps", "v1/kube", "js/pages/cloud.js", "js/pages/services.js", "js/pages/apps.js"} {
		if code, body, _ := do(t, "GET", base+p, "", nil); code != 401 {
			t.Errorf("GET %s without a session: %d %s", p, code, body)
		}
	}
	for _, p := range []string{"v1/cloud/connect", "v1/cloud/disconnect", "v1/services", "v1/apps"} {
		if code, body, _ := do(t, "POST", base+p, "{}", map[string]string{"Content-Type": "application/json"}); code != 401 {
			t.Errorf("POST %s without a session: %d %s", p, code, body)
		}
	}

	b.run("sign in", chromedp.Navigate(base+"#/cloud"), chromedp.WaitVisible(chromedp.CSS("#password")),
		chromedp.SendKeys(chromedp.CSS("#password"), c.AdminPassword()), chromedp.Click(chromedp.CSS("#submit")),
		chromedp.WaitVisible(chromedp.CSS("#cloud-form")))
	b.screenshot("cloud-connect")

	// A token that is not one is refused with the cloud link's message.
	setValue(b, "#cloud-url-input", cs.URL())
	setValue(b, "#cloud-token-input", "RC1-not-a-token")
	b.run("bad token", chromedp.Click(chromedp.CSS("#cloud-connect")), chromedp.WaitVisible(chromedp.CSS("#cloud-form + div .error")))

	tok, err := cs.CreateToken("lab", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	setValue(b, "#cloud-token-input", tok.Token)
	b.run("connect", chromedp.Click(chromedp.CSS("#cloud-connect")), chromedp.WaitVisible(chromedp.CSS("#cloud-status")))
	b.waitJS("connected", `document.querySelector('#cloud-status [data-status]')?.textContent === 'connected'`)
	b.waitJS("in sync", `document.getElementById('cloud-pending')?.textContent.startsWith('0')`)
	if u := eval[string](b, `document.getElementById('cloud-url').textContent`); u != cs.URL() {
		t.Errorf("cloud URL shown as %q", u)
	}
	b.screenshot("cloud-status")
	// A follower says who holds the session instead of pretending.
	var follower *agent.Agent
	for _, a := range c.Running() {
		if a != leader {
			follower = a
			break
		}
	}
	b.run("follower's cloud page", chromedp.Navigate(follower.UIURL()+"#/cloud"))
	b.waitJS("standby naming the leader", `document.querySelector('#cloud-status [data-status]')?.textContent === 'standby' && document.getElementById('cloud-status').innerText.includes(`+fmt.Sprintf("%q", leader.Name())+`)`)
	b.run("overview", chromedp.Navigate(base+"#/"))
	b.waitJS("cloud tile connected", `document.querySelector('.tile.cloud .link-state')?.dataset.state === 'connected'`)
	b.screenshot("overview-cloud")

	// Services: the catalog with tiers.
	b.run("services", chromedp.Navigate(base+"#/services"))
	b.waitJS("catalog", `document.querySelectorAll('#catalog .svc').length >= 20 && document.querySelector('#catalog .svc[data-service=postgres] .tier[data-tier=ha]') !== null`)
	if n := eval[int](b, `document.querySelectorAll('#catalog .tag.ha').length`); n < 10 {
		t.Errorf("only %d HA tiers marked in the catalog", n)
	}
	b.waitJS("kube target not set", `document.getElementById('kube-card')?.innerText.includes('not set')`)
	b.screenshot("services-catalog")

	// Deploy: a bad override is refused with the server's message.
	b.run("deploy form", chromedp.Click(chromedp.CSS(`#catalog .svc[data-service=redis] .deploy`)), chromedp.WaitVisible(chromedp.CSS("#deploy-form")))
	setValue(b, `#deploy-form input[data-key=storage]`, "lots")
	b.run("bad deploy", chromedp.Click(chromedp.CSS("#deploy-submit")), chromedp.WaitVisible(chromedp.CSS("#deploy-result .error")))
	if msg := eval[string](b, `document.querySelector('#deploy-result .error').textContent`); !strings.Contains(msg, "storage") {
		t.Errorf("bad override message: %q", msg)
	}
	b.screenshot("services-deploy-error")
	if n := len(leader.Services("")); n != 0 {
		t.Fatalf("a refused deploy left %d instances", n)
	}
	setValue(b, `#deploy-form input[data-key=storage]`, "2Gi")
	b.run("deploy", chromedp.Click(chromedp.CSS("#deploy-submit")))
	b.waitJS("instance page", `location.hash.startsWith('#/services/redis-') && document.getElementById('svc-status') !== null`)
	osid := strings.TrimPrefix(eval[string](b, `location.hash`), "#/services/")
	b.waitJS("pending without a target", `document.querySelector('#svc-status [data-status]')?.dataset.status === 'pending'`)
	if reason := eval[string](b, `document.getElementById('svc-status').innerText`); !strings.Contains(strings.ToLower(reason), "kube") {
		t.Errorf("pending without a reason naming the missing target: %q", reason)
	}
	b.run("list", chromedp.Navigate(base+"#/services"))
	b.waitJS("instance listed", fmt.Sprintf(`document.querySelector('tr.service-row[data-osid=%q]') !== null`, osid))
	b.screenshot("services")

	if kubetest.Available() == nil {
		// The real API server: set the target on the page; the instance
		// gets applied.
		srv := kubetest.Start(t)
		setValue(b, "#kube-config", string(srv.Kubeconfig))
		b.run("kube set", chromedp.Click(chromedp.CSS("#kube-save")))
		b.waitJS("kube target set", fmt.Sprintf(`document.getElementById('kube-server')?.textContent === %q`, srv.URL))
		b.waitJS("instance applied", fmt.Sprintf(`['applying', 'ready'].includes(document.querySelector('tr.service-row[data-osid=%q]')?.querySelector('[data-status]')?.dataset.status)`, osid))
		b.screenshot("services-applied")
	} else {
		t.Logf("no real kube-apiserver (%v): the instance stays pending, as it should", kubetest.Available())
	}

	// Connection details: the password only on request.
	b.run("instance", chromedp.Navigate(base+"#/services/"+osid), chromedp.WaitVisible(chromedp.CSS("#reveal")))
	if txt := eval[string](b, `document.getElementById('connection').innerText`); strings.Contains(txt, "redis://:") && !strings.Contains(txt, "••") {
		t.Errorf("secret shown before reveal: %q", txt)
	}
	info, err := leader.ServiceInfo(osid, true)
	if err != nil || info.Connection == nil || info.Connection.Password == "" {
		t.Fatalf("service info: %+v %v", info, err)
	}
	if strings.Contains(eval[string](b, `document.body.innerText`), info.Connection.Password) {
		t.Error("password on the page before reveal")
	}
	b.run("reveal", chromedp.Click(chromedp.CSS("#reveal")))
	b.waitJS("password revealed", fmt.Sprintf(`document.getElementById('conn-password')?.innerText.includes(%q)`, info.Connection.Password))
	b.screenshot("service-detail")

	// Readable on a phone.
	b.run("phone services", chromedp.EmulateViewport(390, 844), chromedp.Navigate(base+"#/services"))
	b.waitJS("services on a phone", `document.querySelectorAll('tr.service-row').length === 1 && document.querySelectorAll('#catalog .svc').length >= 20`)
	if w := eval[int](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("services page is %d px wide on a 390 px phone", w)
	}
	b.viewShot("phone-services")
	b.run("phone cloud", chromedp.Navigate(base+"#/cloud"))
	b.waitJS("cloud on a phone", `document.getElementById('cloud-status') !== null`)
	if w := eval[int](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("cloud page is %d px wide on a 390 px phone", w)
	}
	b.screenshot("phone-cloud")
	b.run("desktop dark", chromedp.EmulateViewport(1280, 900), setColorScheme("dark"), chromedp.Navigate(base+"#/services"))
	b.waitJS("services in the dark", `document.querySelectorAll('tr.service-row').length === 1 && document.querySelectorAll('#catalog .svc').length >= 20`)
	b.viewShot("services-dark")
	b.run("light", setColorScheme("light"))

	// An app using the instance.
	b.run("apps", chromedp.Navigate(base+"#/apps"), chromedp.WaitVisible(chromedp.CSS(`#app-uses input[value="`+osid+`"]`)))
	setValue(b, "#app-name", "web")
	setValue(b, "#app-image", "nginx:1.27")
	setValue(b, "#app-port", "8080")
	setValue(b, "#app-env", "GREETING=hello")
	b.run("use", chromedp.Click(chromedp.CSS(`#app-uses input[value="`+osid+`"]`)))
	b.screenshot("apps-deploy")
	b.run("deploy app", chromedp.Click(chromedp.CSS("#app-deploy")))
	b.waitJS("app page", `location.hash.startsWith('#/apps/') && document.getElementById('app-status') !== null`)
	b.waitJS("app uses the instance", fmt.Sprintf(`document.body.innerText.includes(%q) && document.body.innerText.includes('REDIS_URL')`, osid))
	b.screenshot("app-detail")
	appID := strings.TrimPrefix(eval[string](b, `location.hash`), "#/apps/")
	b.run("apps list", chromedp.Navigate(base+"#/apps"))
	b.waitJS("app listed", fmt.Sprintf(`document.querySelector('tr.app-row[data-osid=%q]') !== null`, appID))
	b.screenshot("apps")

	// Deletes ask first.
	b.run("delete app", chromedp.Navigate(base+"#/apps/"+appID), chromedp.WaitVisible(chromedp.CSS("[data-action=ask]")),
		chromedp.Click(chromedp.CSS("[data-action=ask]")), chromedp.WaitVisible(chromedp.CSS("[data-action=confirm]")),
		chromedp.Click(chromedp.CSS("[data-action=confirm]")))
	b.waitJS("back on apps", `location.hash === '#/apps'`)
	b.run("delete instance", chromedp.Navigate(base+"#/services/"+osid), chromedp.WaitVisible(chromedp.CSS("[data-action=ask]")),
		chromedp.Click(chromedp.CSS("[data-action=ask]")), chromedp.WaitVisible(chromedp.CSS("[data-action=confirm]")))
	b.screenshot("service-delete-confirm")
	b.run("confirm", chromedp.Click(chromedp.CSS("[data-action=confirm]")))
	b.waitJS("back on services", `location.hash === '#/services'`)
	agenttest.Eventually(t, "instance deleting or gone", func() error {
		for _, s := range leader.Services("") {
			if s.OSID == osid && s.Status != "deleting" {
				return fmt.Errorf("%s is %s", osid, s.Status)
			}
		}
		return nil
	})

	checkCSP(b, "agent UI")

	// The cloud console: sign in, the cluster list, the shared UI.
	console := "http://" + cs.ConsoleAddr() + "/"
	b.run("console", chromedp.Navigate(console), chromedp.WaitVisible(chromedp.CSS("#login")))
	if loc := b.location(); loc != console+"login" {
		t.Errorf("console without a session at %s", loc)
	}
	if txt := eval[string](b, `document.body.innerText`); !strings.Contains(txt, "runos-cloud admin reset-password") {
		t.Errorf("console sign-in page: %q", txt)
	}
	b.screenshot("console-login")
	pw := cs.InitialPassword()
	b.run("console sign in", chromedp.SendKeys(chromedp.CSS("#password"), pw), chromedp.Click(chromedp.CSS("#submit")),
		chromedp.WaitVisible(chromedp.CSS("#clusters")))
	row := `document.querySelector('tr.cluster-row[data-cluster="` + tok.ClusterID + `"]')`
	b.waitJS("cluster listed, connected, 3 nodes", row+`?.innerText.includes('connected') && `+row+`.querySelectorAll('td')[4].textContent === '3'`)
	b.screenshot("console-clusters")
	// A registration token for another cluster, from the list page.
	setValue(b, "#reg-name", "edge")
	b.run("registration token", chromedp.Click(chromedp.CSS("#reg-create")))
	b.waitJS("connect command", `document.getElementById('connect-command')?.textContent.includes('runos-agent cloud connect --token RC1')`)
	b.waitJS("edge listed, token issued", `[...document.querySelectorAll('tr.cluster-row')].some((r) => r.innerText.includes('edge') && r.innerText.includes('token issued'))`)
	b.screenshot("console-register")
	b.run("console on a phone", chromedp.EmulateViewport(390, 844))
	if w := eval[int](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("console cluster list is %d px wide on a 390 px phone", w)
	}
	b.viewShot("phone-console-clusters")
	b.run("console desktop", chromedp.EmulateViewport(1280, 900))
	href := eval[string](b, row+`.querySelector('a').href`)
	if href != console+"clusters/"+tok.ClusterID+"/" {
		t.Errorf("cluster link %q", href)
	}
	b.run("open cluster", chromedp.Navigate(href))
	b.waitJS("cluster overview", `document.querySelector('.count.healthy')?.textContent === '3'`)
	b.waitJS("cloud tile", `document.querySelector('.tile.cloud .link-state')?.dataset.state === 'connected'`)
	if n := eval[int](b, `[...document.querySelectorAll('#nav a')].filter((a) => ['Services', 'Apps'].includes(a.textContent)).length`); n != 2 {
		t.Errorf("the console shows %d of the Services and Apps pages, want both", n)
	}
	b.screenshot("console-overview")

	// Services from the console: the catalog, a deploy sent as a cloud
	// command whose result is the instance, listed from the mirror with
	// its live status; no kubeconfig form and no reveal (credentials stay
	// in the cluster); delete with confirmation.
	cbase := console + "clusters/" + tok.ClusterID + "/"
	b.run("console services", chromedp.Navigate(cbase+"#/services"))
	b.waitJS("console catalog", `document.querySelectorAll('#catalog .svc').length >= 20`)
	b.waitJS("kubeconfig stays in the cluster", `document.getElementById('kube-cloud-note') !== null && document.getElementById('kube-config') === null`)
	b.run("console deploy form", chromedp.Navigate(cbase+"#/services/deploy/postgres"), chromedp.WaitVisible(chromedp.CSS("#deploy-form")))
	setValue(b, `#deploy-form input[data-key=storage]`, "3Gi")
	b.run("console deploy", chromedp.Click(chromedp.CSS("#deploy-submit")))
	b.waitJS("console instance page", `location.hash.startsWith('#/services/postgres-') && document.getElementById('svc-status') !== null`)
	cosid := strings.TrimPrefix(eval[string](b, `location.hash`), "#/services/")
	b.waitJS("credentials stay in the cluster", `document.getElementById('creds-stay')?.innerText.includes('stay in the cluster') && document.getElementById('reveal') === null`)
	b.screenshot("console-service-detail")
	var mine []string
	for _, s := range leader.Services("") {
		if s.Service == "postgres" {
			mine = append(mine, s.OSID)
		}
	}
	if len(mine) != 1 || mine[0] != cosid {
		t.Fatalf("the console's deploy made %v in the cluster, the page shows %s", mine, cosid)
	}
	b.run("console services list", chromedp.Navigate(cbase+"#/services"))
	b.waitJS("listed from the mirror with its status", fmt.Sprintf(`['pending', 'applying', 'ready'].includes(document.querySelector('tr.service-row[data-osid=%q] [data-status]')?.dataset.status)`, cosid))
	b.screenshot("console-services")
	b.run("console delete", chromedp.Navigate(cbase+"#/services/"+cosid), chromedp.WaitVisible(chromedp.CSS("[data-action=ask]")),
		chromedp.Click(chromedp.CSS("[data-action=ask]")), chromedp.WaitVisible(chromedp.CSS("[data-action=confirm]")),
		chromedp.Click(chromedp.CSS("[data-action=confirm]")))
	b.waitJS("console back on services", `location.hash === '#/services'`)
	agenttest.Eventually(t, "console's delete reached the cluster", func() error {
		for _, s := range leader.Services("") {
			if s.OSID == cosid && s.Status != "deleting" {
				return fmt.Errorf("%s is %s", cosid, s.Status)
			}
		}
		return nil
	})
	b.waitJS("mirror shows it deleting or gone", fmt.Sprintf(`(() => { const r = document.querySelector('tr.service-row[data-osid=%q]'); return !r || r.querySelector('[data-status]')?.dataset.status === 'deleting'; })()`, cosid))
	// An app from the console, listed from the mirror, then deleted.
	b.run("console apps", chromedp.Navigate(cbase+"#/apps"), chromedp.WaitVisible(chromedp.CSS("#app-form")))
	setValue(b, "#app-name", "cweb")
	setValue(b, "#app-image", "nginx:1.27")
	b.run("console app deploy", chromedp.Click(chromedp.CSS("#app-deploy")))
	b.waitJS("console app page", `location.hash.startsWith('#/apps/cweb-') && document.getElementById('app-status') !== null`)
	cappID := strings.TrimPrefix(eval[string](b, `location.hash`), "#/apps/")
	b.run("console apps list", chromedp.Navigate(cbase+"#/apps"))
	b.waitJS("app listed from the mirror", fmt.Sprintf(`document.querySelector('tr.app-row[data-osid=%q] [data-status]') !== null`, cappID))
	b.screenshot("console-apps")
	if apps := leader.Apps(); !slices.ContainsFunc(apps, func(a api.App) bool { return a.OSID == cappID }) {
		t.Errorf("the console's app %s is not in the cluster: %+v", cappID, apps)
	}
	b.run("console app delete", chromedp.Navigate(cbase+"#/apps/"+cappID), chromedp.WaitVisible(chromedp.CSS("[data-action=ask]")),
		chromedp.Click(chromedp.CSS("[data-action=ask]")), chromedp.WaitVisible(chromedp.CSS("[data-action=confirm]")),
		chromedp.Click(chromedp.CSS("[data-action=confirm]")))
	b.waitJS("console back on apps", `location.hash === '#/apps'`)
	agenttest.Eventually(t, "console's app delete reached the cluster", func() error {
		for _, a := range leader.Apps() {
			if a.OSID == cappID && a.Status != "deleting" {
				return fmt.Errorf("%s is %s", cappID, a.Status)
			}
		}
		return nil
	})
	b.run("console nodes", chromedp.Navigate(console+"clusters/"+tok.ClusterID+"/#/nodes"))
	b.waitJS("three healthy nodes from the mirror", `document.querySelectorAll('tr.node-row.healthy').length === 3`)
	b.screenshot("console-nodes")
	// Join tokens are admin: connected with the default (deploy), the
	// cluster refuses the cloud's command and the page says so.
	b.run("console token", chromedp.Navigate(console+"clusters/"+tok.ClusterID+"/#/tokens"), chromedp.WaitVisible(chromedp.CSS("#token-create")),
		chromedp.Click(chromedp.CSS("#token-create")))
	b.waitJS("token command refused under deploy", `document.querySelector('#token-result .error')?.textContent.includes('refused')`)
	b.screenshot("console-token-refused")
	// Only the cluster side raises what the cloud may do.
	if _, err := leader.CloudAllow(context.Background(), api.CloudAllowRequest{Allow: "admin"}); err != nil {
		t.Fatal(err)
	}
	b.run("console token as admin", chromedp.Click(chromedp.CSS("#token-create")))
	b.waitJS("join command through a cloud command", `document.getElementById('join-command')?.textContent.includes('runos-agent join')`)
	b.screenshot("console-tokens")
	b.run("console cloud", chromedp.Navigate(console+"clusters/"+tok.ClusterID+"/#/cloud"))
	b.waitJS("link as the cloud sees it", `document.querySelector('#cloud-status [data-status]')?.textContent === 'connected'`)

	checkCSP(b, "cloud console")

	// The cloud goes away: the page says so honestly (retrying, the error,
	// when the next try is), and the cluster does not care.
	b.run("agent cloud", chromedp.Navigate(base+"#/cloud"), chromedp.WaitVisible(chromedp.CSS("#cloud-status")))
	cs.Close()
	b.waitJS("retrying with the error", `document.querySelector('#cloud-status [data-status]')?.textContent === 'retrying' && document.getElementById('cloud-error') !== null && /\((in .*|now)\)$/.test(document.getElementById('cloud-retry')?.textContent)`)
	b.screenshot("cloud-backoff")

	// Disconnect from the agent's Cloud page, with confirmation (the cloud
	// being down does not stop it).
	b.run("ask", chromedp.WaitVisible(chromedp.CSS("[data-action=ask]")),
		chromedp.Click(chromedp.CSS("[data-action=ask]")), chromedp.WaitVisible(chromedp.CSS("[data-action=confirm]")))
	b.screenshot("cloud-disconnect-confirm")
	b.run("disconnect", chromedp.Click(chromedp.CSS("[data-action=confirm]")), chromedp.WaitVisible(chromedp.CSS("#cloud-form")))
	if st := leader.CloudStatus(); st.Registered {
		t.Errorf("still registered after disconnect: %+v", st)
	}
}

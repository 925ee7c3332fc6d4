package uitest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/runos/runos-agent/api"
)

// chromiumPath finds Debian's chromium (scripts/test-deps.sh installs it).
func chromiumPath() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// outDir is where screenshots go: $RUNOS_TEST_OUT/ui-screenshots, else
// bin/ui-screenshots in the repository.
func outDir(t *testing.T) string {
	dir := filepath.Join("..", "..", "bin", "ui-screenshots")
	if o := os.Getenv("RUNOS_TEST_OUT"); o != "" {
		dir = filepath.Join(o, "ui-screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser is one tab of the test's Chromium.
type browser struct {
	t   *testing.T
	ctx context.Context
	out string

	mu         *sync.Mutex
	exceptions *[]string // guarded by mu; uncaught exceptions of every tab
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		if os.Getenv("RUNOS_UI_REQUIRED") == "1" || os.Getenv("CI") == "true" {
			t.Fatal("chromium not found, and the browser tests are required here (RUNOS_UI_REQUIRED=1 or CI=true): run scripts/test-deps.sh as root (installs Debian's chromium)")
		}
		t.Skip("skipping browser tests: chromium not found (run scripts/test-deps.sh as root; RUNOS_UI_REQUIRED=1 makes this a failure)")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(t.TempDir()),
		// Nothing but the cluster on loopback: no background network.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("lang", "en-US"),
		// Containers often have a tiny /dev/shm.
		chromedp.Flag("disable-dev-shm-usage", true),
	}
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	b := &browser{t: t, ctx: ctx, out: outDir(t), mu: new(sync.Mutex), exceptions: new([]string)}
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// Start the browser now (without a timeout: it would end the browser).
	start := time.Now()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	t.Logf("chromium started in %s", time.Since(start).Round(time.Millisecond))
	b.watchConsole()
	t.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, e := range *b.exceptions {
			t.Errorf("page threw: %s", e)
		}
	})
	return b
}

// newTab opens another tab of the same browser (same cookies).
func (b *browser) newTab() *browser {
	b.t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx)
	b.t.Cleanup(cancel)
	tab := *b
	tab.ctx = ctx
	if err := chromedp.Do(ctx); err != nil {
		b.t.Fatalf("open tab: %v", err)
	}
	tab.watchConsole()
	return &tab
}

// watchConsole records the tab's uncaught exceptions; the test fails on any.
func (b *browser) watchConsole() {
	msgs := chromedp.Console(b.ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.IsException() {
				b.mu.Lock()
				*b.exceptions = append(*b.exceptions, m.String())
				b.mu.Unlock()
			}
		}
	}()
}

// run runs steps with a timeout (a hung page fails the test, not the suite).
func (b *browser) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	start := time.Now()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		b.t.Logf("%s took %s", what, d.Round(time.Millisecond))
	}
}

func eval[T any](b *browser, js string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// waitJS waits until the expression is truthy, re-checking on every DOM
// change.
func (b *browser) waitJS(what, js string) {
	b.t.Helper()
	b.run(what, chromedp.Steps(func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.Poll[chromedp.Void](js, chromedp.WithPollingMutation(), chromedp.WithPollingTimeout(45*time.Second))(ctx, t)
		if err != nil {
			return chromedp.Void{}, fmt.Errorf("waiting for %s: %w", js, err)
		}
		return chromedp.Void{}, nil
	}))
}

func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	// From the top (a click may have scrolled; the sticky bar would land
	// mid-picture), and let CSS transitions settle.
	chromedp.Run(ctx, chromedp.Evaluate[bool](`window.scrollTo(0, 0) || true`))
	time.Sleep(150 * time.Millisecond)
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.out, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browser) location() string {
	b.t.Helper()
	return eval[string](b, `location.href`)
}

func setColorScheme(scheme string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
		})
		return err
	})
}

// TestBrowser drives the UI in headless Chromium against a real 3-node
// cluster: every page refuses to show without a session, sign in, three
// healthy nodes, node detail with paths, mesh picture, a join token, a
// crashed node going degraded then offline, events, sign out.
func TestBrowser(t *testing.T) {
	b := newBrowser(t)
	recordCSP(b)
	c := uiCluster(t)
	base := c.Agent(0).UIURL()

	// Without a session every page ends on the sign-in page, keeping the
	// route to come back to.
	for _, route := range []string{"", "#/nodes", "#/nodes/node1", "#/mesh", "#/events", "#/tokens"} {
		b.run("open "+route, chromedp.Navigate(base+route), chromedp.WaitVisible(chromedp.CSS("#login")))
		if loc := b.location(); loc != base+"login"+route {
			t.Errorf("%s without a session landed on %s, want %slogin%s", route, loc, base, route)
		}
		if n := eval[int](b, `document.querySelectorAll('#nav a, .tile, table').length`); n != 0 {
			t.Errorf("%s without a session shows %d app elements", route, n)
		}
	}
	for _, p := range []string{"v1/nodes", "v1/status", "ui/session", "js/app.js"} {
		b.run("fetch "+p, chromedp.Navigate(base+p))
		if text := eval[string](b, `document.body.innerText`); !strings.Contains(text, "not signed in") {
			t.Errorf("%s without a session: %q", p, text)
		}
	}

	// A wrong password says so and stays on the page.
	b.run("login page", chromedp.Navigate(base+"#/nodes"), chromedp.WaitVisible(chromedp.CSS("#password")))
	b.run("wrong password", chromedp.SendKeys(chromedp.CSS("#password"), "not-the-password"), chromedp.Click(chromedp.CSS("#submit")),
		chromedp.WaitVisible(chromedp.CSS("#error")))
	if msg := eval[string](b, `document.getElementById('error').textContent`); !strings.Contains(msg, "Wrong user name or password") {
		t.Errorf("wrong password message: %q", msg)
	}
	b.screenshot("login")

	// Sign in: back to the page that was asked for.
	eval[string](b, `document.getElementById('password').value = ''`)
	b.run("sign in", chromedp.SendKeys(chromedp.CSS("#password"), c.AdminPassword()),
		chromedp.Click(chromedp.CSS("#submit")), chromedp.WaitVisible(chromedp.CSS("table.nodes-table")))
	if loc := b.location(); loc != base+"#/nodes" {
		t.Errorf("after sign-in at %s, want %s#/nodes", loc, base)
	}
	b.waitJS("three healthy nodes", `document.querySelectorAll('tr.node-row.healthy').length === 3 && document.querySelectorAll('tr.node-row .meter').length > 0`)
	b.screenshot("nodes")
	// The agents do not run Kubernetes here (userspace mode): the column
	// says so for every node.
	b.waitJS("Kubernetes column: not managed", `document.querySelector('th.kube')?.textContent === 'Kubernetes' && [...document.querySelectorAll('tr.node-row td.kube')].filter((td) => td.dataset.kube === 'none' && td.textContent === '–').length === 3`)

	b.run("overview", chromedp.Navigate(base+"#/"))
	b.waitJS("overview counts", `document.querySelector('.count.healthy')?.textContent === '3' && document.querySelectorAll('.tile').length === 5`)
	if text := eval[string](b, `document.querySelector('.tiles').innerText`); !strings.Contains(text, "not connected") || !strings.Contains(text, "node") {
		t.Errorf("overview tiles: %q", text)
	}
	b.screenshot("overview")

	b.run("node detail", chromedp.Navigate(base+"#/nodes/node0"))
	b.waitJS("peers with direct paths", `document.querySelectorAll('.peers-table tbody tr').length === 2 && document.querySelectorAll('.peers-table .path.direct').length === 2`)
	b.waitJS("Kubernetes not managed", `document.getElementById('kube-not-managed')?.textContent.includes('runos-agent kube enable')`)
	b.screenshot("node-detail")
	b.run("other node", chromedp.Navigate(base+"#/nodes/node1"))
	b.waitJS("path from node0 to node1", `document.body.innerText.includes('Path from node0') && document.querySelector('.path.direct') !== null`)

	b.run("mesh", chromedp.Navigate(base+"#/mesh"))
	b.waitJS("mesh picture", `document.querySelectorAll('svg .mesh-node').length === 3 && document.querySelectorAll('svg .link.direct').length === 2 && document.querySelectorAll('svg .link-label').length === 2`)
	b.screenshot("mesh")

	b.run("tokens", chromedp.Navigate(base+"#/tokens"), chromedp.WaitVisible(chromedp.CSS("#token-create")), chromedp.Click(chromedp.CSS("#token-create")))
	b.waitJS("join command", `document.getElementById('join-command')?.textContent.includes('runos-agent join')`)
	cmd := eval[string](b, `document.getElementById('join-command').textContent`)
	if !strings.Contains(cmd, "--token ") || !strings.Contains(cmd, c.Agent(0).NodeConfig().Endpoints[0]) {
		t.Errorf("join command %q", cmd)
	}
	b.screenshot("tokens")
	b.run("copy", chromedp.Click(chromedp.CSS(".command-box button")))
	b.waitJS("copied", `document.querySelector('.command-box button').textContent === 'Copied'`)

	// A crashed node turns degraded, then offline, live on the nodes page.
	victim := 2
	if c.Agent(victim).Store().IsLeader() {
		victim = 1
	}
	name := c.Agent(victim).Name()
	b.run("nodes", chromedp.Navigate(base+"#/nodes"))
	b.waitJS("nodes healthy", `document.querySelectorAll('tr.node-row.healthy').length === 3`)
	row := fmt.Sprintf(`document.querySelector('tr.node-row[data-node=%q]')`, name)
	// Record every health the row shows, however briefly.
	eval[bool](b, `(() => {
		window.__healthSeen = [];
		const note = () => {
			const r = `+row+`;
			const h = r && ['healthy', 'degraded', 'offline'].find((c) => r.classList.contains(c));
			if (h && window.__healthSeen[window.__healthSeen.length - 1] !== h) window.__healthSeen.push(h);
		};
		new MutationObserver(note).observe(document.getElementById('main'), {subtree: true, childList: true, attributes: true});
		note();
		return true;
	})()`)
	c.Crash(victim)
	b.waitJS(name+" no longer healthy", row+`?.classList.contains('degraded') || `+row+`?.classList.contains('offline')`)
	if eval[bool](b, row+`.classList.contains('degraded')`) {
		b.screenshot("nodes-degraded")
	}
	b.waitJS(name+" offline", row+`?.classList.contains('offline')`)
	b.screenshot("nodes-offline")
	if seen := eval[[]string](b, `window.__healthSeen`); !slices.Contains(seen, "degraded") {
		// The page refreshes every 2 s and at once on each event; a
		// degraded phase shorter than that (a loaded machine) can pass
		// between two refreshes. The cluster must still have recorded it.
		recorded := false
		for _, e := range c.Agent(0).Events(0).Events {
			recorded = recorded || (e.Kind == "health_changed" && e.Node == name && e.To == "degraded")
		}
		if !recorded {
			t.Errorf("%s never went degraded before offline: the page showed %v and no event recorded it", name, seen)
		} else {
			t.Logf("the page missed %s's short degraded phase (showed %v); the events have it", name, seen)
		}
	}
	b.run("overview alert", chromedp.Navigate(base+"#/"))
	b.waitJS("offline alert", `[...document.querySelectorAll('.alert.offline')].some(li => li.textContent.includes(`+fmt.Sprintf("%q", name)+`))`)
	b.screenshot("overview-alert")

	// Events in a second tab: the removal done in the first tab shows up
	// there live, without a reload.
	events := b.newTab()
	events.run("events", chromedp.Navigate(base+"#/events"))
	events.waitJS("health events", `(document.querySelector('.events-table tbody')?.innerText || '').includes('healthy → degraded') && (document.querySelector('.events-table tbody')?.innerText || '').includes('degraded → offline')`)
	marker := eval[int](events, `(window.__marker = 42)`)

	// Remove the dead node, with confirmation, from its page.
	b.run("node page", chromedp.Navigate(base+"#/nodes/"+name), chromedp.WaitVisible(chromedp.CSS(`[data-action=ask]`)), chromedp.Click(chromedp.CSS(`[data-action=ask]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-action=confirm]`)))
	b.screenshot("node-remove-confirm")
	b.run("cancel", chromedp.Click(chromedp.CSS(`[data-action=cancel]`)), chromedp.WaitVisible(chromedp.CSS(`[data-action=ask]`)))
	if n := len(c.Agent(0).Nodes().Nodes); n != 3 {
		t.Fatalf("cancel removed a node: %d left", n)
	}
	b.run("remove", chromedp.Click(chromedp.CSS(`[data-action=ask]`)), chromedp.WaitVisible(chromedp.CSS(`[data-action=confirm]`)),
		chromedp.Click(chromedp.CSS(`[data-action=confirm]`)))
	b.waitJS("back on the node list without "+name, `location.hash === '#/nodes' && document.querySelectorAll('tr.node-row').length === 2`)
	if n := len(c.Agent(0).Nodes().Nodes); n != 2 {
		t.Errorf("after removal the cluster has %d nodes", n)
	}

	events.waitJS("node_removed appears live", `(document.querySelector('.events-table tbody')?.innerText || '').includes('node removed')`)
	if got := eval[int](events, `window.__marker || 0`); got != marker {
		t.Error("the events page reloaded instead of updating in place")
	}
	events.screenshot("events")

	// Phone width and dark mode.
	b.run("phone", chromedp.EmulateViewport(390, 844), chromedp.Navigate(base+"#/nodes"))
	b.waitJS("nodes on a phone", `document.querySelectorAll('tr.node-row').length === 2`)
	if w := eval[int](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("nodes page is %d px wide on a 390 px phone", w)
	}
	b.screenshot("phone-nodes")
	b.run("phone overview", chromedp.Navigate(base+"#/"))
	b.waitJS("overview on a phone", `document.querySelectorAll('.tile').length === 5`)
	if w := eval[int](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("overview is %d px wide on a 390 px phone", w)
	}
	b.screenshot("phone-overview")
	b.run("dark", chromedp.EmulateViewport(1280, 900), setColorScheme("dark"), chromedp.Navigate(base+"#/mesh"))
	b.waitJS("dark mesh", `document.querySelectorAll('svg .mesh-node').length === 2`)
	if bg := eval[string](b, `getComputedStyle(document.body).backgroundColor`); bg == "rgb(245, 246, 248)" {
		t.Errorf("dark mode kept the light background %s", bg)
	}
	b.screenshot("mesh-dark")
	b.run("light", setColorScheme("light"))

	checkCSP(b, "agent UI")

	// A password reset (on the node, through its unix socket) ends the
	// browser's session: the open page goes to the sign-in page by itself.
	b.run("nodes", chromedp.Navigate(base+"#/nodes"), chromedp.WaitVisible(chromedp.CSS("tr.node-row")))
	// On a node other than the one serving the page, and not the crashed
	// one (victim is 1 or 2, whichever was not the leader).
	pw, err := api.NewClient(c.Dirs()[3-victim]).ResetUIPassword(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b.run("session ended by reset", chromedp.WaitVisible(chromedp.CSS("#login")))
	b.run("sign in with the new password", chromedp.SendKeys(chromedp.CSS("#password"), pw.Password), chromedp.Click(chromedp.CSS("#submit")),
		chromedp.WaitVisible(chromedp.CSS("tr.node-row")))

	// Sign out: back on the sign-in page, and the app is closed again.
	b.run("sign out", chromedp.Navigate(base+"#/overview"), chromedp.WaitVisible(chromedp.CSS("#signout")), chromedp.Click(chromedp.CSS("#signout")),
		chromedp.WaitVisible(chromedp.CSS("#login")))
	b.run("after sign-out", chromedp.Navigate(base+"#/nodes"), chromedp.WaitVisible(chromedp.CSS("#login")))
	if loc := b.location(); loc != base+"login#/nodes" {
		t.Errorf("after sign-out /#/nodes went to %s", loc)
	}
}

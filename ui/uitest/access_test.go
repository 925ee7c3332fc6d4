package uitest

import (
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/runos/runos-agent/agent/agenttest"
)

// TestBrowserDevices adds a user device (wg1) in the UI: the page shows its
// config with a private key and a QR picture of it, lists the device, and
// removes it.
func TestBrowserDevices(t *testing.T) {
	b := newBrowser(t)
	recordCSP(b)
	c := uiCluster(t)
	base := c.Agent(0).UIURL()
	b.run("sign in", chromedp.Navigate(base+"#/access"), chromedp.WaitVisible(chromedp.CSS("#password")),
		chromedp.SendKeys(chromedp.CSS("#password"), c.AdminPassword()), chromedp.Click(chromedp.CSS("#submit")),
		chromedp.WaitVisible(chromedp.CSS("#device-form")))
	b.waitJS("empty list", `document.querySelector('.devices-table tbody')?.textContent.includes('No devices yet')`)
	// In-process nodes have only loopback addresses: the endpoint is given.
	setValue(b, "#device-name", "alice-laptop")
	setValue(b, "#device-endpoint", "vpn.example.com")
	b.waitJS("entry nodes listed", `document.querySelectorAll('#device-via option').length === 4`)
	eval[string](b, `document.getElementById('device-via').value = 'node1'`)
	b.run("add", chromedp.Click(chromedp.CSS("#device-add")))
	b.waitJS("config shown", `document.getElementById('device-config-text')?.textContent.includes('[Interface]')`)
	cfg := eval[string](b, `document.getElementById('device-config-text').textContent`)
	for _, want := range []string{"Address = 172.24.200.2/32", "DNS = 172.24.200.1", "Endpoint = vpn.example.com:51821",
		"AllowedIPs = 172.24.0.0/16, 172.25.0.0/16, 10.96.0.0/12", "PersistentKeepalive = 25"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	if strings.Contains(cfg, "<your private key>") || !strings.Contains(cfg, "PrivateKey = ") {
		t.Errorf("config has no private key:\n%s", cfg)
	}
	b.waitJS("QR picture decoded", `(() => { const i = document.getElementById('device-qr'); return i && i.complete && i.naturalWidth >= 200 && i.src.startsWith('data:image/png;base64,'); })()`)
	b.waitJS("listed", `document.querySelector('tr.device-row[data-name="alice-laptop"]')?.textContent.includes('node1')`)
	b.screenshot("devices-added")

	// A duplicate name is refused with the reason.
	setValue(b, "#device-name", "alice-laptop")
	b.run("add again", chromedp.Click(chromedp.CSS("#device-add")))
	b.waitJS("duplicate refused", `document.querySelector('#device-result .error')?.textContent.includes('already taken')`)

	b.run("remove", chromedp.Click(chromedp.CSS(`tr.device-row[data-name="alice-laptop"] [data-action=ask]`)),
		chromedp.Click(chromedp.CSS(`tr.device-row[data-name="alice-laptop"] [data-action=confirm]`)))
	b.waitJS("removed", `document.querySelector('tr.device-row[data-name="alice-laptop"]') === null`)
	agenttest.Eventually(t, "every node drops the device", func() error {
		for _, a := range c.Running() {
			if st, _ := a.Store().State(); len(st.Access.Devices) != 0 {
				return fmt.Errorf("%s still has devices %v", a.Name(), st.Access.Devices)
			}
		}
		return nil
	})
	checkCSP(b, "devices page")
}

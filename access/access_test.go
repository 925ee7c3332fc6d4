package access

import (
	"bytes"
	"fmt"
	"image/png"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/runos/runos-agent/nft"
)

var networks = []netip.Prefix{netip.MustParsePrefix("172.24.0.0/16"), netip.MustParsePrefix("172.25.0.0/16"), netip.MustParsePrefix("10.96.0.0/12")}

func TestRenderConfig(t *testing.T) {
	c := ClientConfig{Name: "laptop", PrivateKey: "cHJpdg==", Address: netip.MustParseAddr("172.24.200.2"), DNS: netip.MustParseAddr("172.24.200.1"),
		ServerKey: "c2VydmVy", Endpoint: "198.51.100.7:51821", AllowedIPs: networks}
	want := `# runos-agent user access: device laptop
[Interface]
PrivateKey = cHJpdg==
Address = 172.24.200.2/32
DNS = 172.24.200.1

[Peer]
PublicKey = c2VydmVy
Endpoint = 198.51.100.7:51821
AllowedIPs = 172.24.0.0/16, 172.25.0.0/16, 10.96.0.0/12
PersistentKeepalive = 25
`
	if got := c.Render(); got != want {
		t.Fatalf("config:\n%s\nwant:\n%s", got, want)
	}
	// The user's own key pair: a placeholder, and a move changes only
	// the Endpoint line otherwise.
	c.PrivateKey = ""
	moved := c
	moved.Endpoint = "203.0.113.9:51821"
	a, b := strings.Split(c.Render(), "\n"), strings.Split(moved.Render(), "\n")
	var diff []string
	for i := range a {
		if a[i] != b[i] {
			diff = append(diff, b[i])
		}
	}
	if len(diff) != 1 || diff[0] != "Endpoint = 203.0.113.9:51821" || !strings.Contains(c.Render(), "PrivateKey = "+PrivateKeyPlaceholder) {
		t.Fatalf("moved config differs in %q", diff)
	}
}

func TestPickEndpoint(t *testing.T) {
	for _, tc := range []struct {
		cands []string
		want  string
	}{
		{[]string{"192.168.1.5:51820", "198.51.100.7:40000"}, "198.51.100.7:51821"},
		{[]string{"[2001:db8::1]:51820", "192.168.1.5:51820"}, "[2001:db8::1]:51821"},
		{[]string{"192.168.1.5:51820"}, "192.168.1.5:51821"},
		{[]string{"127.0.0.1:51820", "0.0.0.0:9", "[fe80::1]:1", "bad"}, ""},
		{nil, ""},
	} {
		got, ok := PickEndpoint(tc.cands, 51821)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("PickEndpoint(%v) = %q %v, want %q", tc.cands, got, ok, tc.want)
		}
	}
}

func TestEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"vpn.example.com": "vpn.example.com:51821", "vpn.example.com:443": "vpn.example.com:443",
		"198.51.100.7": "198.51.100.7:51821", "[2001:db8::1]:5": "[2001:db8::1]:5", " h ": "h:51821",
		"": "", "h:0": "", "h:99999": "", ":5": "", "a/b": "", "a b": "", "h:x": "",
	} {
		got, err := Endpoint(in, 51821)
		if got != want || (err != nil) != (want == "") {
			t.Errorf("Endpoint(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func FuzzEndpoint(f *testing.F) {
	for _, s := range []string{"vpn.example.com", "h:1", "[::1]:2", "1.2.3.4", "", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Endpoint(s, 51821)
		if err != nil {
			return
		}
		if _, _, err := net.SplitHostPort(got); err != nil {
			t.Fatalf("Endpoint(%q) = %q, which is not host:port: %v", s, got, err)
		}
		if strings.ContainsAny(got, "\n\r") {
			t.Fatalf("Endpoint(%q) = %q spans lines of the config", s, got)
		}
	})
}

func TestQR(t *testing.T) {
	cfg := ClientConfig{Name: "x", PrivateKey: strings.Repeat("k", 44), Address: netip.MustParseAddr("172.24.200.2"),
		ServerKey: strings.Repeat("s", 44), Endpoint: "198.51.100.7:51821", AllowedIPs: networks}.Render()
	b, err := QRPNG(cfg, 256)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil || img.Bounds().Dx() != 256 {
		t.Fatalf("QR PNG: %v %v", err, img)
	}
	txt, err := QRText(cfg)
	if err != nil || strings.Count(txt, "\n") < 20 {
		t.Fatalf("QR text: %v\n%s", err, txt)
	}
}

// The ruleset is valid nftables (checked by nft in a namespace of the
// test's own) with and without devices that see each other.
func TestRulesetLoads(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace for nft)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skipf("needs nft (apt-get install nftables): %v", err)
	}
	ns := fmt.Sprintf("runos-access-test-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	for _, peers := range [][]netip.Addr{nil, {netip.MustParseAddr("172.24.200.2"), netip.MustParseAddr("172.24.200.9")}} {
		r := Rules{Interface: "wg1", Users: netip.MustParsePrefix("172.24.200.0/21"), Networks: networks, Peers: peers}
		cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(r.Ruleset())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft refused the ruleset: %v %s\n%s", err, out, r.Ruleset())
		}
		out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "inet", TableName).CombinedOutput()
		if err != nil || !strings.Contains(string(out), `iifname "wg1" drop`) {
			t.Fatalf("table after load: %v\n%s", err, out)
		}
		for _, p := range peers {
			if !strings.Contains(string(out), p.String()) {
				t.Fatalf("peer %v not in the set:\n%s", p, out)
			}
		}
	}
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(nft.Delete("inet", TableName))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("delete: %v %s", err, out)
	}
}

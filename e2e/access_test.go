package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

// accessConfigJSON is `access add --json` / `access move --json`.
type accessConfigJSON struct {
	Device accessDeviceJSON `json:"device"`
	Config string           `json:"config"`
	QRPNG  []byte           `json:"qr_png"`
}

type accessDeviceJSON struct {
	Name           string    `json:"name"`
	Address        string    `json:"address"`
	Via            string    `json:"via"`
	FirstHandshake time.Time `json:"first_handshake"`
	LastHandshake  time.Time `json:"last_handshake"`
	RxBytes        uint64    `json:"rx_bytes"`
	TxBytes        uint64    `json:"tx_bytes"`
	StatsError     string    `json:"stats_error"`
}

// laptop is a user device in a namespace behind its own NAT router, running
// the reference wireguard-go and Debian's wg(8) on the config `access add`
// printed.
type laptop struct {
	c      *cluster
	host   *lab.Host
	bin    string // wireguard-go
	ifname string
	dir    string
	proc   *lab.Proc
}

func newLaptop(t testing.TB, l *natLab) *laptop {
	t.Helper()
	_, home := l.home("home", "192.168.77.0/24", lab.NATEasy)
	return newDevice(t, l.cluster, "laptop", home)
}

// newDevice is a device called name on the LAN home of c's lab. Its
// interface is named by name's first letter and this process: devices of
// tests running at once need different first letters.
func newDevice(t testing.TB, c *cluster, name string, home *lab.Segment) *laptop {
	t.Helper()
	for _, tool := range []string{"wg", "wg-quick", "openssl", "dig", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			if lab.Required() {
				t.Fatalf("%s not found (run scripts/test-deps.sh as root)", tool)
			}
			t.Skipf("%s not found: skipping (run scripts/test-deps.sh as root)", tool)
		}
	}
	lp := &laptop{c: c, host: c.lab.Host(name, home), dir: t.TempDir(),
		// wireguard-go's UAPI socket is /var/run/wireguard/IFNAME.sock,
		// outside the namespaces: a name of this process's own.
		ifname: fmt.Sprintf("wg%s%d", name[:1], os.Getpid()%1000000)}
	lp.bin = filepath.Join(lp.dir, "wireguard-go")
	if out, err := exec.Command("go", "build", "-o", lp.bin, "golang.zx2c4.com/wireguard").CombinedOutput(); err != nil {
		t.Fatalf("building wireguard-go: %v\n%s", err, out)
	}
	t.Cleanup(lp.down)
	return lp
}

// up brings the device up from config exactly as printed: wg-quick's
// strip for wg(8) (no wg-quick up: it edits the namespace's resolv.conf
// and routes it cannot own here), then its Address and a route per
// AllowedIPs, as wg-quick would. DNS is the resolver's business.
func (lp *laptop) up(config string) {
	lp.c.t.Helper()
	lp.down()
	path := filepath.Join(lp.dir, lp.ifname+".conf")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		lp.c.fatalf("%v", err)
	}
	lp.proc = lp.host.Start(lp.c.t, "wireguard-go-"+lp.host.Name(), "env", "LOG_LEVEL=error", lp.bin, "-f", lp.ifname)
	lp.c.eventually(10*time.Second, "laptop wireguard-go up", func() error {
		_, err := lp.host.Run("wg", "show", lp.ifname)
		return err
	})
	stripped, err := exec.Command("wg-quick", "strip", path).Output()
	if err != nil {
		lp.c.fatalf("wg-quick strip: %v", err)
	}
	plain := filepath.Join(lp.dir, "plain.conf")
	if err := os.WriteFile(plain, stripped, 0o600); err != nil {
		lp.c.fatalf("%v", err)
	}
	cmds := [][]string{{"wg", "setconf", lp.ifname, plain}}
	for _, a := range configValues(config, "Address") {
		cmds = append(cmds, []string{"ip", "addr", "add", a, "dev", lp.ifname})
	}
	cmds = append(cmds, []string{"ip", "link", "set", lp.ifname, "up"})
	for _, p := range configValues(config, "AllowedIPs") {
		cmds = append(cmds, []string{"ip", "route", "add", p, "dev", lp.ifname})
	}
	for _, args := range cmds {
		if out, err := lp.host.Run(args...); err != nil {
			lp.c.fatalf("laptop: %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}

func (lp *laptop) down() {
	if lp.proc != nil {
		_ = lp.proc.Kill()
		<-lp.proc.Done()
		lp.proc = nil
	}
	_ = os.Remove(filepath.Join("/var/run/wireguard", lp.ifname+".sock"))
}

// configValues returns the comma-separated values of key in a wg-quick
// config.
func configValues(config, key string) []string {
	var out []string
	for _, line := range strings.Split(config, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) != key {
			continue
		}
		for _, x := range strings.Split(v, ",") {
			out = append(out, strings.TrimSpace(x))
		}
	}
	return out
}

// resolves asks the config's DNS server for every node's name with dig.
func (lp *laptop) resolves(config string, nodes []*agentNode, mesh map[string]netip.Addr) {
	server := configValues(config, "DNS")[0]
	for _, n := range nodes {
		name := n.name + ".runos.internal"
		lp.c.eventually(15*time.Second, "laptop resolves "+name, func() error {
			out, err := lp.host.Run("dig", "+short", "+time=1", "+tries=1", "@"+server, name, "A")
			if err != nil || strings.TrimSpace(out) != mesh[n.name].String() {
				return fmt.Errorf("dig @%s %s: %q (%v), want %v", server, name, out, err, mesh[n.name])
			}
			return nil
		})
	}
	out, _ := lp.host.Run("dig", "+time=1", "+tries=1", "@"+server, "nosuchnode.runos.internal", "A")
	if !strings.Contains(out, "NXDOMAIN") {
		lp.c.fatalf("an unknown name from a device: want NXDOMAIN, got %s", out)
	}
}

func (lp *laptop) ping(addr netip.Addr) error {
	out, err := lp.host.Run("ping", "-c", "1", "-W", "1", addr.String())
	if err != nil {
		return fmt.Errorf("laptop ping %v: %v: %s", addr, err, out)
	}
	return nil
}

// echo talks TCP to addr's echo server and returns the source it saw.
func (lp *laptop) echo(addr netip.Addr) (string, error) {
	msg := fmt.Sprintf("hello-%016x", rand.Uint64())
	out, err := lp.host.Run(helper(lp.c.t, "echo-client", "DIAL="+netip.AddrPortFrom(addr, echoPort).String(), "MSG="+msg)...)
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	f := strings.Fields(out)
	if len(f) != 3 || f[0] != "FROM" || f[2] != msg {
		return "", fmt.Errorf("unexpected echo %q", out)
	}
	ap, err := netip.ParseAddrPort(f[1])
	return ap.Addr().String(), err
}

// tlsCert reports whether a TLS server at addr shows its certificate to a
// handshake from h (the members-only listeners close connections from
// other sources before TLS).
func tlsCert(h interface {
	Run(...string) (string, error)
}, addr netip.AddrPort) bool {
	out, _ := h.Run("sh", "-c", "timeout 5 openssl s_client -connect "+addr.String()+" </dev/null 2>&1")
	return strings.Contains(out, "Server certificate") || strings.Contains(out, "BEGIN CERTIFICATE")
}

// TestUserAccess is the lab scenario of issue 16's user devices: a laptop
// behind its own NAT uses the config `access add` printed with the
// reference wireguard-go; it reaches every node's mesh IP and a process on
// one, cannot reach the lab Internet or the members-only listeners through
// the cluster, survives its entry node's death by `access move` (a config
// that differs in the Endpoint only), and reaches nothing once removed.
func TestUserAccess(t *testing.T) {
	t.Parallel()
	l := newNATLab(t)
	a, b, cn := l.addNode("a", l.inet), l.addNode("b", l.inet), l.addNode("c", l.inet)
	all := []*agentNode{a, b, cn}
	web := l.lab.Host("web", l.inet) // the lab "Internet"
	lp := newLaptop(t, l)
	l.form(a, b, cn)
	// a, the laptop's entry node, is a Docker host with ufw: iptables
	// drops forwarded packets and incoming connections that no rule
	// accepts, and the agent's own nftables tables cannot overrule that.
	dockerLike(l.cluster, a)
	ufwLike(l.cluster, a)
	mesh := map[string]netip.Addr{}
	for _, n := range all {
		mesh[n.name] = l.meshIP(n)
		l.startEcho(n)
	}
	l.startEchoOn(web, "web")
	// The web host counts what arrives from device addresses: without a
	// route back it could not answer them, so only a counter shows that
	// a device's packets got out through the cluster.
	if out, err := web.Run("nft", "add table inet probe; add chain inet probe in { type filter hook input priority 0; }; add rule inet probe in ip saddr 172.24.200.0/21 counter"); err != nil {
		l.fatalf("web: nft: %v: %s", err, out)
	}
	if src, err := lp.echo(web.Addr()); err != nil {
		l.fatalf("laptop cannot reach the lab internet directly: %v", err)
	} else {
		t.Logf("laptop reaches %v directly (from %s, its NAT)", web.Addr(), src)
	}

	// Errors a user makes get clear answers and change nothing.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"access", "add", "x", "--via", "nosuch"}, "no such node"},
		{[]string{"access", "add", "x", "--public-key", "abc"}, "bad public key"},
		{[]string{"access", "add", "Bad_Name"}, "invalid device name"},
		{[]string{"access", "remove", "nosuch"}, "no such device"},
	} {
		_, err := a.cli(append(tc.args, "--data-dir", a.dir)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			l.fatalf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}

	var added accessConfigJSON
	addAt := time.Now()
	if err := b.cliJSON(&added, "access", "add", "laptop", "--via", "a", "--json", "--data-dir", b.dir); err != nil {
		l.fatalf("%v", err)
	}
	t.Logf("config:\n%s", added.Config)
	dev := netip.MustParseAddr(added.Device.Address)
	if added.Device.Via != "a" || !netip.MustParsePrefix("172.24.200.0/21").Contains(dev) || len(added.QRPNG) == 0 ||
		!strings.Contains(added.Config, "Endpoint = "+a.host.Addr().String()+":51821") {
		l.fatalf("access add answered %+v", added)
	}
	var dup accessConfigJSON
	if err := cn.cliJSON(&dup, "access", "add", "laptop", "--json", "--data-dir", cn.dir); err == nil || !strings.Contains(err.Error(), "already taken") {
		l.fatalf("a second device named laptop: %v", err)
	}

	lp.up(added.Config)
	l.eventually(30*time.Second, "laptop pings a's mesh IP", func() error { return lp.ping(mesh["a"]) })
	t.Logf("access add to the first ping through the cluster: %v", time.Since(addAt).Round(time.Millisecond))
	for _, n := range all {
		l.eventually(15*time.Second, "laptop pings "+n.name, func() error { return lp.ping(mesh[n.name]) })
		l.eventually(15*time.Second, "laptop talks TCP to "+n.name, func() error {
			src, err := lp.echo(mesh[n.name])
			if err == nil && src != dev.String() {
				return fmt.Errorf("%s saw the laptop as %s, want %v", n.name, src, dev)
			}
			return err
		})
	}
	// Names through the DNS server the config names, as a laptop's
	// resolver would ask it.
	lp.resolves(added.Config, all, mesh)

	// A device that routes more into the tunnel than its config says
	// gets nothing beyond the cluster's networks: not the Internet
	// through its entry node, not the entry node's own underlay address.
	peerKey := configValues(added.Config, "PublicKey")[0]
	for _, target := range []netip.Addr{web.Addr(), a.host.Addr()} {
		extra := append(configValues(added.Config, "AllowedIPs"), target.String()+"/32")
		for _, args := range [][]string{
			{"wg", "set", lp.ifname, "peer", peerKey, "allowed-ips", strings.Join(extra, ",")},
			{"ip", "route", "replace", target.String() + "/32", "dev", lp.ifname},
		} {
			if out, err := lp.host.Run(args...); err != nil {
				l.fatalf("laptop: %v: %s", err, out)
			}
		}
		if src, err := lp.echo(target); err == nil {
			l.fatalf("the laptop reached %v through the cluster (seen from %s)", target, src)
		}
		lp.host.Run("ip", "route", "del", target.String()+"/32", "dev", lp.ifname)
	}
	if out, err := web.Run("nft", "list", "chain", "inet", "probe", "in"); err != nil || !strings.Contains(out, "counter packets 0 ") {
		l.fatalf("the lab internet got packets from a device through the cluster: %v\n%s", err, out)
	}
	// Raft and the node API on a mesh IP serve members only: a device's
	// handshake never gets as far as TLS, a member's does.
	for _, port := range []uint16{7947, 7948} {
		target := netip.AddrPortFrom(mesh["b"], port)
		if tlsCert(lp.host, target) {
			l.fatalf("the laptop got a TLS certificate from %v: members-only listener reached from wg1", target)
		}
		if !tlsCert(cn.host, target) {
			l.fatalf("control: member c got no TLS certificate from %v", target)
		}
	}

	// Devices never see each other: a phone entering through the same
	// node reaches the cluster but not the laptop, nor the laptop it.
	var phoneCfg accessConfigJSON
	if err := a.cliJSON(&phoneCfg, "access", "add", "phone", "--json", "--data-dir", a.dir); err != nil {
		l.fatalf("%v", err)
	}
	phone := newDevice(t, l.cluster, "phone", lp.host.Segment())
	phone.up(phoneCfg.Config)
	l.eventually(30*time.Second, "phone pings b", func() error { return phone.ping(mesh["b"]) })
	if err := phone.ping(dev); err == nil {
		l.fatalf("the phone reached the laptop (%v) through the cluster", dev)
	}
	if err := lp.ping(netip.MustParseAddr(phoneCfg.Device.Address)); err == nil {
		l.fatalf("the laptop reached the phone (%v) through the cluster", phoneCfg.Device.Address)
	}
	phone.down()
	if _, err := a.cli("access", "remove", "phone", "--data-dir", a.dir); err != nil {
		l.fatalf("%v", err)
	}

	// Two devices that both allow peers see each other, also when they
	// enter through different nodes (a → wg0 → c); the laptop, which does
	// not allow peers, still sees neither.
	pair := map[string]*laptop{}
	pairAddr := map[string]netip.Addr{}
	for _, d := range []struct{ name, via string }{{"desk", "a"}, {"tablet", "c"}} {
		var cfg accessConfigJSON
		if err := b.cliJSON(&cfg, "access", "add", d.name, "--via", d.via, "--allow-peers", "--json", "--data-dir", b.dir); err != nil {
			l.fatalf("%v", err)
		}
		pair[d.name] = newDevice(t, l.cluster, d.name, lp.host.Segment())
		pair[d.name].up(cfg.Config)
		pairAddr[d.name] = netip.MustParseAddr(cfg.Device.Address)
		l.eventually(30*time.Second, d.name+" pings b", func() error { return pair[d.name].ping(mesh["b"]) })
	}
	l.eventually(30*time.Second, "desk (via a) pings tablet (via c)", func() error { return pair["desk"].ping(pairAddr["tablet"]) })
	l.eventually(15*time.Second, "tablet (via c) pings desk (via a)", func() error { return pair["tablet"].ping(pairAddr["desk"]) })
	if err := lp.ping(pairAddr["desk"]); err == nil {
		l.fatalf("the laptop, which does not allow peers, reached desk (%v)", pairAddr["desk"])
	}
	if err := pair["tablet"].ping(dev); err == nil {
		l.fatalf("tablet reached the laptop (%v), which does not allow peers", dev)
	}
	for name, d := range pair {
		d.down()
		if _, err := b.cli("access", "remove", name, "--data-dir", b.dir); err != nil {
			l.fatalf("%v", err)
		}
	}

	// The list (from a node that is not the entry) shows the handshake.
	l.eventually(15*time.Second, "access list shows the laptop's handshake", func() error {
		var list struct {
			Devices []accessDeviceJSON `json:"devices"`
		}
		if err := cn.cliJSON(&list, "access", "list", "--json", "--data-dir", cn.dir); err != nil {
			return err
		}
		if len(list.Devices) != 1 {
			return fmt.Errorf("devices %+v", list.Devices)
		}
		d := list.Devices[0]
		if d.LastHandshake.IsZero() || d.FirstHandshake.IsZero() || d.RxBytes == 0 || d.StatsError != "" {
			return fmt.Errorf("device %+v", d)
		}
		return nil
	})

	// The entry node dies: the device moves, keeps its address and key,
	// and its config changes in the Endpoint only.
	a.kill()
	var moved accessConfigJSON
	l.eventually(60*time.Second, "access move to b", func() error {
		return b.cliJSON(&moved, "access", "move", "laptop", "--to", "b", "--json", "--data-dir", b.dir)
	})
	oldLines, newLines := strings.Split(added.Config, "\n"), strings.Split(moved.Config, "\n")
	if len(oldLines) != len(newLines) || moved.Device.Address != added.Device.Address {
		l.fatalf("moved config\n%s\nvs\n%s", moved.Config, added.Config)
	}
	var changed []string
	for i := range oldLines {
		if oldLines[i] != newLines[i] {
			changed = append(changed, strings.Fields(oldLines[i])[0])
		}
	}
	if !slices.Equal(changed, []string{"PrivateKey", "Endpoint"}) || !strings.Contains(moved.Config, "PrivateKey = <your private key>") ||
		!strings.Contains(moved.Config, "Endpoint = "+b.host.Addr().String()+":51821") {
		l.fatalf("move changed %v:\n%s", changed, moved.Config)
	}
	// The user puts the new Endpoint into the config they have.
	newEndpoint := configValues(moved.Config, "Endpoint")[0]
	oldEndpoint := configValues(added.Config, "Endpoint")[0]
	lp.up(strings.Replace(added.Config, "Endpoint = "+oldEndpoint, "Endpoint = "+newEndpoint, 1))
	for _, n := range []*agentNode{b, cn} {
		l.eventually(30*time.Second, "moved laptop pings "+n.name, func() error { return lp.ping(mesh[n.name]) })
		l.eventually(15*time.Second, "moved laptop talks TCP to "+n.name, func() error {
			_, err := lp.echo(mesh[n.name])
			return err
		})
	}
	lp.resolves(moved.Config, all, mesh)

	// Removed: the laptop reaches nothing, at once everywhere.
	if _, err := cn.cli("access", "remove", "laptop", "--data-dir", cn.dir); err != nil {
		l.fatalf("%v", err)
	}
	removedAt := time.Now()
	l.eventually(15*time.Second, "removed laptop reaches nothing", func() error {
		for _, n := range []*agentNode{b, cn} {
			if lp.ping(mesh[n.name]) == nil {
				return fmt.Errorf("still pings %s", n.name)
			}
		}
		return nil
	})
	t.Logf("access remove to the laptop reaching nothing: %v", time.Since(removedAt).Round(time.Millisecond))
	l.eventually(15*time.Second, "b takes wg1 down", func() error {
		if out, err := b.host.Run("ip", "link", "show", "wg1"); err == nil {
			return fmt.Errorf("wg1 still there: %s", out)
		}
		if out, err := b.host.Run("iptables", "-S"); err != nil || strings.Contains(out, "RUNOS-ACCESS") {
			return fmt.Errorf("iptables still allows wg1 forwarding (%v):\n%s", err, out)
		}
		return nil
	})
}

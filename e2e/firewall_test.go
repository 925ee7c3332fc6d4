package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

// Host firewalls as operators' servers have them. Each is set in the
// node's own namespace before or while the agent runs; the agent's
// iptables chains must get its traffic through them.

// dockerLike gives n's host the FORWARD policy Docker sets: forwarded
// packets no rule accepts are dropped.
func dockerLike(c *cluster, n *agentNode) {
	c.t.Helper()
	if out, err := n.host.Run("iptables", "-P", "FORWARD", "DROP"); err != nil {
		c.fatalf("%s: iptables: %v: %s", n.name, err, out)
	}
}

// ufwLike gives n's host ufw's default: incoming connections are dropped
// unless they answer one this host opened, or go to a port in open
// ("tcp/51820", the admin's `ufw allow`).
func ufwLike(c *cluster, n *agentNode, open ...string) {
	c.t.Helper()
	rules := [][]string{
		{"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"},
		{"-A", "INPUT", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
		{"-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-j", "ACCEPT"},
	}
	for _, o := range open {
		proto, port, _ := strings.Cut(o, "/")
		rules = append(rules, []string{"-A", "INPUT", "-p", proto, "--dport", port, "-j", "ACCEPT"})
	}
	rules = append(rules, []string{"-P", "INPUT", "DROP"})
	for _, r := range rules {
		if out, err := n.host.Run(append([]string{"iptables"}, r...)...); err != nil {
			c.fatalf("%s: iptables %v: %v: %s", n.name, r, err, out)
		}
	}
}

// TestHostFirewallDropsIncoming runs a cluster on hosts that drop incoming
// connections (ufw's default), as the architecture promises works: no
// inbound port but the join endpoint of the node the others join through.
// Gossip, Raft, forwarded writes and DNS are connections members open to
// each other's mesh IPs over wg0; WireGuard itself gets through as
// conntrack sees both ends send.
func TestHostFirewallDropsIncoming(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("dig"); err != nil {
		if lab.Required() {
			t.Fatalf("dig (Debian dnsutils) is required: %v", err)
		}
		t.Skipf("dig (Debian dnsutils) not installed: %v", err)
	}
	c := newCluster(t, "10.90.0.0/24", "a", "b", "c")
	first := c.nodes[0]
	ufwLike(c, first, fmt.Sprintf("tcp/%d", listenPort))
	for _, n := range c.nodes[1:] {
		ufwLike(c, n)
	}
	// b's firewall as its admin saved it (iptables-save, as
	// netfilter-persistent keeps it).
	b := c.nodes[1]
	saved, err := b.host.Run("iptables-save")
	if err != nil {
		c.fatalf("iptables-save: %v", err)
	}
	c.form()

	// A write on every node: on followers it is forwarded to the
	// leader's node API.
	for _, n := range c.nodes {
		if _, err := n.createToken("10m"); err != nil {
			c.fatalf("%s: token create: %v", n.name, err)
		}
	}
	// Every node's resolver answers the others.
	mesh := map[string]netip.Addr{}
	for _, n := range c.nodes {
		st, err := n.status()
		if err != nil {
			c.fatalf("%v", err)
		}
		mesh[n.name] = netip.MustParseAddr(st.MeshIP)
	}
	resolves := func(from, to *agentNode) error {
		out, err := from.host.Run(append(append([]string{}, digArgs...), "@"+mesh[to.name].String(), "+short", from.name+".runos.internal")...)
		if err != nil || out != mesh[from.name].String() {
			return fmt.Errorf("dig @%s %s.runos.internal: %q %v", mesh[to.name], from.name, out, err)
		}
		return nil
	}
	for _, from := range c.nodes {
		for _, to := range others(c.nodes, from) {
			c.eventually(15*time.Second, from.name+" resolves through "+to.name, func() error { return resolves(from, to) })
		}
	}

	// The admin reloads b's firewall, which takes the agent's chain with
	// it: new connections to b are dropped until the agent puts it back.
	if out, err := b.host.Run("sh", "-c", "iptables-restore <<'EOF'\n"+saved+"\nEOF"); err != nil {
		c.fatalf("b: iptables-restore: %v: %s", err, out)
	}
	reloaded := time.Now()
	c.eventually(90*time.Second, "b's chain is back after the reload", func() error {
		out, err := b.host.Run("iptables", "-S", "INPUT")
		if err != nil || !strings.Contains(out, "-j RUNOS-MESH") {
			return fmt.Errorf("b's INPUT (%v):\n%s", err, out)
		}
		return resolves(c.nodes[2], b)
	})
	t.Logf("b answers again %v after its firewall's reload", time.Since(reloaded).Round(time.Second))

	// The firewall still keeps the LAN out: a join endpoint takes a
	// connection only where the admin opened its port.
	if err := tcpConnect(b, netip.AddrPortFrom(first.host.Addr(), listenPort)); err != nil {
		c.fatalf("control: %s's opened join endpoint: %v", first.name, err)
	}
	if err := tcpConnect(first, netip.AddrPortFrom(b.host.Addr(), listenPort)); err == nil {
		c.fatalf("%s's join endpoint took a connection through its firewall", b.name)
	}
	for _, n := range c.nodes {
		n.stop()
		out, err := n.host.Run("iptables", "-S", "INPUT")
		if err != nil || strings.Contains(out, "RUNOS-") {
			c.fatalf("%s: the agent's chains outlive it (%v):\n%s", n.name, err, out)
		}
	}
}

// tcpConnect opens a TCP connection from n's host to addr and closes it.
func tcpConnect(n *agentNode, addr netip.AddrPort) error {
	out, err := n.host.Run("timeout", "3", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", addr.Addr(), addr.Port()))
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// TestHostFirewallHolePunch: a public server with ufw's default and a
// home server behind a NAT router that drops unsolicited input get a
// direct path: each learns the other's address (the home one's through
// STUN at the first member) and both send, so each firewall takes the
// other's packets as replies. No port is opened on either.
func TestHostFirewallHolePunch(t *testing.T) {
	t.Parallel()
	l := newNATLab(t)
	a := l.addNode("a", l.inet)
	b := l.addNode("b", l.inet)
	r, home := l.home("home", "10.1.0.0/24", lab.NATEasy)
	h := l.addNode("h", home)
	ufwLike(l.cluster, b)
	l.form(a, b, h)
	l.waitPath(time.Minute, b, h, "direct", "", r.WANAddr())
	l.waitPath(time.Minute, h, b, "direct", "", b.host.Addr())
	if out, err := b.host.Run("iptables", "-S", "INPUT"); err != nil || !strings.Contains(out, "-P INPUT DROP") {
		l.fatalf("b's firewall is not in place (%v):\n%s", err, out)
	}
}

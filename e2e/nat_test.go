package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

// TestNATEasyPairGoesDirect: one public member, two members behind two
// different easy (port-preserving) NATs: the NATed pair punches through and
// ends up direct, each seeing the other at its router's public address, and
// traffic flows over wg0.
func TestNATEasyPairGoesDirect(t *testing.T) {
	t.Parallel()
	l := newNATLab(t)
	r1, lan1 := l.home("home1", "10.1.0.0/24", lab.NATEasy)
	r2, lan2 := l.home("home2", "10.2.0.0/24", lab.NATEasy)
	p := l.addNode("p", l.inet)
	a := l.addNode("a", lan1)
	b := l.addNode("b", lan2)
	start := time.Now()
	l.form(p, a, b)

	l.waitPath(60*time.Second, a, b, "direct", "", r2.WANAddr())
	l.waitPath(60*time.Second, b, a, "direct", "", r1.WANAddr())
	t.Logf("a<->b direct %v after start", time.Since(start).Round(time.Millisecond))
	l.pingWG(a, b)
	l.pingWG(b, a)
	t.Logf("a -> b:\n%s", l.mustAgentPing(a, b, "direct"))
	l.mustAgentPing(b, a, "direct")
	// The upgrade is in the cluster's history.
	l.eventually(30*time.Second, "a path_changed event for a's path to b", func() error {
		es, err := p.events()
		if err != nil {
			return err
		}
		for _, e := range es {
			if e.Kind == "path_changed" && e.Node == a.name && e.To == "direct" && strings.Contains(e.Detail, "to "+b.name+":") {
				return nil
			}
		}
		return fmt.Errorf("no path_changed event node=a to=direct for b among %d events", len(es))
	})
}

// TestNATHardNATRelays: a member behind a hard (fully-random) NAT and one
// behind an easy NAT cannot punch through; they connect through the public
// member as relay, and traffic flows.
func TestNATHardNATRelays(t *testing.T) {
	t.Parallel()
	l := newNATLab(t)
	_, lan1 := l.home("home1", "10.1.0.0/24", lab.NATHard)
	_, lan2 := l.home("home2", "10.2.0.0/24", lab.NATEasy)
	p := l.addNode("p", l.inet)
	a := l.addNode("a", lan1)
	b := l.addNode("b", lan2)
	l.form(p, a, b)

	l.waitPath(60*time.Second, a, b, "relay", p.name, netip.Addr{})
	l.waitPath(60*time.Second, b, a, "relay", p.name, netip.Addr{})
	l.pingWG(a, b)
	l.pingWG(b, a)
	t.Logf("a -> b:\n%s", l.mustAgentPing(a, b, "via "+p.name))
	l.mustAgentPing(b, a, "via "+p.name)
	// Still relayed: nothing opened a direct path meanwhile.
	l.waitPath(time.Second, a, b, "relay", p.name, netip.Addr{})
}

// TestNATSameLANPrefersLAN: two members behind the same NAT talk over their
// LAN, not through the router's public address nor a relay.
func TestNATSameLANPrefersLAN(t *testing.T) {
	t.Parallel()
	l := newNATLab(t)
	_, lan := l.home("home", "10.1.0.0/24", lab.NATEasy)
	p := l.addNode("p", l.inet)
	a := l.addNode("a", lan)
	b := l.addNode("b", lan)
	l.form(p, a, b)

	l.waitPath(60*time.Second, a, b, "direct", "", b.host.Addr())
	l.waitPath(60*time.Second, b, a, "direct", "", a.host.Addr())
	l.pingWG(a, b)
	l.pingWG(b, a)
	t.Logf("a -> b:\n%s", l.mustAgentPing(a, b, "direct"))
	// Stays on the LAN (no flapping to the public path once settled).
	l.waitPath(time.Second, a, b, "direct", "", b.host.Addr())
}

// TestNATRelayFailover: two public members both relay for a pair behind hard
// NATs. Killing the relay in use moves the pair to the other one; killing
// that too leaves the pair unreachable; restarting one brings the relay path
// back.
func TestNATRelayFailover(t *testing.T) {
	t.Parallel()
	l := newNATLab(t)
	_, lan1 := l.home("home1", "10.1.0.0/24", lab.NATHard)
	_, lan2 := l.home("home2", "10.2.0.0/24", lab.NATHard)
	p1 := l.addNode("p1", l.inet)
	p2 := l.addNode("p2", l.inet)
	a := l.addNode("a", lan1)
	b := l.addNode("b", lan2)
	l.form(p1, p2, a, b)
	relays := map[string]*agentNode{p1.name: p1, p2.name: p2}

	// Both publish a relay offer (nodes --json does not show it: the log).
	l.eventually(60*time.Second, "p1 and p2 publish a relay offer", func() error {
		for _, p := range relays {
			if out := p.current().Output(); !strings.Contains(out, `msg="own record updated"`) || !strings.Contains(out, "relay=true") {
				return fmt.Errorf("%s has not published relay=true", p.name)
			}
		}
		return nil
	})
	first := l.settledRelay(a, b)
	l.pingWG(a, b)
	used, other := relays[first], p1
	if used == p1 {
		other = p2
	}
	t.Logf("a -> b via %s; killing it", used.name)

	used.kill()
	l.waitPath(90*time.Second, a, b, "relay", other.name, netip.Addr{})
	l.waitPath(90*time.Second, b, a, "relay", other.name, netip.Addr{})
	l.pingWG(a, b)
	l.mustAgentPing(a, b, "via "+other.name)
	t.Logf("a -> b via %s; killing it too", other.name)

	other.kill()
	l.waitPath(90*time.Second, a, b, "none", "", netip.Addr{})
	if out, err := a.agentPing(b, 2); err == nil {
		l.fatalf("runos-agent ping a -> b with no relay left: want failure, got:\n%s", out)
	}
	if out, err := a.host.Run("ping", "-c", "1", "-W", "1", l.meshIP(b).String()); err == nil {
		l.fatalf("ping a -> b's wg0 with no relay left: want failure, got:\n%s", out)
	}

	t.Logf("no relay left: a sees b unreachable; restarting %s", used.name)
	used.start()
	l.waitPath(90*time.Second, a, b, "relay", used.name, netip.Addr{})
	l.waitPath(90*time.Second, b, a, "relay", used.name, netip.Addr{})
	l.pingWG(a, b)
	l.mustAgentPing(a, b, "via "+used.name)
}

// TestNATMappingChange: an easy-NAT pair is direct; the router of one side
// forgets its mappings (conntrack flushed, as on a reboot), then gets a new
// public address from its ISP. Each time the pair recovers to direct, at
// the router's current address, without restarting anything.
func TestNATMappingChange(t *testing.T) {
	t.Parallel()
	l := newNATLab(t)
	r1, lan1 := l.home("home1", "10.1.0.0/24", lab.NATEasy)
	r2, lan2 := l.home("home2", "10.2.0.0/24", lab.NATEasy)
	p := l.addNode("p", l.inet)
	a := l.addNode("a", lan1)
	b := l.addNode("b", lan2)
	l.form(p, a, b)
	l.waitPath(60*time.Second, a, b, "direct", "", r2.WANAddr())
	l.waitPath(60*time.Second, b, a, "direct", "", r1.WANAddr())
	l.pingWG(a, b)

	if err := r1.FlushConntrack(); err != nil {
		l.fatalf("%v", err)
	}
	flushed := time.Now()
	l.waitPath(90*time.Second, a, b, "direct", "", r2.WANAddr())
	l.waitPath(90*time.Second, b, a, "direct", "", r1.WANAddr())
	l.pingWG(a, b)
	l.pingWG(b, a)
	l.mustAgentPing(a, b, "direct")
	t.Logf("after conntrack flush on r1: direct again and traffic flows (%v)", time.Since(flushed).Round(time.Millisecond))

	old, renumbered := r1.WANAddr(), l.inet.Alloc()
	if err := r1.SetWANAddr(renumbered); err != nil {
		l.fatalf("%v", err)
	}
	changed := time.Now()
	t.Logf("r1 WAN address %v -> %v", old, renumbered)
	l.waitPath(120*time.Second, b, a, "direct", "", renumbered)
	l.waitPath(120*time.Second, a, b, "direct", "", r2.WANAddr())
	l.pingWG(a, b)
	l.pingWG(b, a)
	l.mustAgentPing(b, a, "direct")
	t.Logf("after renumbering r1: direct at %v again and traffic flows (%v)", renumbered, time.Since(changed).Round(time.Millisecond))
}

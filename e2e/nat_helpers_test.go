package e2e

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

// The NAT scenarios: agents on an "internet" segment (198.18.0.0/24) and
// behind lab home routers, all in kernel mode, driven through the CLI.

var natInternet = netip.MustParsePrefix("198.18.0.0/24")

// natPeerJSON is a peer of `status --json` with the NAT fields.
type natPeerJSON struct {
	Name     string  `json:"name"`
	MeshIP   string  `json:"mesh_ip"`
	Endpoint string  `json:"endpoint"`
	Path     string  `json:"path"` // direct|relay|none
	Via      string  `json:"via"`
	RTTMs    float64 `json:"rtt_ms"`
}

type natStatusJSON struct {
	Name   string        `json:"name"`
	MeshIP string        `json:"mesh_ip"`
	Peers  []natPeerJSON `json:"peers"`
}

// natLab is a cluster whose nodes sit on different segments.
type natLab struct {
	*cluster
	inet *lab.Segment
	dirs string
}

func newNATLab(t testing.TB) *natLab {
	t.Helper()
	c := &cluster{t: t, lab: lab.New(t)}
	c.bin = agentBin(t)
	return &natLab{cluster: c, inet: c.lab.Internet(natInternet), dirs: t.TempDir()}
}

// home is a LAN behind a NAT router on the internet segment.
func (l *natLab) home(name, subnet string, kind lab.NATKind) (*lab.Router, *lab.Segment) {
	lan := l.lab.LAN(name, netip.MustParsePrefix(subnet))
	return l.lab.Router("r"+name, l.inet, lan, kind), lan
}

// addNode adds a (not yet initialised) agent in its own namespace on seg.
func (l *natLab) addNode(name string, seg *lab.Segment) *agentNode {
	n := &agentNode{c: l.cluster, name: name, host: l.lab.Host(name, seg), dir: filepath.Join(l.dirs, name)}
	l.nodes = append(l.nodes, n)
	return n
}

// joinVia joins n through member's public address with extra flags.
func (l *natLab) joinVia(n, member *agentNode, extra ...string) {
	l.t.Helper()
	var tok *tokenJSON
	// A freshly started first node answers status before it has elected
	// itself and applied the bootstrap.
	l.eventually(60*time.Second, member.name+" issues a join token", func() error {
		var err error
		tok, err = member.createToken("10m")
		return err
	})
	args := append([]string{"join", "--data-dir", n.dir, "--name", n.name, "--net", "kernel", "--token", tok.Token}, extra...)
	args = append(args, netip.AddrPortFrom(member.host.Addr(), listenPort).String())
	out, err := n.cli(args...)
	if err != nil {
		l.fatalf("%v", err)
	}
	if !strings.Contains(out, "joined cluster") {
		l.fatalf("%s: join said %q", n.name, out)
	}
}

// form inits first on the internet segment (advertising its
// 198.18 address, so it relays under --relay auto), starts it, joins the
// rest through it (public ones advertise their address too), starts them
// and waits for the cluster to form: every node healthy, handshakes with
// every peer.
func (l *natLab) form(first *agentNode, rest ...*agentNode) {
	l.t.Helper()
	first.initCluster()
	first.start()
	for _, n := range rest {
		var extra []string
		if l.inet.Prefix().Contains(n.host.Addr()) {
			extra = []string{"--advertise", n.host.Addr().String()}
		}
		l.joinVia(n, first, extra...)
	}
	for _, n := range rest {
		n.startNoWait()
	}
	all := append([]*agentNode{first}, rest...)
	l.eventually(2*time.Minute, "cluster forms", func() error { return l.formed(all, nil, nil) })
}

func (n *agentNode) natStatus() (*natStatusJSON, error) {
	var s natStatusJSON
	return &s, n.cliJSON(&s, "status", "--json", "--data-dir", n.dir)
}

// peer is how n's status shows peer name now.
func (n *agentNode) peer(name string) (natPeerJSON, error) {
	st, err := n.natStatus()
	if err != nil {
		return natPeerJSON{}, err
	}
	for _, p := range st.Peers {
		if p.Name == name {
			return p, nil
		}
	}
	return natPeerJSON{}, fmt.Errorf("%s has no peer %s", n.name, name)
}

// waitPath waits until from shows to with path (and via, if path is relay;
// and endpoint's address == addr, if addr is valid), and returns the peer.
func (l *natLab) waitPath(timeout time.Duration, from, to *agentNode, path, via string, addr netip.Addr) natPeerJSON {
	l.t.Helper()
	var got natPeerJSON
	what := fmt.Sprintf("%s sees %s %s", from.name, to.name, path)
	if via != "" {
		what += " via " + via
	}
	if addr.IsValid() {
		what += " at " + addr.String()
	}
	l.eventually(timeout, what, func() error {
		p, err := from.peer(to.name)
		if err != nil {
			return err
		}
		got = p
		if p.Path != path || (via != "" && p.Via != via) {
			return fmt.Errorf("%s: %s path %q via %q endpoint %q", from.name, to.name, p.Path, p.Via, p.Endpoint)
		}
		if addr.IsValid() {
			ap, err := netip.ParseAddrPort(p.Endpoint)
			if err != nil || ap.Addr().Unmap() != addr {
				return fmt.Errorf("%s: %s %s endpoint %q, want %v", from.name, to.name, p.Path, p.Endpoint, addr)
			}
		}
		return nil
	})
	return got
}

// meshIP is n's wg0 address.
func (l *natLab) meshIP(n *agentNode) netip.Addr {
	l.t.Helper()
	st, err := n.natStatus()
	if err != nil {
		l.fatalf("%v", err)
	}
	ip, err := netip.ParseAddr(st.MeshIP)
	if err != nil {
		l.fatalf("%s: mesh IP %q: %v", n.name, st.MeshIP, err)
	}
	return ip
}

// pingWG waits until from pings to's wg0 address (kernel ICMP over wg0).
func (l *natLab) pingWG(from, to *agentNode) {
	l.t.Helper()
	ip := l.meshIP(to)
	l.eventually(30*time.Second, fmt.Sprintf("%s pings %s's wg0 %v", from.name, to.name, ip), func() error {
		out, err := from.host.Run("ping", "-c", "1", "-W", "1", "-I", "wg0", ip.String())
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
}

// agentPing runs `runos-agent ping -c count` from from to to and returns its
// output and error (exit 1: no answer at all).
func (n *agentNode) agentPing(to *agentNode, count int) (string, error) {
	return n.cli("ping", "--data-dir", n.dir, "-c", fmt.Sprint(count), "-i", "200ms", to.name)
}

// settledRelay waits until from reaches to through a relay and `runos-agent
// ping` answers every probe through the relay from's path report names,
// and returns that relay. With two relays either may be picked, and the
// pick may move once the paths are measured, so a test must not hold on to
// the first one it saw.
func (l *natLab) settledRelay(from, to *agentNode) string {
	l.t.Helper()
	var via string
	l.eventually(90*time.Second, fmt.Sprintf("%s reaches %s through a relay its pings use", from.name, to.name), func() error {
		p, err := from.peer(to.name)
		if err != nil {
			return err
		}
		if p.Path != "relay" {
			return fmt.Errorf("%s: %s path %q", from.name, to.name, p.Path)
		}
		out, err := from.agentPing(to, 3)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		n := 0
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "seq=") {
				if !strings.Contains(line, "rtt=") || !strings.Contains(line, " via "+p.Via+" ") {
					return fmt.Errorf("path says via %s, probe: %q", p.Via, line)
				}
				n++
			}
		}
		if n != 3 {
			return fmt.Errorf("want 3 answered probes: %q", out)
		}
		via = p.Via
		return nil
	})
	return via
}

// mustAgentPing waits until `runos-agent ping -c 3` from from to to gets
// every answer over the wanted path ("direct" or "via NAME"), and returns
// its output.
func (l *natLab) mustAgentPing(from, to *agentNode, path string) string {
	l.t.Helper()
	var out string
	l.eventually(60*time.Second, fmt.Sprintf("runos-agent ping %s -> %s %s", from.name, to.name, path), func() error {
		var err error
		out, err = from.agentPing(to, 3)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		n := 0
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "seq=") {
				if !strings.Contains(line, "rtt=") || !strings.Contains(line, " "+path+" ") {
					return fmt.Errorf("probe not answered over %q: %q", path, line)
				}
				n++
			}
		}
		if n != 3 {
			return fmt.Errorf("want 3 answered probes: %q", out)
		}
		return nil
	})
	return out
}

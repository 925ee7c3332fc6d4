package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/e2e/lab"
)

// The NAT benchmarks' topology: a public member on the lab internet and two
// members each behind its own easy (port-preserving) NAT. Both homes use
// the same LAN prefix, as real homes do.
var (
	natBenchInternet = netip.MustParsePrefix("198.18.0.0/24")
	natBenchHome     = netip.MustParsePrefix("192.168.1.0/24")
)

// natPair is one NAT benchmark topology: public member p, and a and b
// behind routers ra and rb.
type natPair struct {
	c       *cluster
	p, a, b *agentNode
	ra, rb  *lab.Router
}

// newNATPair builds the topology and initialises the cluster (init on p,
// joins of a and b through p). Only p runs afterwards.
func newNATPair(tb testing.TB) *natPair {
	tb.Helper()
	c := &cluster{t: tb, lab: lab.New(tb)}
	c.bin = agentBin(tb)
	l := c.lab
	inet := l.Internet(natBenchInternet)
	dirs := tb.TempDir()
	node := func(name string, h *lab.Host) *agentNode {
		n := &agentNode{c: c, name: name, host: h, dir: filepath.Join(dirs, name)}
		c.nodes = append(c.nodes, n)
		return n
	}
	np := &natPair{c: c}
	np.p = node("p", l.Host("p", inet))
	lanA, lanB := l.LAN("home-a", natBenchHome), l.LAN("home-b", natBenchHome)
	np.ra = l.Router("ra", inet, lanA, lab.NATEasy)
	np.rb = l.Router("rb", inet, lanB, lab.NATEasy)
	np.a = node("a", l.Host("a", lanA))
	np.b = node("b", l.Host("b", lanB))

	np.p.initCluster()
	np.p.start()
	waitInitialised(np.p)
	np.a.join(np.p)
	np.b.join(np.p)
	return np
}

// waitInitialised returns once n, just started after init, has applied the
// cluster's bootstrap: `run` answers status before its single-node election
// (a few seconds), and `token create` fails ("cluster is not initialised
// yet") until the bootstrap entry is applied, even with a leader elected.
func waitInitialised(n *agentNode) {
	n.c.t.Helper()
	n.c.eventually(30*time.Second, n.name+" initialised", func() error {
		ns, err := n.nodes()
		if err != nil {
			return err
		}
		if len(ns) == 0 {
			return fmt.Errorf("%s lists no nodes yet", n.name)
		}
		return nil
	})
}

func (np *natPair) killAll() {
	for _, n := range np.c.nodes {
		n.kill()
	}
}

// peerPath is x's view of peer name through the local API (what
// `status --json` prints): path, via, endpoint and rtt.
func peerPath(x *agentNode, name string) (api.Peer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := api.NewClient(x.dir).Status(ctx)
	if err != nil {
		return api.Peer{}, err
	}
	for _, p := range st.Peers {
		if p.Name == name {
			return p, nil
		}
	}
	return api.Peer{}, fmt.Errorf("%s has no peer %s", x.name, name)
}

// pairPath is nil once a sees b on path want (and via, if not empty) and
// b sees a so too.
func pairPath(x, y *agentNode, want, via string) error {
	for _, d := range [][2]*agentNode{{x, y}, {y, x}} {
		p, err := peerPath(d[0], d[1].name)
		if err != nil {
			return err
		}
		if p.Path != want || (via != "" && p.Via != via) {
			return fmt.Errorf("%s sees %s on path %q via %q (endpoint %s), want %q via %q",
				d[0].name, d[1].name, p.Path, p.Via, p.Endpoint, want, via)
		}
	}
	return nil
}

// waitPath polls pairPath every 10 ms and returns when it holds, failing
// the benchmark after timeout.
func (np *natPair) waitPath(want, via string, timeout time.Duration) {
	np.c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := pairPath(np.a, np.b, want, via)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			np.c.fatalf("a<->b not %s after %v: %v", want, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logPair writes both sides' view of the pair into the benchmark log.
func (np *natPair) logPair(tb testing.TB, what string) {
	for _, d := range [][2]*agentNode{{np.a, np.b}, {np.b, np.a}} {
		p, err := peerPath(d[0], d[1].name)
		if err != nil {
			tb.Logf("%s: %s: %v", what, d[0].name, err)
			continue
		}
		tb.Logf("%s: %s sees %s: path=%s via=%q endpoint=%s rtt_ms=%.2f", what, d[0].name, d[1].name, p.Path, p.Via, p.Endpoint, p.RTTMillis)
	}
}

// BenchmarkNATTimeToDirect measures how long two members behind two
// different easy NATs take to reach each other directly: from starting the
// last agent's `run` (the public member p and the other NATed member are
// already running) until each reports the other on path `direct`. Each
// iteration builds a fresh topology; the mean is direct-s, accurate to the
// 10 ms polling of the local API.
func BenchmarkNATTimeToDirect(b *testing.B) {
	var total time.Duration
	for range b.N {
		b.StopTimer()
		np := newNATPair(b)
		np.a.startNoWait()
		b.StartTimer()
		t0 := time.Now()
		np.b.startNoWait()
		np.waitPath("direct", "", 2*time.Minute)
		d := time.Since(t0)
		b.StopTimer()
		np.logPair(b, fmt.Sprintf("direct after %.2fs", d.Seconds()))
		total += d
		np.killAll()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "direct-s")
}

// BenchmarkNATRelayToDirectUpgrade measures the relay-to-direct upgrade: the
// NATed pair starts with every packet between the two routers' public
// addresses dropped (a partition between the two NATs only: both still
// reach the public member), so they connect `relay` via p. Then the block is
// lifted and the benchmark times how long until both report `direct`
// (upgrade-s, mean over iterations, accurate to 10 ms). It also reports how
// long the relay path took to come up from the last start (relay-s).
func BenchmarkNATRelayToDirectUpgrade(b *testing.B) {
	var upgrade, relay time.Duration
	for range b.N {
		b.StopTimer()
		np := newNATPair(b)
		if err := np.ra.Block(np.rb.WANAddr()); err != nil {
			b.Fatal(err)
		}
		np.a.startNoWait()
		t0 := time.Now()
		np.b.startNoWait()
		np.waitPath("relay", "p", 2*time.Minute)
		relay += time.Since(t0)
		np.logPair(b, fmt.Sprintf("relay after %.2fs", time.Since(t0).Seconds()))
		// Let the relay path settle, so the figure is the upgrade of an
		// established relay rather than the tail of formation.
		time.Sleep(3 * time.Second)
		if err := pairPath(np.a, np.b, "relay", "p"); err != nil {
			np.c.fatalf("relay path did not hold: %v", err)
		}

		b.StartTimer()
		t1 := time.Now()
		if err := np.ra.Unblock(np.rb.WANAddr()); err != nil {
			b.Fatal(err)
		}
		np.waitPath("direct", "", 2*time.Minute)
		d := time.Since(t1)
		b.StopTimer()
		np.logPair(b, fmt.Sprintf("direct %.2fs after unblocking", d.Seconds()))
		upgrade += d
		np.killAll()
	}
	b.ReportMetric(upgrade.Seconds()/float64(b.N), "upgrade-s")
	b.ReportMetric(relay.Seconds()/float64(b.N), "relay-s")
}

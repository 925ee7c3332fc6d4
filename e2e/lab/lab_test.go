package lab_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if os.Getenv(helperEnv) == "" {
		if left := lab.Leftovers(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: lab namespaces left behind: %v\n", left)
			code = 1
		}
	}
	os.Exit(code)
}

var (
	internet = netip.MustParsePrefix("198.18.0.0/24")
	homeNet  = netip.MustParsePrefix("192.168.1.0/24")
)

// reach pings to from h once, waiting up to wait for the answer.
func reach(h *lab.Host, to netip.Addr, wait string) error {
	_, err := h.Run("ping", "-c1", "-W"+wait, to.String())
	return err
}

func mustReach(t *testing.T, h *lab.Host, to netip.Addr) {
	t.Helper()
	if err := reach(h, to, "2"); err != nil {
		t.Errorf("%s -> %v: want reachable: %v", h.Name(), to, err)
	}
}

func mustNotReach(t *testing.T, h *lab.Host, to netip.Addr) {
	t.Helper()
	// Answers inside the lab take well under a millisecond.
	if err := reach(h, to, "0.5"); err == nil {
		t.Errorf("%s -> %v: reachable, want blocked", h.Name(), to)
	}
}

func TestLANPingAndPartition(t *testing.T) {
	t.Parallel()
	l := lab.New(t)
	lan := l.LAN("lan", netip.MustParsePrefix("10.77.0.0/24"))
	a, b, c := l.Host("a", lan), l.Host("b", lan), l.Host("c", lan)

	if got, want := a.Addr(), netip.MustParseAddr("10.77.0.2"); got != want {
		t.Errorf("first host got %v, want %v (.1 is the gateway)", got, want)
	}
	hosts := []*lab.Host{a, b, c}
	for _, from := range hosts {
		for _, to := range hosts {
			if from != to {
				mustReach(t, from, to.Addr())
			}
		}
	}

	if err := a.Block(b.Addr()); err != nil {
		t.Fatal(err)
	}
	mustNotReach(t, a, b.Addr())
	mustNotReach(t, b, a.Addr())
	mustReach(t, a, c.Addr()) // only the blocked pair is cut
	mustReach(t, b, c.Addr())

	if err := a.Unblock(b.Addr()); err != nil {
		t.Fatal(err)
	}
	mustReach(t, a, b.Addr())
	mustReach(t, b, a.Addr())
}

// home is one NATed home network with a host on it.
type home struct {
	router *lab.Router
	host   *lab.Host
}

func newHome(l *lab.Lab, name string, inet *lab.Segment, nat lab.NATKind) home {
	lan := l.LAN(name, homeNet) // every home is 192.168.1.0/24, as in real life
	r := l.Router("r"+name, inet, lan, nat)
	return home{router: r, host: l.Host("h"+name, lan)}
}

func TestNATReachability(t *testing.T) {
	t.Parallel()
	l := lab.New(t)
	inet := l.Internet(internet)
	pub := l.Host("pub", inet)
	a := newHome(l, "a", inet, lab.NATEasy)
	b := newHome(l, "b", inet, lab.NATHard)

	if a.host.Addr() != b.host.Addr() {
		t.Fatalf("the two homes should overlap: %v vs %v", a.host.Addr(), b.host.Addr())
	}
	// Out through either NAT kind.
	mustReach(t, a.host, pub.Addr())
	mustReach(t, b.host, pub.Addr())

	// Nothing unsolicited gets in, even for a public host that routes the
	// home's LAN prefix to its router: neither forwarded into the LAN nor to
	// the router itself.
	if _, err := pub.Run("ip", "route", "add", homeNet.String(), "via", a.router.WANAddr().String()); err != nil {
		t.Fatal(err)
	}
	mustNotReach(t, pub, a.host.Addr())
	mustNotReach(t, pub, a.router.WANAddr())
	mustNotReach(t, pub, b.router.WANAddr())

	// The public host sees the router's address, not the LAN's.
	pub.Start(t, "reflector", helper(t, "reflect", "LISTEN=:3478")...)
	m := mapping(t, a.host, pub, 40000)
	if m.Addr() != a.router.WANAddr() {
		t.Errorf("mapped %v, want the router's WAN address %v", m, a.router.WANAddr())
	}
}

// mapping asks the reflector on pub (already running) how h's UDP port looks
// from the internet.
func mapping(t *testing.T, h *lab.Host, pub *lab.Host, port int) netip.AddrPort {
	t.Helper()
	out, err := h.Run(helper(t, "discover",
		fmt.Sprintf("LOCAL=:%d", port),
		fmt.Sprintf("SERVER=%s", netip.AddrPortFrom(pub.Addr(), 3478)))...)
	if err != nil {
		t.Fatalf("discover from %s: %v", h.Name(), err)
	}
	for _, line := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(line, "MAPPED "); ok {
			ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
			if err != nil {
				t.Fatal(err)
			}
			return ap
		}
	}
	t.Fatalf("discover from %s: no mapping in %q", h.Name(), out)
	return netip.AddrPort{}
}

// TestHolePunch checks that the lab's NATs behave as the NAT work assumes:
// two hosts behind port-preserving NATs reach each other by sending to each
// other's STUN-style mapping at the same time; behind fully-random NAT the
// mapping a reflector saw is useless to the peer.
func TestHolePunch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b lab.NATKind
		ok   bool
	}{
		{lab.NATEasy, lab.NATEasy, true},
		{lab.NATHard, lab.NATHard, false},
		{lab.NATEasy, lab.NATHard, false},
	} {
		t.Run(fmt.Sprintf("%v-%v", tc.a, tc.b), func(t *testing.T) {
			t.Parallel()
			l := lab.New(t)
			inet := l.Internet(internet)
			pub := l.Host("pub", inet)
			a := newHome(l, "a", inet, tc.a)
			b := newHome(l, "b", inet, tc.b)
			pub.Start(t, "reflector", helper(t, "reflect", "LISTEN=:3478")...)

			ma := mapping(t, a.host, pub, 40000)
			mb := mapping(t, b.host, pub, 40000)
			if tc.a == lab.NATEasy && ma != netip.AddrPortFrom(a.router.WANAddr(), 40000) {
				t.Errorf("easy NAT did not preserve the port: mapped %v", ma)
			}

			// Success comes in well under a second; failure takes the
			// whole timeout.
			timeout := "TIMEOUT=10s"
			if !tc.ok {
				timeout = "TIMEOUT=2s"
			}
			pa := a.host.Start(t, "punch-a", helper(t, "punch", "LOCAL=:40000", "PEER="+mb.String(), timeout)...)
			pb := b.host.Start(t, "punch-b", helper(t, "punch", "LOCAL=:40000", "PEER="+ma.String(), timeout)...)
			errA, errB := pa.Wait(), pb.Wait()
			if tc.ok && (errA != nil || errB != nil) {
				t.Errorf("punch failed: a: %v %q; b: %v %q", errA, pa.Output(), errB, pb.Output())
			}
			// Not one-way either: neither side hears the other at all.
			if !tc.ok && !(strings.Contains(pa.Output(), "nothing from") && strings.Contains(pb.Output(), "nothing from")) {
				t.Errorf("punch got through %v/%v NAT: a: %v %q; b: %v %q", tc.a, tc.b, errA, pa.Output(), errB, pb.Output())
			}
		})
	}
}

func TestMappingChanges(t *testing.T) {
	t.Parallel()
	l := lab.New(t)
	inet := l.Internet(internet)
	pub := l.Host("pub", inet)
	a := newHome(l, "a", inet, lab.NATEasy)
	pub.Start(t, "reflector", helper(t, "reflect", "LISTEN=:3478")...)

	before := mapping(t, a.host, pub, 40000)
	flows, err := a.router.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) == 0 {
		t.Fatal("router tracks no flow after a UDP exchange")
	}
	if err := a.router.FlushConntrack(); err != nil {
		t.Fatal(err)
	}
	if flows, err = a.router.Conntrack(); err != nil || len(flows) != 0 {
		t.Fatalf("after flush: %d flows (%v): %q", len(flows), err, flows)
	}

	newAddr := inet.Alloc()
	if err := a.router.SetWANAddr(newAddr); err != nil {
		t.Fatal(err)
	}
	after := mapping(t, a.host, pub, 40000)
	if after.Addr() != newAddr || after.Addr() == before.Addr() {
		t.Errorf("mapping after renumbering: %v (before %v), want address %v", after, before, newAddr)
	}
	mustReach(t, a.host, pub.Addr())
}

func TestLoopbackAddr(t *testing.T) {
	t.Parallel()
	l := lab.New(t)
	lan := l.LAN("lan", netip.MustParsePrefix("10.78.0.0/24"))
	a, b := l.Host("a", lan), l.Host("b", lan)
	pods := netip.MustParsePrefix("172.25.3.1/24")
	if err := a.AddLoopbackAddr(pods); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Run("ip", "route", "add", pods.Masked().String(), "via", a.Addr().String()); err != nil {
		t.Fatal(err)
	}
	mustReach(t, b, pods.Addr())
}

func TestProc(t *testing.T) {
	t.Parallel()
	l := lab.New(t)
	h := l.Host("h", l.LAN("lan", netip.MustParsePrefix("10.79.0.0/24")))
	p := h.Start(t, "sleeper", "sh", "-c", "ip -br addr show eth0; exec sleep 30")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.Output(), h.Addr().String()) {
		if time.Now().After(deadline) {
			t.Fatalf("process output %q lacks the namespace's address", p.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("process ignored SIGTERM")
	}
	if p.Wait() == nil {
		t.Error("killed process reported success")
	}
}

func TestSweep(t *testing.T) {
	lab.New(t) // skips (or fails in CI) where namespaces are unavailable
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("rl%d-beef-stale", dead.Process.Pid)
	if out, err := exec.Command("ip", "netns", "add", stale).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", stale).Run() })
	if err := lab.Sweep(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + stale); !os.IsNotExist(err) {
		t.Errorf("stale namespace %s survived Sweep (%v)", stale, err)
	}
}

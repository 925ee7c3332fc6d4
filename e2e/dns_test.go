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

// digArgs are dig's options for a lab query: one try, short timeout.
var digArgs = []string{"dig", "+time=2", "+tries=1"}

// The node resolver in kernel mode, asked with Debian's dig from another
// node's namespace: NODE.<zone> over UDP and TCP through wg0, NXDOMAIN for
// an unknown name, the zone changed with the CLI, and the resolved
// drop-in naming the mesh IP. From the lab internet, the node's underlay
// address has no resolver at all: it listens on the mesh IP only.
func TestDNSKernel(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("dig"); err != nil {
		if lab.Required() {
			t.Fatalf("dig (Debian dnsutils) is required: %v", err)
		}
		t.Skipf("dig (Debian dnsutils) not installed: %v", err)
	}
	l := newNATLab(t)
	a := l.addNode("a", l.inet)
	b := l.addNode("b", l.inet)
	l.form(a, b)
	ipA, ipB := l.meshIP(a), l.meshIP(b)

	dig := func(from *lab.Host, server netip.Addr, args ...string) (string, error) {
		return from.Run(append(append(append([]string{}, digArgs...), "@"+server.String()), args...)...)
	}
	l.eventually(30*time.Second, "b resolves names through a's resolver", func() error {
		for _, q := range []struct {
			args []string
			want netip.Addr
		}{
			{[]string{"+short", "b.runos.internal"}, ipB},
			{[]string{"+short", "+tcp", "A.Runos.Internal"}, ipA},
		} {
			out, err := dig(b.host, ipA, q.args...)
			if err != nil || out != q.want.String() {
				return fmt.Errorf("dig %v: %q %v, want %s", q.args, out, err, q.want)
			}
		}
		return nil
	})
	out, _ := dig(b.host, ipA, "nope.runos.internal")
	t.Logf("dig @%s nope.runos.internal from b:\n%s", ipA, out)
	if !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "SOA") {
		l.fatalf("unknown name: %s", out)
	}

	if out, err := a.cli("dns", "zone", "set", "lab.example", "--data-dir", a.dir); err != nil || !strings.Contains(out, "lab.example") {
		l.fatalf("dns zone set: %q %v", out, err)
	}
	l.eventually(30*time.Second, "the new zone on b", func() error {
		if out, err := dig(b.host, ipB, "+short", "a.lab.example"); err != nil || out != ipA.String() {
			return fmt.Errorf("%q %v", out, err)
		}
		return nil
	})
	conf, err := a.cli("dns", "resolved-config", "--data-dir", a.dir)
	if err != nil || !strings.Contains(conf, "DNS="+ipA.String()) || !strings.Contains(conf, "Domains=~lab.example") {
		l.fatalf("resolved-config: %q %v", conf, err)
	}

	// The lab internet asks the node's public (underlay) address: nothing
	// answers there, over UDP or TCP.
	x := l.lab.Host("x", l.inet)
	for _, proto := range []string{"+notcp", "+tcp"} {
		out, err := dig(x, a.host.Addr(), proto, "a.lab.example")
		if err == nil || strings.Contains(out, "status:") {
			l.fatalf("dig %s @%s from the internet got an answer: %s", proto, a.host.Addr(), out)
		}
	}
}

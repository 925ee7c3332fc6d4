package e2e

import (
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
}

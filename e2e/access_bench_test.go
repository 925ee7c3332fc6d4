package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkAccessFirstPing measures what a user waits for: from `access
// add` on a node to the first ping the new device gets through the cluster
// (laptop behind its own NAT, reference wireguard-go, entry node's wg1
// brought up for the device: the previous one was removed, so wg1 starts
// cold every time). Reports the median and the slowest of the runs, and
// how much of it the add command itself took.
func BenchmarkAccessFirstPing(b *testing.B) {
	l := newNATLab(b)
	x, y := l.addNode("x", l.inet), l.addNode("y", l.inet)
	lp := newLaptop(b, l)
	l.form(x, y)
	target := l.meshIP(y)
	const runs = 5
	var total, adds []time.Duration
	for range b.N {
		for i := range runs {
			name := fmt.Sprintf("bench-%d", len(total))
			var added accessConfigJSON
			t0 := time.Now()
			if err := y.cliJSON(&added, "access", "add", name, "--via", "x", "--json", "--data-dir", y.dir); err != nil {
				b.Fatal(err)
			}
			addTook := time.Since(t0)
			lp.up(added.Config)
			// One echo request every 50 ms until the first answer.
			if out, err := lp.host.Run("ping", "-c", "1", "-i", "0.05", "-w", "20", target.String()); err != nil {
				b.Fatalf("run %d: no ping through the cluster: %v: %s", i, err, out)
			}
			total = append(total, time.Since(t0))
			adds = append(adds, addTook)
			if _, err := y.cli("access", "remove", name, "--data-dir", y.dir); err != nil {
				b.Fatal(err)
			}
			l.eventually(30*time.Second, "x takes wg1 down", func() error {
				if _, err := x.host.Run("ip", "link", "show", "wg1"); err == nil {
					return fmt.Errorf("wg1 still up")
				}
				return nil
			})
		}
	}
	slices.Sort(total)
	slices.Sort(adds)
	b.ReportMetric(float64(total[len(total)/2].Milliseconds()), "p50-add-to-ping-ms")
	b.ReportMetric(float64(total[len(total)-1].Milliseconds()), "max-add-to-ping-ms")
	b.ReportMetric(float64(adds[len(adds)/2].Milliseconds()), "p50-add-cmd-ms")
	b.Logf("add to first ping, %d runs: %v (access add itself: %v)", len(total), total, adds)
}

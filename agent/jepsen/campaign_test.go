//go:build jepsen

package jepsen

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/runos/runos-agent/agent/agenttest"
)

// TestMain checks that no schedule leaks a goroutine: every agent, client
// and nemesis stops with its cluster.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, agenttest.LeakOptions()...) }

// scheduleLimit bounds one schedule, cluster start and cleanup included
// (they take seconds): beyond it the schedule hung.
const scheduleLimit = 5 * time.Minute

// outDir is where reports go: $JEPSEN_OUT, or a temporary dir.
func outDir(t *testing.T) string {
	if d := os.Getenv("JEPSEN_OUT"); d != "" {
		return d
	}
	return t.TempDir()
}

func runAll(t *testing.T, seed uint64, schedules []Schedule) {
	dir := outDir(t)
	sum := &Summary{Seed: seed}
	for _, s := range schedules {
		var res *Result
		var ops []Op
		ran := false
		// A schedule that does not end (a Close that never returns, a
		// wedged cluster) is a finding too: its goroutines go to the
		// report and the campaign stops.
		watchdog := time.AfterFunc(scheduleLimit, func() {
			buf := make([]byte, 64<<20)
			buf = buf[:runtime.Stack(buf, true)]
			p := filepath.Join(dir, s.Name+"-hung-goroutines.txt")
			_ = os.WriteFile(p, buf, 0o644)
			panic(fmt.Sprintf("schedule %s still running after %s; goroutines in %s", s.Name, scheduleLimit, p))
		})
		t.Run(s.Name, func(t *testing.T) {
			ran = true
			res = Run(t, s)
			ops = res.history
			for _, v := range res.Violations() {
				t.Errorf("%s: %s", s.Name, v)
			}
			t.Logf("%s: %d ops (ok %d, fail %d, info %d) linearizable %v, with stale reads %v, stale %+v",
				s.Name, res.Total.Ops, res.Total.OK, res.Total.Fail, res.Total.Info, res.Lin, res.StaleLin, res.Stale)
			if res.Cloud != nil {
				t.Logf("%s: cloud %+v", s.Name, *res.Cloud)
			}
		})
		watchdog.Stop()
		if !ran {
			continue // filtered out by -run
		}
		if res == nil {
			sum.Schedules++
			sum.Rows = append(sum.Rows, "| "+s.Name+" | | | | | | | | | **FAIL**: the harness stopped (see the test log) |")
			continue
		}
		if err := res.Write(dir, ops); err != nil {
			t.Error(err)
		}
		if sum.StalePicture == "" {
			if p, ok := res.WriteStalePicture(dir); ok {
				sum.StalePicture = p
			}
		}
		sum.Add(res)
	}
	md := sum.Markdown()
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(md), 0o644); err != nil {
		t.Error(err)
	}
	t.Logf("report in %s:\n%s", dir, md)
}

// TestJepsenCI runs the fixed schedules every `make test` runs.
func TestJepsenCI(t *testing.T) {
	runAll(t, 0, Fixed())
}

// TestJepsenMutant runs the mutation check's schedules; against a
// correct build it passes like TestJepsenCI (make jepsen-mutants runs it
// against broken builds, where it must fail).
func TestJepsenMutant(t *testing.T) {
	if os.Getenv("JEPSEN_MUTANT") == "" {
		t.Skip("make jepsen-mutants runs this")
	}
	runAll(t, 0, Mutant())
}

// TestJepsenCampaign is `make jepsen`: JEPSEN_SCHEDULES randomized
// schedules from SEED (a new one, printed, when unset).
func TestJepsenCampaign(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("JEPSEN_SCHEDULES"))
	if n <= 0 {
		t.Skip("set JEPSEN_SCHEDULES (make jepsen) to run the randomized campaign")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("SEED=%q: %v", s, err)
		}
		seed = v
	}
	first, _ := strconv.Atoi(os.Getenv("JEPSEN_FIRST"))
	t.Logf("SEED=%d (replay: make jepsen SEED=%d)", seed, seed)
	var schedules []Schedule
	for i := first; i < first+n; i++ {
		s := Random(seed, i)
		t.Logf("%s", s)
		schedules = append(schedules, s)
	}
	runAll(t, seed, schedules)
}

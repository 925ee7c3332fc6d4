//go:build jepsen

package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runos/runos-agent/agent/jepsen"
)

// TestJepsenLab is the fault campaign on real processes (make jepsen-lab):
// three `runos-agent run` in kernel mode, each in its namespace, with
// production timers; clients on the nodes' unix sockets while a nemesis
// kills, pauses, partitions (nftables, also one way), restarts every node,
// or fills a node's disk. Each fault is one schedule, checked like the
// in-process ones (agent/jepsen).
func TestJepsenLab(t *testing.T) {
	// Every data dir on its own small tmpfs, so a full disk is one dd.
	c := newCluster(t, "10.96.15.0/24", "a", "b", "c")
	for _, n := range c.nodes {
		must(t, os.MkdirAll(n.dir, 0o700))
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", n.dir).CombinedOutput(); err != nil {
			t.Fatalf("mount tmpfs: %v: %s", err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("umount", n.dir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", n.dir, err, out)
			}
		})
	}
	first := c.nodes[0]
	first.initCluster()
	first.start()
	for _, n := range c.nodes[1:] {
		n.join(first)
		n.startNoWait()
	}
	c.eventually(2*time.Minute, "cluster forms", func() error { return c.formed(c.nodes, nil, c.names(c.nodes)) })
	var dirs []string
	for _, n := range c.nodes {
		dirs = append(dirs, n.dir)
	}
	out := os.Getenv("JEPSEN_OUT")
	if out == "" {
		out = t.TempDir()
	}
	sum := &jepsen.Summary{}
	leaderOf := func() *agentNode { return c.leader(c.nodes) }
	type fault struct {
		name            string
		inject, recover func() string
		hold            time.Duration // 20 s when zero
		// until, when set, holds the fault past hold until it returns nil
		// (at most 3 minutes): a fault whose effect takes a while to show.
		until func() error
	}
	var victim *agentNode
	var pausedProc interface{ Signal(syscall.Signal) error }
	// SEED picks the random node, so a failing run replays.
	seed, _ := strconv.ParseUint(os.Getenv("SEED"), 10, 64)
	rng := rand.New(rand.NewPCG(seed, 0x6c6162))
	faults := []fault{
		{"kill9-leader",
			func() string { victim = leaderOf(); victim.kill(); return "kill -9 " + victim.name },
			func() string { victim.start(); return "restarted " + victim.name }, 0, nil},
		{"kill9-random",
			func() string {
				victim = c.nodes[rng.IntN(len(c.nodes))]
				role := "follower"
				if victim == leaderOf() {
					role = "leader"
				}
				victim.kill()
				return fmt.Sprintf("kill -9 %s (SEED %d; the %s)", victim.name, seed, role)
			},
			func() string { victim.start(); return "restarted " + victim.name }, 0, nil},
		{"sigstop-leader-35s",
			func() string {
				victim = leaderOf()
				p := victim.current()
				pausedProc = p
				t.Cleanup(func() { _ = p.Signal(syscall.SIGCONT) })
				must(t, p.Signal(syscall.SIGSTOP))
				return "SIGSTOP " + victim.name
			},
			func() string { must(t, pausedProc.Signal(syscall.SIGCONT)); return "SIGCONT " + victim.name },
			// Past the offline threshold (30 s), not only degraded (10 s).
			35 * time.Second, nil},
		{"partition-leader",
			func() string {
				victim = leaderOf()
				for _, o := range others(c.nodes, victim) {
					must(t, victim.host.Block(o.host.Addr()))
				}
				return "nftables: " + victim.name + " cut off both ways"
			},
			func() string {
				for _, o := range others(c.nodes, victim) {
					must(t, victim.host.Unblock(o.host.Addr()))
				}
				return "healed"
			}, 0, nil},
		{"oneway-leader-to-follower",
			func() string {
				l := leaderOf()
				victim = others(c.nodes, l)[0]
				must(t, victim.host.BlockFrom(l.host.Addr()))
				return fmt.Sprintf("nftables: %s drops what %s (leader) sends; its own packets go out", victim.name, l.name)
			},
			func() string {
				for _, o := range others(c.nodes, victim) {
					_ = victim.host.UnblockFrom(o.host.Addr())
				}
				return "healed"
			}, 0, nil},
		{"restart-all",
			func() string {
				for _, n := range c.nodes {
					n.kill()
				}
				return "kill -9 of every node"
			},
			func() string {
				for _, n := range c.nodes {
					n.startNoWait()
				}
				for _, n := range c.nodes {
					c.eventually(time.Minute, n.name+" answers", func() error { _, err := n.status(); return err })
				}
				return "all restarted"
			}, 0, nil},
		{"full-disk-leader",
			func() string {
				victim = leaderOf()
				out, _ := exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(victim.dir, "filler"), "bs=1M").CombinedOutput()
				if !strings.Contains(string(out), "No space left") {
					t.Fatalf("filling the tmpfs: %s", out)
				}
				return "data dir of " + victim.name + " (the leader) full"
			},
			func() string {
				// What the full disk did to the node, from its log.
				st, _ := victim.status()
				role := "?"
				if st != nil {
					role = st.Raft.State
				}
				must(t, os.Remove(filepath.Join(victim.dir, "filler")))
				return fmt.Sprintf("space freed on %s (%d ENOSPC lines in its log; Raft state %s)", victim.name, enospcLines(victim), role)
			}, 0,
			// The log's segments are allocated ahead (4 MiB), so a node
			// meets the full disk only once its writes need a new one.
			func() error {
				if enospcLines(victim) == 0 {
					return fmt.Errorf("%s has not met the full disk yet", victim.name)
				}
				return nil
			}},
	}
	for i, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			h := jepsen.NewHistory()
			// Keys of its own: the cluster carries on from the previous
			// schedule.
			keys := []string{f.name + "-k0", f.name + "-k1"}
			w := jepsen.Workload{Clients: 6, Nodes: len(c.nodes), Keys: keys, Seed: uint64(i), Dir: func(n int) string { return dirs[n] },
				Timeout: func(client int) time.Duration {
					if client%2 == 0 {
						return 45 * time.Second // past the agent's own write timeout
					}
					return 10 * time.Second
				}}
			var log []string
			note := func(s string) {
				line := fmt.Sprintf("%6.2fs %s", time.Duration(h.Now()).Seconds(), s)
				log = append(log, line)
				t.Log(line)
			}
			stop := w.Start(h)
			time.Sleep(3 * time.Second)
			t0 := time.Now()
			note(f.inject())
			hold := f.hold
			if hold == 0 {
				hold = 20 * time.Second
			}
			time.Sleep(hold)
			if f.until != nil {
				c.eventually(3*time.Minute, f.name+" takes effect", f.until)
				note(fmt.Sprintf("took effect after %.0fs", time.Since(t0).Seconds()))
			}
			note(f.recover())
			time.Sleep(5 * time.Second)
			stop()
			note("clients stopped")
			c.eventually(3*time.Minute, "cluster re-forms", func() error { return c.formed(c.nodes, nil, nil) })
			note("formed")
			res := &jepsen.Result{Schedule: jepsen.Schedule{Name: "lab-" + f.name, Nodes: len(c.nodes), Tuning: "production", Clients: w.Clients, Keys: len(keys),
				Steps: []jepsen.Step{{Fault: f.name, At: 3 * time.Second, Until: 3*time.Second + time.Since(t0)}}}}
			res.Unhealed = jepsen.FinalReads(h, dirs, keys)
			final, err := jepsen.Converge(dirs)
			if err != nil {
				res.Divergence = err.Error()
			}
			res.Nemesis = log
			res.Elapsed = time.Since(t0)
			jepsen.Check(res, h.Ops(), keys, final)
			if err := res.Write(out, h.Ops()); err != nil {
				t.Error(err)
			}
			sum.Add(res)
			for _, v := range res.Violations() {
				t.Errorf("%s: %s", f.name, v)
			}
			t.Logf("%s: %d ops (ok %d, fail %d, info %d) linearizable %v, with stale reads %v, stale %+v",
				f.name, res.Total.Ops, res.Total.OK, res.Total.Fail, res.Total.Info, res.Lin, res.StaleLin, res.Stale)
		})
	}
	md := sum.Markdown()
	if err := os.WriteFile(filepath.Join(out, "report-lab.md"), []byte(md), 0o644); err != nil {
		t.Error(err)
	}
	t.Logf("report in %s:\n%s", out, md)
}

// enospcLines counts the lines of n's current run that report a full disk.
func enospcLines(n *agentNode) int {
	return strings.Count(strings.ToLower(n.current().Output()), "no space left on device")
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
)

// BenchmarkHealthDetection kill -9s a follower of a 3-node kernel-mode
// cluster (production timers) and times, from the kill, until every other
// node shows it degraded (degraded-s) and then offline (offline-s). The
// survivors' local APIs are polled in-process every 100 ms.
func BenchmarkHealthDetection(b *testing.B) {
	var degraded, offline time.Duration
	for range b.N {
		b.StopTimer()
		d, o := detectOnce(b)
		degraded += d
		offline += o
	}
	b.ReportMetric(degraded.Seconds()/float64(b.N), "degraded-s")
	b.ReportMetric(offline.Seconds()/float64(b.N), "offline-s")
}

func detectOnce(b *testing.B) (degraded, offline time.Duration) {
	c := startCluster(b, "10.94.0.0/24", "d1", "d2", "d3")
	defer func() {
		for _, n := range c.nodes {
			n.kill()
		}
	}()
	leader := c.leader(c.nodes)
	victim := others(c.nodes, leader)[0]
	observers := others(c.nodes, victim)
	firstDegraded := map[string]time.Duration{}
	firstOffline := map[string]time.Duration{}

	b.StartTimer()
	t0 := time.Now()
	victim.kill()
	for len(firstOffline) < len(observers) {
		if time.Since(t0) > 3*time.Minute {
			c.fatalf("not offline everywhere after %v: degraded %v offline %v", time.Since(t0), firstDegraded, firstOffline)
		}
		for _, o := range observers {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			ns, err := api.NewClient(o.dir).Nodes(ctx)
			cancel()
			if err != nil {
				c.fatalf("%v", err)
			}
			at := time.Since(t0)
			for _, x := range ns.Nodes {
				if x.Name != victim.name {
					continue
				}
				if _, ok := firstDegraded[o.name]; !ok && x.Health != api.Healthy {
					firstDegraded[o.name] = at
					b.Logf("%5.1fs: %s sees %s %s (%s)", at.Seconds(), o.name, victim.name, x.Health, x.HealthReason)
				}
				if _, ok := firstOffline[o.name]; !ok && x.Health == api.Offline {
					firstOffline[o.name] = at
					b.Logf("%5.1fs: %s sees %s %s (%s)", at.Seconds(), o.name, victim.name, x.Health, x.HealthReason)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.StopTimer()
	for _, o := range observers {
		degraded = max(degraded, firstDegraded[o.name])
		offline = max(offline, firstOffline[o.name])
	}
	return degraded, offline
}

// meterRules count, in a node's namespace, the underlay (UDP 51820, both
// directions) and the traffic inside wg0 by what it is for. An IP packet's
// length is counted (no link-layer header). Our heartbeats are sealed
// datagrams on the gossip port starting with 0xB7 (health.FramePrefix);
// before that they were memberlist user messages: type byte 8, first in
// the datagram or after memberlist's 5-byte CRC header (type 12).
const meterRules = `table inet runos_meter {
	counter underlay_in {}
	counter underlay_out {}
	counter heartbeat {}
	counter gossip_udp {}
	counter gossip_tcp {}
	counter raft {}
	counter node_api {}
	counter other {}
	chain under_in {
		type filter hook input priority -400; policy accept;
		udp dport 51820 counter name "underlay_in"
	}
	chain under_out {
		type filter hook output priority -400; policy accept;
		udp sport 51820 counter name "underlay_out"
	}
	chain inner_in {
		type filter hook input priority -400; policy accept;
		iifname "wg0" jump classify
	}
	chain inner_out {
		type filter hook output priority -400; policy accept;
		oifname "wg0" jump classify
	}
	chain classify {
		udp dport 7946 @th,64,8 0xb7 counter name "heartbeat" return
		udp dport 7946 @th,64,8 8 counter name "heartbeat" return
		udp dport 7946 @th,64,8 12 @th,104,8 8 counter name "heartbeat" return
		udp dport 7946 counter name "gossip_udp" return
		tcp dport 7946 counter name "gossip_tcp" return
		tcp sport 7946 counter name "gossip_tcp" return
		tcp dport 7947 counter name "raft" return
		tcp sport 7947 counter name "raft" return
		tcp dport 7948 counter name "node_api" return
		tcp sport 7948 counter name "node_api" return
		counter name "other"
	}
}
`

var meterClasses = []string{"heartbeat", "gossip_udp", "gossip_tcp", "raft", "node_api", "other"}

type counterVal struct{ packets, bytes uint64 }

func (n *agentNode) readMeter() (map[string]counterVal, error) {
	out, err := n.host.Run("nft", "-j", "list", "counters", "table", "inet", "runos_meter")
	if err != nil {
		return nil, fmt.Errorf("%s: nft: %v: %s", n.name, err, out)
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
				Bytes   uint64 `json:"bytes"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("%s: nft JSON: %v", n.name, err)
	}
	m := map[string]counterVal{}
	for _, x := range doc.Nftables {
		if x.Counter != nil {
			m[x.Counter.Name] = counterVal{x.Counter.Packets, x.Counter.Bytes}
		}
	}
	return m, nil
}

// procSample is a process's CPU time (user+system) and resident memory.
type procSample struct {
	cpu           time.Duration
	rss           uint64 // bytes
	anon, fileRSS uint64 // bytes: RssAnon (heap, stacks) and RssFile (binary, bolt mmap)
}

// clockTicks is USER_HZ, 100 on every Linux we run on.
const clockTicks = 100

func readProc(pid int) (procSample, error) {
	var s procSample
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name, which ends at the last ')': state is
	// field 3, utime 14 and stime 15.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(f) < 13 {
		return s, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return s, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	s.cpu = time.Duration(ut+st) * time.Second / clockTicks
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for line := range strings.Lines(string(status)) {
		k, v, ok := strings.Cut(line, ":")
		var dst *uint64
		switch k {
		case "VmRSS":
			dst = &s.rss
		case "RssAnon":
			dst = &s.anon
		case "RssFile":
			dst = &s.fileRSS
		}
		if !ok || dst == nil {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return s, fmt.Errorf("/proc/%d/status: %s %q", pid, k, v)
		}
		*dst = kb * 1024
	}
	return s, nil
}

// BenchmarkFootprint runs five kernel-mode agents (production timers)
// idle for a window (3 minutes; RUNOS_FOOTPRINT_WINDOW overrides) after
// they formed and settled, and reports per agent: resident memory (VmRSS at
// the end, split into anonymous and file-backed pages, and the largest VmRSS
// seen), CPU as a percentage of one core
// (utime+stime over the window), and underlay bytes (UDP 51820 in and out,
// nftables counters in the node's namespace) extrapolated to an hour. A
// table shows each node, and the traffic inside wg0 split by purpose.
// The issues' targets are RSS <= 35 MB, CPU < 0.5 %, <= 1 MB/h per node;
// they are reported, not asserted.
func BenchmarkFootprint(b *testing.B) {
	window := 3 * time.Minute
	if v := os.Getenv("RUNOS_FOOTPRINT_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("RUNOS_FOOTPRINT_WINDOW: %v", err)
		}
		window = d
	}
	for range b.N {
		b.StopTimer()
		footprintOnce(b, window)
	}
}

func footprintOnce(b *testing.B, window time.Duration) {
	c := startCluster(b, "10.93.0.0/24", "f1", "f2", "f3", "f4", "f5")
	defer func() {
		for _, n := range c.nodes {
			n.kill()
		}
	}()
	for _, n := range c.nodes {
		if err := nftApply(n, meterRules); err != nil {
			c.fatalf("%v", err)
		}
	}
	// Let the joins' aftermath (voter changes, events, first push/pulls)
	// pass: idle means idle.
	time.Sleep(30 * time.Second)
	if err := c.formed(c.nodes, nil, nil); err != nil {
		c.fatalf("not formed after settling: %v", err)
	}
	roles := map[string]string{}
	if ns, err := c.nodes[0].nodes(); err == nil {
		for _, x := range ns {
			roles[x.Name] = x.RaftRole
		}
	}

	type nodeRun struct {
		pid            int
		p0, p1         procSample
		rssMax         uint64
		meter0, meter1 map[string]counterVal
	}
	runs := map[string]*nodeRun{}
	read := func(n *agentNode, r *nodeRun) (procSample, map[string]counterVal) {
		p, err := readProc(r.pid)
		if err != nil {
			c.fatalf("%s: %v", n.name, err)
		}
		m, err := n.readMeter()
		if err != nil {
			c.fatalf("%v", err)
		}
		return p, m
	}
	t0 := time.Now()
	for _, n := range c.nodes {
		r := &nodeRun{pid: n.current().Pid()}
		r.p0, r.meter0 = read(n, r)
		r.rssMax = r.p0.rss
		runs[n.name] = r
	}
	b.StartTimer()
	for time.Since(t0) < window {
		time.Sleep(min(10*time.Second, window-time.Since(t0)))
		for _, n := range c.nodes {
			p, err := readProc(runs[n.name].pid)
			if err != nil {
				c.fatalf("%s: %v", n.name, err)
			}
			runs[n.name].rssMax = max(runs[n.name].rssMax, p.rss)
		}
	}
	b.StopTimer()
	for _, n := range c.nodes {
		r := runs[n.name]
		r.p1, r.meter1 = read(n, r)
		r.rssMax = max(r.rssMax, r.p1.rss)
	}
	elapsed := time.Since(t0)
	perHour := float64(time.Hour) / float64(elapsed)

	var sumRSS, maxRSS, sumAnon, sumFile, sumCPU, maxCPU, sumBytes, maxBytes float64
	classTotal := map[string]float64{}
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "footprint: 5 idle kernel-mode agents, production timers, %v window\n", elapsed.Round(time.Second))
	fmt.Fprintf(&tbl, "%-4s %-9s %8s %9s %9s %7s %12s %12s", "node", "role", "RSS MB", "anon/file", "max RSS", "CPU %", "underlay MB/h", "pkts/s")
	for _, k := range meterClasses {
		fmt.Fprintf(&tbl, " %10s", k)
	}
	fmt.Fprintf(&tbl, "   (inner wg0 MB/h by purpose)\n")
	for _, n := range c.nodes {
		r := runs[n.name]
		rss := float64(r.p1.rss) / 1e6
		cpu := float64(r.p1.cpu-r.p0.cpu) / float64(elapsed) * 100
		d := func(k string) counterVal {
			return counterVal{r.meter1[k].packets - r.meter0[k].packets, r.meter1[k].bytes - r.meter0[k].bytes}
		}
		under := float64(d("underlay_in").bytes+d("underlay_out").bytes) * perHour / 1e6
		pkts := float64(d("underlay_in").packets+d("underlay_out").packets) / elapsed.Seconds()
		sumRSS, maxRSS = sumRSS+rss, max(maxRSS, rss)
		sumAnon, sumFile = sumAnon+float64(r.p1.anon)/1e6, sumFile+float64(r.p1.fileRSS)/1e6
		sumCPU, maxCPU = sumCPU+cpu, max(maxCPU, cpu)
		sumBytes, maxBytes = sumBytes+under, max(maxBytes, under)
		split := fmt.Sprintf("%.0f/%.0f", float64(r.p1.anon)/1e6, float64(r.p1.fileRSS)/1e6)
		fmt.Fprintf(&tbl, "%-4s %-9s %8.1f %9s %9.1f %7.2f %12.2f %12.1f", n.name, roles[n.name], rss, split, float64(r.rssMax)/1e6, cpu, under, pkts)
		for _, k := range meterClasses {
			v := float64(d(k).bytes) * perHour / 1e6
			classTotal[k] += v
			fmt.Fprintf(&tbl, " %10.2f", v)
		}
		fmt.Fprintln(&tbl)
	}
	nodes := float64(len(c.nodes))
	fmt.Fprintf(&tbl, "mean %-9s %8.1f %9s %9s %7.2f %12.2f %12s", "", sumRSS/nodes, fmt.Sprintf("%.1f/%.1f", sumAnon/nodes, sumFile/nodes), "", sumCPU/nodes, sumBytes/nodes, "")
	for _, k := range meterClasses {
		fmt.Fprintf(&tbl, " %10.2f", classTotal[k]/nodes)
	}
	fmt.Fprintf(&tbl, "\ntargets: RSS <= 35 MB, CPU < 0.5 %%, underlay <= 1 MB/h per node\n")
	b.Log("\n" + tbl.String())
	b.ReportMetric(sumRSS/nodes, "rss-MB")
	b.ReportMetric(maxRSS, "rss-max-MB")
	b.ReportMetric(sumAnon/nodes, "anon-MB")
	b.ReportMetric(sumFile/nodes, "file-MB")
	b.ReportMetric(sumCPU/nodes, "cpu-%")
	b.ReportMetric(maxCPU, "cpu-max-%")
	b.ReportMetric(sumBytes/nodes, "underlay-MB/h")
	b.ReportMetric(maxBytes, "underlay-max-MB/h")
	for _, k := range meterClasses {
		b.ReportMetric(classTotal[k]/nodes, k+"-MB/h")
	}
}

func nftApply(n *agentNode, rules string) error {
	cmd := []string{"sh", "-c", "nft -f - <<'EOF'\n" + rules + "EOF\n"}
	if out, err := n.host.Run(cmd...); err != nil {
		return fmt.Errorf("%s: nft: %v: %s", n.name, err, out)
	}
	return nil
}

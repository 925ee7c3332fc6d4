package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
	"github.com/runos/runos-agent/kubehost/ociimage"
)

// Managed Kubernetes benchmarks (issue 13), all on one three-node cluster
// in lab kube nodes (the setup of TestKubeManaged), so that a single setup
// serves every figure and `before` and `after` figures come from the same
// run:
//
//	BenchmarkKube/Enable         `kube enable` -> all 3 Nodes Ready
//	BenchmarkKube/AgentRSS       agent VmRSS/RssAnon without vs with managed Kubernetes
//	BenchmarkKube/PodThroughput  iperf3 pod to pod across nodes vs mesh IP to mesh IP, over wg0
//	BenchmarkKube/AppDeploy      `apps deploy` -> the app's pod Running, p50/p99 over 20 apps
//
// Each sub-benchmark measures once whatever b.N is (make bench runs them
// with -benchtime 1x): enabling Kubernetes cannot be repeated on one
// cluster. A sub-benchmark run alone (-bench Kube/AppDeploy) enables
// Kubernetes itself. Needs what TestKubeManaged needs, plus iperf3.

const (
	// benchImageRef is busybox plus iperf3; its default command serves
	// HTTP, so an app deployed from it (the app template sets no command)
	// stays Running.
	benchImageRef = "runos.local/busybox:bench"
	// benchSettle is how long a cluster is left alone before its agents'
	// memory is read: joins, enable and the first reconciles have passed.
	benchSettle = 20 * time.Second
	// rssSamples readings one second apart are averaged per agent (the Go
	// heap breathes with each GC cycle).
	rssSamples = 5
	// benchDeploys apps are deployed one after the other, each with a new
	// name, and left running.
	benchDeploys = 20
	// iperfRounds pairs of flows (mesh, then pod) are averaged.
	iperfRounds = 2
)

// kubeBench is the cluster the sub-benchmarks share, and how far it got.
type kubeBench struct {
	*kubeCluster
	image string                // image tar with benchImageRef
	mesh  map[string]netip.Addr // node name -> mesh IP

	rssBefore map[string]agentMem // before `kube enable`, settled
	enableDur time.Duration       // `kube enable` -> all Ready; 0 before
	readyAt   time.Time
	imported  bool
}

// agentMem is an agent's memory, averaged over rssSamples readings, in
// bytes.
type agentMem struct{ rss, anon float64 }

func BenchmarkKube(b *testing.B) {
	kb := newKubeBench(b)
	for _, s := range []struct {
		name string
		f    func(*testing.B)
	}{
		{"Enable", kb.benchEnable},
		{"AgentRSS", kb.benchAgentRSS},
		{"PodThroughput", kb.benchPodThroughput},
		{"AppDeploy", kb.benchAppDeploy},
	} {
		ok := b.Run(s.name, func(sb *testing.B) {
			// The cluster helpers fail through kc.t: it must be the
			// benchmark whose goroutine runs them.
			kb.t = sb
			defer func() { kb.t = b }()
			s.f(sb)
			// Not per-operation timings: the figures are the metrics.
			sb.ReportMetric(0, "ns/op")
		})
		if !ok {
			return // the cluster is in an unknown state
		}
	}
}

// newKubeBench forms a three-node kernel-mode cluster (no Kubernetes yet),
// lets it settle and reads its agents' memory.
func newKubeBench(b *testing.B) *kubeBench {
	b.Helper()
	if _, err := exec.LookPath("iperf3"); err != nil {
		if lab.Required() {
			b.Fatalf("iperf3 not found (run scripts/test-deps.sh as root)")
		}
		b.Skipf("iperf3 not found: skipping (run scripts/test-deps.sh as root)")
	}
	kc := newKubeCluster(b, "10.92.0.0/24", 3)
	kb := &kubeBench{kubeCluster: kc, image: imageTar(b, benchImage(b)), mesh: map[string]netip.Addr{}}
	all := kc.nodes
	n1 := all[0]
	n1.initCluster()
	kc.startKube(n1)
	for _, n := range all[1:] {
		n.join(n1)
		kc.startKube(n)
	}
	kc.eventually(90*time.Second, "three-node mesh forms", func() error {
		return kc.formed(all, nil, kc.names(all))
	})
	for _, n := range all {
		st, err := n.status()
		if err != nil {
			kc.fatalf("%v", err)
		}
		kb.mesh[n.name] = netip.MustParseAddr(st.MeshIP)
	}
	time.Sleep(benchSettle)
	kb.rssBefore = kb.agentMemory()
	return kb
}

// benchImage is busybox serving HTTP on 8080 by default, with Debian's
// iperf3 and the shared libraries it loads (ldd's list, at the same paths:
// there is no ld.so.cache in the image, and glibc's built-in search path
// covers Debian's multiarch directories).
func benchImage(b *testing.B) ociimage.Image {
	b.Helper()
	img := busyboxImage(b, benchImageRef, "httpd", "-f", "-p", "8080", "-h", "/tmp")
	bin, err := exec.LookPath("iperf3")
	if err != nil {
		b.Fatal(err)
	}
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		b.Fatalf("ldd %s: %v", bin, err)
	}
	paths := []string{bin}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			paths = append(paths, f[2]) // libiperf.so.0 => /lib/... (0x...)
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			paths = append(paths, f[0]) // the loader: /lib64/ld-linux-x86-64.so.2 (0x...)
		}
	}
	for _, p := range paths {
		data, err := os.ReadFile(p) // follows symlinks: the image gets the file
		if err != nil {
			b.Fatal(err)
		}
		img.Files = append(img.Files, ociimage.File{Path: p, Mode: 0o755, Data: data})
	}
	return img
}

// agentMemory averages rssSamples readings of every agent's VmRSS and
// RssAnon, one second apart.
func (kb *kubeBench) agentMemory() map[string]agentMem {
	kb.t.Helper()
	pids := map[string]int{}
	for _, n := range kb.nodes {
		p := n.current()
		if p == nil {
			kb.fatalf("%s: no agent running", n.name)
		}
		// nsenter execs the agent: the Proc's pid is the agent's.
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.Pid()))
		if err != nil || strings.TrimSpace(string(comm)) != "runos-agent" {
			kb.fatalf("%s: pid %d is %q (%v), not runos-agent", n.name, p.Pid(), comm, err)
		}
		pids[n.name] = p.Pid()
	}
	mem := map[string]agentMem{}
	for i := range rssSamples {
		if i > 0 {
			time.Sleep(time.Second)
		}
		for name, pid := range pids {
			s, err := readProc(pid)
			if err != nil {
				kb.fatalf("%s: %v", name, err)
			}
			m := mem[name]
			m.rss += float64(s.rss) / rssSamples
			m.anon += float64(s.anon) / rssSamples
			mem[name] = m
		}
	}
	return mem
}

// enable runs `kube enable` once and waits for every node to be Ready with
// all its components running; then it fetches the admin kubeconfigs.
func (kb *kubeBench) enable() {
	kb.t.Helper()
	if kb.enableDur > 0 {
		return
	}
	n1 := kb.nodes[0]
	t0 := time.Now()
	if out, err := n1.cli("kube", "enable", "--data-dir", n1.dir); err != nil {
		kb.fatalf("%v", err)
	} else if !strings.Contains(out, kubeVersion) {
		kb.fatalf("kube enable said %q", out)
	}
	kb.eventually(4*time.Minute, "kube status: 3 nodes Ready, all components running", func() error {
		return kb.allReady(n1, kb.nodes)
	})
	kb.readyAt = time.Now()
	kb.enableDur = kb.readyAt.Sub(t0)
	for _, n := range kb.nodes {
		kb.fetchKubeconfig(n)
	}
}

// importImage puts the bench image into every node's containerd, once.
func (kb *kubeBench) importImage() {
	kb.t.Helper()
	if kb.imported {
		return
	}
	n1 := kb.nodes[0]
	out, err := n1.cli("kube", "import", "--data-dir", n1.dir, kb.image)
	if err != nil {
		kb.fatalf("%v", err)
	}
	for _, n := range kb.nodes {
		if !strings.Contains(out, n.name+": imported") {
			kb.fatalf("kube import: %s not imported:\n%s", n.name, out)
		}
	}
	kb.imported = true
}

// benchEnable: seconds from `kube enable` (the CLI call) until `kube
// status` shows the three Nodes Ready with every component running,
// polled every 250 ms.
func (kb *kubeBench) benchEnable(b *testing.B) {
	kb.enable()
	b.Logf("kube enable -> 3 Nodes Ready: %v", kb.enableDur.Round(10*time.Millisecond))
	b.ReportMetric(kb.enableDur.Seconds(), "ready-s")
}

// benchAgentRSS: the agents' memory before `kube enable` and benchSettle
// after all Nodes were Ready (both settled the same time, same agent
// processes). The agent only supervises the components (separate
// processes): the difference is the supervision, the Kubernetes clients
// (leader task, cluster DNS informers, balancer) and the larger state.
// The components' own RSS is reported beside it for scale.
func (kb *kubeBench) benchAgentRSS(b *testing.B) {
	kb.enable()
	if d := time.Until(kb.readyAt.Add(benchSettle)); d > 0 {
		time.Sleep(d)
	}
	after := kb.agentMemory()
	st, err := kb.kubeStatus(kb.nodes[0])
	if err != nil {
		kb.fatalf("%v", err)
	}
	comps := map[string]float64{} // node -> summed RSS of its components
	var table strings.Builder
	fmt.Fprintf(&table, "%-22s %12s %12s %12s %12s %14s\n", "node", "RSS before", "RSS after", "anon before", "anon after", "components")
	var rb, ra, ab, aa, cs float64
	for _, kn := range st.Nodes {
		for _, c := range kn.Components {
			if s, err := readProc(c.PID); err == nil && c.PID > 0 {
				comps[kn.Name] += float64(s.rss)
			}
		}
	}
	for _, n := range kb.nodes {
		x, y := kb.rssBefore[n.name], after[n.name]
		fmt.Fprintf(&table, "%-22s %9.1f MB %9.1f MB %9.1f MB %9.1f MB %11.1f MB\n", n.name, x.rss/1e6, y.rss/1e6, x.anon/1e6, y.anon/1e6, comps[n.name]/1e6)
		rb, ra, ab, aa, cs = rb+x.rss, ra+y.rss, ab+x.anon, aa+y.anon, cs+comps[n.name]
	}
	nodes := float64(len(kb.nodes)) * 1e6
	b.Logf("agent memory without / with managed Kubernetes (%d samples each, %v after the cluster got there):\n%s", rssSamples, benchSettle, table.String())
	b.ReportMetric(rb/nodes, "rss-before-MB")
	b.ReportMetric(ra/nodes, "rss-after-MB")
	b.ReportMetric(ab/nodes, "anon-before-MB")
	b.ReportMetric(aa/nodes, "anon-after-MB")
	b.ReportMetric(cs/nodes, "components-MB")
}

// benchPodThroughput: one TCP flow (iperf3, iperfSeconds) from node 1 to
// node 2 over wg0, between the nodes' mesh IPs and between pods pinned to
// the two nodes, alternately, in MB/s (received). The pod path adds the
// pods' veth and bridge at both ends and the nodes' forwarding.
func (kb *kubeBench) benchPodThroughput(b *testing.B) {
	kb.enable()
	kb.importImage()
	n1, n2 := kb.nodes[0], kb.nodes[1]
	manifest := iperfPod("iperf-server", n2.name, "iperf3", "-s") + iperfPod("iperf-client", n1.name, "sleep", "2147483647")
	file := filepath.Join(kb.tmp, "iperf.yaml")
	if err := os.WriteFile(file, []byte(manifest), 0o600); err != nil {
		b.Fatal(err)
	}
	// The default service account appears moments after the API answers;
	// until then pods are refused.
	kb.eventually(60*time.Second, "iperf pods accepted", func() error {
		_, err := kb.kubectl(n1, "apply", "-f", file)
		return err
	})
	var podIP map[string]netip.Addr
	kb.eventually(2*time.Minute, "iperf pods Running", func() error {
		var err error
		podIP, err = kb.podsRunning(n1, map[string]*agentNode{"iperf-server": n2, "iperf-client": n1})
		return err
	})
	n2.host.Start(b, "iperf3-server-"+n2.host.Name(), "iperf3", "-s")
	server := podIP["iperf-server"].String()
	kb.eventually(30*time.Second, "iperf3 servers answer", func() error {
		if out, err := n1.host.Run("iperf3", "-c", kb.mesh[n2.name].String(), "-t", "1"); err != nil {
			return fmt.Errorf("mesh: %v: %s", err, out)
		}
		if out, err := kb.kubectl(n1, "exec", "iperf-client", "--", "iperf3", "-c", server, "-t", "1"); err != nil {
			return fmt.Errorf("pod: %v: %s", err, out)
		}
		return nil
	})

	var mesh, pod float64
	meshFlow := func() {
		out, err := n1.host.Run("iperf3", "-c", kb.mesh[n2.name].String(), "-t", fmt.Sprint(iperfSeconds), "-J")
		bps, _, err := iperfResult(out, err)
		if err != nil {
			kb.fatalf("iperf3 %s -> %s mesh IP: %v", n1.name, n2.name, err)
		}
		mesh += bps / 8 / 1e6 / iperfRounds
	}
	podFlow := func() {
		rx0, _, err := wgCounters(n2)
		if err != nil {
			kb.fatalf("%v", err)
		}
		out, err := kb.kubectl(n1, "exec", "iperf-client", "--", "iperf3", "-c", server, "-t", fmt.Sprint(iperfSeconds), "-J")
		bps, got, err := iperfResult(out, err)
		if err != nil {
			kb.fatalf("iperf3 pod on %s -> pod on %s: %v", n1.name, n2.name, err)
		}
		rx1, _, err := wgCounters(n2)
		if err != nil {
			kb.fatalf("%v", err)
		}
		if rx1-rx0 < got {
			kb.fatalf("pod flow: %s received %d bytes, but its wg0 only %d: the flow did not cross wg0", n2.name, got, rx1-rx0)
		}
		pod += bps / 8 / 1e6 / iperfRounds
	}
	// Alternating which goes first evens out drift in what else the
	// machine does.
	for i := range iperfRounds {
		if i%2 == 0 {
			meshFlow()
			podFlow()
		} else {
			podFlow()
			meshFlow()
		}
	}
	b.Logf("one TCP flow %s -> %s over wg0: mesh IP to mesh IP %.0f MB/s, pod to pod %.0f MB/s (%.2f)", n1.name, n2.name, mesh, pod, pod/mesh)
	b.ReportMetric(mesh, "mesh-MB/s")
	b.ReportMetric(pod, "pod-MB/s")
	b.ReportMetric(pod/mesh, "pod/mesh")
}

// iperfPod is a pod of the bench image pinned to node, running command.
func iperfPod(name, node string, command ...string) string {
	cmd, _ := json.Marshal(command)
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: %s
    imagePullPolicy: Never
    command: %s
---
`, name, node, benchImageRef, cmd)
}

// benchAppDeploy: seconds from `runos-agent apps deploy NAME --image
// benchImageRef` (the CLI call) until the app's pod is Running and Ready,
// for benchDeploys apps deployed one after another (the earlier ones keep
// running). A single `kubectl get pods --watch` stamps the moment each
// namespace's pods are all Running, so polling neither delays nor loads
// the cluster.
func (kb *kubeBench) benchAppDeploy(b *testing.B) {
	kb.enable()
	kb.importImage()
	n1 := kb.nodes[0]
	w := kb.watchPods(b, n1)
	var total, cli []time.Duration
	for i := range benchDeploys {
		name := fmt.Sprintf("bench%d", i+1)
		t0 := time.Now()
		var app struct {
			OSID string `json:"osid"`
		}
		if err := n1.cliJSON(&app, "apps", "deploy", name, "--image", benchImageRef, "--json", "--data-dir", n1.dir); err != nil {
			kb.fatalf("%v", err)
		}
		cli = append(cli, time.Since(t0))
		if app.OSID == "" {
			kb.fatalf("apps deploy %s: no osid", name)
		}
		at, err := w.running(app.OSID, 2*time.Minute)
		if err != nil {
			kb.fatalf("app %s (%s): %v", name, app.OSID, err)
		}
		total = append(total, at.Sub(t0))
	}
	slices.Sort(total)
	slices.Sort(cli)
	b.Logf("apps deploy -> pod Running, %d apps: %v (the CLI returned after p50 %v)", len(total), roundAll(total), percentile(cli, 50).Round(time.Millisecond))
	// Where slow ones lost time: a controller refusing or retrying (no
	// service account yet, a failed sandbox) leaves Warning events in the
	// app's namespace.
	out, err := kb.kubectl(n1, "get", "events", "-A", "--field-selector", "type=Warning", "--no-headers",
		"-o", "custom-columns=NS:.metadata.namespace,REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message")
	if err != nil {
		kb.fatalf("%v", err)
	}
	var warnings []string
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "bench") {
			warnings = append(warnings, strings.TrimSpace(line))
		}
	}
	b.Logf("Warning events in the apps' namespaces: %d %v", len(warnings), warnings[:min(len(warnings), 10)])
	b.ReportMetric(percentile(total, 50).Seconds(), "p50-s")
	b.ReportMetric(percentile(total, 99).Seconds(), "p99-s")
	b.ReportMetric(percentile(cli, 50).Seconds(), "cli-p50-s")
}

// percentile is the nearest-rank p-th percentile of sorted d.
func percentile(d []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p/100*float64(len(d)))) - 1
	return d[max(0, min(i, len(d)-1))]
}

func roundAll(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, x := range d {
		out[i] = x.Round(10 * time.Millisecond)
	}
	return out
}

// podWatch follows every pod of the cluster through one kubectl watch and
// records when each namespace first had all its pods Running and Ready.
type podWatch struct {
	done chan struct{} // closed when kubectl has exited
	err  error         // why it exited; valid once done is closed

	mu      sync.Mutex                 // guards the fields below
	pods    map[string]map[string]bool // namespace -> pod -> running and ready
	readyAt map[string]time.Time       // namespace -> first time all its pods ran
	changed chan struct{}              // closed and replaced on every new readyAt
}

func (kb *kubeBench) watchPods(b *testing.B, via *agentNode) *podWatch {
	b.Helper()
	cmd, err := via.host.KubeCommand(filepath.Join(kb.binDir, "kubectl"), "--kubeconfig", kb.kubecfg[via.name],
		"--cache-dir", filepath.Join(kb.tmp, "kubectl-cache-watch"), "get", "pods", "--all-namespaces", "--watch", "-o", "json")
	if err != nil {
		b.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("kubectl watch: %v", err)
	}
	w := &podWatch{done: make(chan struct{}), pods: map[string]map[string]bool{},
		readyAt: map[string]time.Time{}, changed: make(chan struct{})}
	go func() {
		err := w.read(stdout)
		werr := cmd.Wait()
		w.err = fmt.Errorf("kubectl watch ended: %v, %v: %s", err, werr, lastLines(stderr.String(), 5))
		close(w.done)
	}()
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-w.done
	})
	return w
}

// read decodes kubectl's stream of pod objects until it ends.
func (w *podWatch) read(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var p struct {
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
			Status struct {
				Phase      string         `json:"phase"`
				Conditions []k8sCondition `json:"conditions"`
			} `json:"status"`
		}
		if err := dec.Decode(&p); err != nil {
			return err
		}
		now := time.Now()
		ns := p.Metadata.Namespace
		w.mu.Lock()
		if w.pods[ns] == nil {
			w.pods[ns] = map[string]bool{}
		}
		w.pods[ns][p.Metadata.Name] = p.Status.Phase == "Running" && condition(p.Status.Conditions, "Ready")
		if _, seen := w.readyAt[ns]; !seen && !slices.Contains(slices.Collect(maps.Values(w.pods[ns])), false) {
			w.readyAt[ns] = now
			close(w.changed)
			w.changed = make(chan struct{})
		}
		w.mu.Unlock()
	}
}

// running waits until namespace ns has had all its pods Running and
// returns when that was first seen.
func (w *podWatch) running(ns string, timeout time.Duration) (time.Time, error) {
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		at, ok := w.readyAt[ns]
		ch := w.changed
		state := fmt.Sprint(w.pods[ns])
		w.mu.Unlock()
		if ok {
			return at, nil
		}
		select {
		case <-ch:
		case <-w.done:
			return time.Time{}, w.err
		case <-deadline:
			return time.Time{}, fmt.Errorf("pods not all Running after %v (pod -> running: %s)", timeout, state)
		}
	}
}

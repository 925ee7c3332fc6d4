package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

// Managed Kubernetes (issue 13) end to end: three agents in lab kube nodes
// (each its own network and mount namespace), `kube enable`, real pods on
// every node talking over wg0, a Service reached by its cluster DNS name,
// the Raft leader's node power-cut, every agent restarted, a node removed.
//
// Needs root, the lab, containerd/runc/CNI plugins/etcd/busybox-static
// (scripts/test-deps.sh) and the Kubernetes binaries (scripts/build-kube.sh).

const (
	kubeVersion = "v1.34.4"
	imageRef    = "runos.local/busybox:e2e"
	appImageRef = "runos.local/web:e2e"
	httpPort    = 8080
)

// The CLI's JSON from the documented contract (see cluster_test.go for why
// it is declared here).
type kubeStatusJSON struct {
	Etcd []struct {
		Node  string `json:"node"`
		Phase string `json:"phase"`
	} `json:"etcd"`
	Managed  bool   `json:"managed"`
	Version  string `json:"version"`
	APIError string `json:"api_error"`
	Nodes    []struct {
		Name       string `json:"name"`
		Ready      bool   `json:"ready"`
		Error      string `json:"error"`
		Components []struct {
			Name      string `json:"name"`
			Running   bool   `json:"running"`
			PID       int    `json:"pid"`
			Restarts  int    `json:"restarts"`
			LastError string `json:"last_error"`
			Version   string `json:"version"`
		} `json:"components"`
	} `json:"nodes"`
}

// What the test reads from the Kubernetes API (kubectl -o json).
type k8sNodeList struct {
	Items []struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			PodCIDR string `json:"podCIDR"`
		} `json:"spec"`
		Status struct {
			Addresses []struct {
				Type    string `json:"type"`
				Address string `json:"address"`
			} `json:"addresses"`
			Conditions []k8sCondition `json:"conditions"`
		} `json:"status"`
	} `json:"items"`
}

type k8sPodList struct {
	Items []struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			NodeName string `json:"nodeName"`
		} `json:"spec"`
		Status struct {
			Phase      string         `json:"phase"`
			PodIP      string         `json:"podIP"`
			Conditions []k8sCondition `json:"conditions"`
		} `json:"status"`
	} `json:"items"`
}

type k8sCondition struct {
	Type   string `json:"type"`
	Status string `json:"status"`
}

func condition(cs []k8sCondition, typ string) bool {
	for _, c := range cs {
		if c.Type == typ {
			return c.Status == "True"
		}
	}
	return false
}

// kubeBinDir is the directory of the Kubernetes binaries: $RUNOS_KUBE_BIN,
// else what scripts/build-kube.sh prints (it builds them once, which takes
// minutes; afterwards it answers at once). Without them the test skips, or
// fails where the lab is required.
func kubeBinDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("RUNOS_KUBE_BIN")
	if dir == "" {
		cmd := exec.Command("bash", filepath.Join("..", "scripts", "build-kube.sh"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		lines := strings.Fields(string(out))
		if err != nil || len(lines) == 0 {
			kubeMissing(t, fmt.Errorf("scripts/build-kube.sh: %v: %s", err, lastLines(stderr.String(), 20)))
		}
		dir = lines[len(lines)-1]
	}
	for _, b := range []string{"kubelet", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
			kubeMissing(t, fmt.Errorf("%s/%s missing (scripts/build-kube.sh builds it)", dir, b))
		}
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "runc", "etcd", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"} {
		if _, err := exec.LookPath(b); err != nil {
			kubeMissing(t, fmt.Errorf("%s missing (scripts/test-deps.sh installs containerd runc containernetworking-plugins etcd-server)", b))
		}
	}
	return dir
}

func kubeMissing(t testing.TB, err error) {
	t.Helper()
	if lab.Required() || os.Getenv("RUNOS_KUBE_REQUIRED") == "1" {
		t.Fatalf("managed Kubernetes e2e: %v", err)
	}
	t.Skipf("managed Kubernetes e2e: %v", err)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// kubeCluster is a cluster whose agents run in lab kube nodes and manage
// Kubernetes.
type kubeCluster struct {
	*cluster
	binDir string
	// agentBinDir, if set, is the agents' --kube-bin-dir instead of
	// binDir (kubectl still comes from binDir).
	agentBinDir string
	tmp         string
	kubecfg     map[string]string // node name -> admin kubeconfig file
}

// newKubeCluster creates n kube-node Hosts on a LAN. Agent names are the
// hosts' KubeNodeName (unique on the machine: the kubelet's cgroupRoot is
// /runos/<name>, and the lab cleans up by that name).
func newKubeCluster(t testing.TB, subnet string, n int, behindNAT ...int) *kubeCluster {
	t.Helper()
	binDir := kubeBinDir(t)
	c := &cluster{t: t, lab: lab.New(t)}
	c.bin = agentBin(t)
	c.lan = c.lab.LAN("lan", netip.MustParsePrefix(subnet))
	dirs := t.TempDir()
	for i := 1; i <= n; i++ {
		seg := c.lan
		if slices.Contains(behindNAT, i) {
			// A home of its own: a LAN behind a port-preserving NAT router
			// with a WAN leg on the shared segment, which drops unsolicited
			// input like a home router; WireGuard gets through by hole
			// punching, so pods talk across the NAT.
			home := c.lab.LAN(fmt.Sprintf("home%d", i), netip.MustParsePrefix(fmt.Sprintf("192.168.%d.0/24", 100+i)))
			c.lab.Router(fmt.Sprintf("r%d", i), c.lan, home, lab.NATEasy)
			seg = home
		}
		h := c.lab.Host(fmt.Sprintf("k%d", i), seg)
		name := h.KubeNodeName()
		c.nodes = append(c.nodes, &agentNode{c: c, name: name, host: h, dir: filepath.Join(dirs, name)})
	}
	kc := &kubeCluster{cluster: c, binDir: binDir, tmp: t.TempDir(), kubecfg: map[string]string{}}
	// fatalf dumps while the agents run; a failure that did not go
	// through it dumps at cleanup, when the agents (killed by their own
	// cleanups, which run first) can no longer answer but logs remain.
	c.dumpMore = kc.dumpKube
	t.Cleanup(func() {
		if t.Failed() {
			c.dump()
		}
	})
	return kc
}

// startKube launches `run` in the node's kube node and returns once the
// local API answers.
func (kc *kubeCluster) startKube(n *agentNode) {
	kc.t.Helper()
	n.mu.Lock()
	if n.proc != nil {
		n.mu.Unlock()
		kc.t.Fatalf("%s is already running", n.name)
	}
	bin := kc.binDir
	if kc.agentBinDir != "" {
		bin = kc.agentBinDir
	}
	p := n.host.StartKubeNode(kc.t, fmt.Sprintf("agent-%s-%d", n.host.Name(), len(n.procs)+1),
		kc.bin, "run", "--data-dir", n.dir, "--net", "kernel", "--kube-bin-dir", bin, "--metrics-listen", kubeMetricsAddr)
	n.proc = p
	n.procs = append(n.procs, p)
	n.mu.Unlock()
	kc.eventually(30*time.Second, n.name+" answers status", func() error {
		select {
		case <-p.Done():
			return fmt.Errorf("%s: run exited: %v", n.name, p.Wait())
		default:
		}
		_, err := n.status()
		return err
	})
}

// crash power-cuts n's kube node: the agent, every component, every pod.
func (kc *kubeCluster) crash(n *agentNode) {
	kc.t.Helper()
	n.mu.Lock()
	p := n.proc
	n.proc = nil
	n.mu.Unlock()
	if err := n.host.CrashKubeNode(); err != nil {
		kc.fatalf("crash %s: %v", n.name, err)
	}
	if p != nil {
		<-p.Done()
	}
}

func (kc *kubeCluster) kubeStatus(n *agentNode) (*kubeStatusJSON, error) {
	var st kubeStatusJSON
	return &st, n.cliJSON(&st, "kube", "status", "--json", "--data-dir", n.dir)
}

// kubectl runs the cluster's kubectl inside n's kube node with n's admin
// kubeconfig (server: the node's own balancer at 127.0.0.1:6444).
func (kc *kubeCluster) kubectl(n *agentNode, args ...string) (string, error) {
	cfg, ok := kc.kubecfg[n.name]
	if !ok {
		return "", fmt.Errorf("no kubeconfig fetched for %s", n.name)
	}
	base := []string{filepath.Join(kc.binDir, "kubectl"), "--kubeconfig", cfg, "--request-timeout=30s",
		"--cache-dir", filepath.Join(kc.tmp, "kubectl-cache-"+n.host.Name())}
	return n.host.KubeRun(append(base, args...)...)
}

func (kc *kubeCluster) kubectlJSON(n *agentNode, v any, args ...string) error {
	out, err := kc.kubectl(n, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("kubectl %s: bad JSON: %v", strings.Join(args, " "), err)
	}
	return nil
}

// fetchKubeconfig stores n's admin kubeconfig in a file kubectl in the
// node can read.
func (kc *kubeCluster) fetchKubeconfig(n *agentNode) {
	kc.t.Helper()
	out, err := n.cli("kube", "kubeconfig", "--data-dir", n.dir)
	if err != nil {
		kc.fatalf("%v", err)
	}
	if !strings.Contains(out, "https://127.0.0.1:6444") {
		kc.fatalf("%s: admin kubeconfig does not point at the local balancer https://127.0.0.1:6444:\n%s", n.name, out)
	}
	path := filepath.Join(kc.tmp, n.host.Name()+".kubeconfig")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		kc.fatalf("%v", err)
	}
	kc.kubecfg[n.name] = path
}

// kubeMetricsAddr is where every kube node serves /metrics (each on the
// loopback of its own network namespace).
const kubeMetricsAddr = "127.0.0.1:9464"

// metricsReady is nil once n's /metrics shows its Kubernetes Node Ready
// and every component up (the node-wide ones at least), each with a
// restart counter.
func (kc *kubeCluster) metricsReady(n *agentNode) error {
	out, err := n.host.KubeRun("curl", "-sSf", "--max-time", "10", "http://"+kubeMetricsAddr+"/metrics")
	if err != nil {
		return err
	}
	samples := map[string]string{}
	for line := range strings.Lines(out) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), " "); ok && strings.HasPrefix(k, "runos_kube_") {
			samples[k] = v
		}
	}
	if v := samples["runos_kube_node_ready"]; v != "1" {
		return fmt.Errorf("%s: runos_kube_node_ready %q, want 1", n.name, v)
	}
	for _, c := range []string{"containerd", "kubelet", "kube-proxy", "api-balancer", "cluster-dns"} {
		up := fmt.Sprintf(`runos_kube_component_up{component=%q}`, c)
		if v := samples[up]; v != "1" {
			return fmt.Errorf("%s: %s %q, want 1", n.name, up, v)
		}
		if _, ok := samples[fmt.Sprintf(`runos_kube_component_restarts_total{component=%q}`, c)]; !ok {
			return fmt.Errorf("%s: no restart counter for %s", n.name, c)
		}
	}
	for k, v := range samples {
		if strings.HasPrefix(k, "runos_kube_component_up{") && v != "1" {
			return fmt.Errorf("%s: %s %s", n.name, k, v)
		}
	}
	return nil
}

// allReady is nil once `kube status` on via reports managed Kubernetes
// version kubeVersion with exactly the nodes in want, each Ready with every
// component running.
func (kc *kubeCluster) allReady(via *agentNode, want []*agentNode) error {
	st, err := kc.kubeStatus(via)
	if err != nil {
		return err
	}
	if !st.Managed || st.Version != kubeVersion {
		return fmt.Errorf("kube status: managed %v version %q, want managed %s", st.Managed, st.Version, kubeVersion)
	}
	if st.APIError != "" {
		return fmt.Errorf("kube status: API: %s", st.APIError)
	}
	var got []string
	for _, n := range st.Nodes {
		got = append(got, n.Name)
		if n.Error != "" {
			return fmt.Errorf("node %s: %s", n.Name, n.Error)
		}
		if !n.Ready {
			return fmt.Errorf("node %s not Ready", n.Name)
		}
		if len(n.Components) == 0 {
			return fmt.Errorf("node %s reports no components", n.Name)
		}
		for _, comp := range n.Components {
			if !comp.Running {
				return fmt.Errorf("node %s: %s not running (restarts %d): %s", n.Name, comp.Name, comp.Restarts, comp.LastError)
			}
		}
	}
	slices.Sort(got)
	if w := kc.names(want); !slices.Equal(got, w) {
		return fmt.Errorf("kube status lists nodes %v, want %v", got, w)
	}
	return nil
}

// podManifest is a busybox pod pinned to node that serves its own name
// over HTTP.
func podManifest(name, node string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  labels: {app: %[1]s}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 0
  containers:
  - name: web
    image: %[3]s
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo %[1]s > /www/index.html && exec httpd -f -p %[4]d -h /www"]
    ports: [{containerPort: %[4]d}]
    readinessProbe:
      tcpSocket: {port: %[4]d}
      periodSeconds: 1
---
`, name, node, imageRef, httpPort)
}

const serviceManifest = `apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: ClusterIP
  selector: {app: %s}
  ports: [{port: 80, targetPort: %d}]
`

// podsRunning is nil once every pod in want runs, Ready, on its node; it
// returns name -> pod IP.
func (kc *kubeCluster) podsRunning(via *agentNode, want map[string]*agentNode) (map[string]netip.Addr, error) {
	var pods k8sPodList
	if err := kc.kubectlJSON(via, &pods, "get", "pods"); err != nil {
		return nil, err
	}
	ips := map[string]netip.Addr{}
	for _, p := range pods.Items {
		n, ok := want[p.Metadata.Name]
		if !ok {
			continue
		}
		if p.Spec.NodeName != n.name {
			return nil, fmt.Errorf("pod %s on %q, want %s", p.Metadata.Name, p.Spec.NodeName, n.name)
		}
		if p.Status.Phase != "Running" || !condition(p.Status.Conditions, "Ready") {
			return nil, fmt.Errorf("pod %s: phase %s, ready %v", p.Metadata.Name, p.Status.Phase, condition(p.Status.Conditions, "Ready"))
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			return nil, fmt.Errorf("pod %s: pod IP %q: %v", p.Metadata.Name, p.Status.PodIP, err)
		}
		ips[p.Metadata.Name] = ip
	}
	if len(ips) != len(want) {
		return nil, fmt.Errorf("%d of %d pods running", len(ips), len(want))
	}
	return ips, nil
}

// fetch wgets url from inside pod (through via's kubectl) and returns the
// body. busybox wget has no working -T: timeout bounds it.
func (kc *kubeCluster) fetch(via *agentNode, pod, url string) (string, error) {
	out, err := kc.kubectl(via, "exec", pod, "--", "timeout", "10", "wget", "-q", "-O-", url)
	return strings.TrimSpace(out), err
}

// wgCounters reads wg0's byte counters in n's namespace.
func wgCounters(n *agentNode) (rx, tx uint64, err error) {
	out, err := n.host.Run("ip", "-s", "-j", "link", "show", "wg0")
	if err != nil {
		return 0, 0, err
	}
	var links []struct {
		Stats64 struct {
			RX struct {
				Bytes uint64 `json:"bytes"`
			} `json:"rx"`
			TX struct {
				Bytes uint64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return 0, 0, fmt.Errorf("%s: ip -s -j link show wg0: %v: %q", n.name, err, out)
	}
	return links[0].Stats64.RX.Bytes, links[0].Stats64.TX.Bytes, nil
}

// dumpKube logs, once the test has failed, what Kubernetes looked like.
func (kc *kubeCluster) dumpKube() {
	for _, n := range kc.nodes {
		if n.current() == nil {
			continue
		}
		st, err := n.cli("kube", "status", "--data-dir", n.dir)
		kc.t.Logf("node %s: kube status (%v):\n%s", n.name, err, st)
		if _, ok := kc.kubecfg[n.name]; ok {
			out, err := kc.kubectl(n, "get", "nodes,pods,svc,endpointslices", "-A", "-o", "wide")
			kc.t.Logf("node %s: kubectl get (%v):\n%s", n.name, err, out)
			out, err = kc.kubectl(n, "get", "events", "-A", "--sort-by=.lastTimestamp")
			kc.t.Logf("node %s: events (%v):\n%s", n.name, err, lastLines(out, 40))
		}
		logs, _ := filepath.Glob(filepath.Join(n.dir, "kube", "log", "*.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			kc.t.Logf("node %s: %s:\n%s", n.name, filepath.Base(l), lastLines(string(b), 25))
		}
	}
}

// TestKubeManaged: `kube enable` on a three-node kernel-mode cluster gives
// a working Kubernetes: Nodes Ready on their mesh IPs and pod /24s (also
// on every node's /metrics, with its components up), pods on
// every node reaching each other across wg0, a ClusterIP Service by its DNS
// name; the API and the other nodes' pods survive a power cut of the Raft
// leader's node; pods come back after every agent restarts; a removed node
// leaves the cluster.
func TestKubeManaged(t *testing.T) {
	kc := newKubeCluster(t, "10.98.0.0/24", 3, 3) // node 3 behind NAT
	image := busyboxImageTar(t, imageRef)
	all := kc.nodes
	n1, n2, n3 := all[0], all[1], all[2]
	// n1 (also the device's entry node) and n2 are Docker hosts, and n3,
	// behind its NAT, runs ufw: pods and devices get through the FORWARD
	// policy of DROP, and members and pods through n3's dropped incoming
	// connections, by the agent's own iptables chains.
	dockerLike(kc.cluster, n1)
	dockerLike(kc.cluster, n2)
	ufwLike(kc.cluster, n3)

	n1.initCluster()
	kc.startKube(n1)
	n2.join(n1)
	kc.startKube(n2)
	kc.eventually(90*time.Second, "two-node mesh forms", func() error {
		return kc.formed(all[:2], nil, nil)
	})

	// Enable: the CLI returns once the change is committed; the nodes
	// then start their components.
	enabled := time.Now()
	if out, err := n1.cli("kube", "enable", "--data-dir", n1.dir); err != nil {
		kc.fatalf("%v", err)
	} else if !strings.Contains(out, kubeVersion) {
		kc.fatalf("kube enable said %q", out)
	}
	kc.eventually(4*time.Minute, "kube status: 2 nodes Ready, all components running", func() error {
		return kc.allReady(n1, all[:2])
	})
	t.Logf("Kubernetes ready on 2 nodes %v after kube enable", time.Since(enabled).Round(time.Second))

	// A node joining a managed cluster becomes a Kubernetes node by
	// itself; as the third Raft voter it gets an etcd member too (added
	// as a learner, promoted once caught up).
	n3.join(n1)
	joined := time.Now()
	kc.startKube(n3)
	kc.eventually(90*time.Second, "three-node mesh forms", func() error {
		return kc.formed(all, nil, kc.names(all))
	})
	kc.eventually(4*time.Minute, "kube status: 3 nodes Ready, 3 voting etcd members", func() error {
		if err := kc.allReady(n1, all); err != nil {
			return err
		}
		return kc.etcdVoters(n1, all)
	})
	t.Logf("the joined node Ready and etcd at 3 members %v after join", time.Since(joined).Round(time.Second))
	mesh := map[string]netip.Addr{}
	podNet := map[string]netip.Prefix{}
	for _, n := range all {
		st, err := n.status()
		if err != nil {
			kc.fatalf("%v", err)
		}
		mesh[n.name] = netip.MustParseAddr(st.MeshIP)
		podNet[n.name] = netip.MustParsePrefix(st.PodCIDR)
	}
	for _, n := range all {
		kc.eventually(60*time.Second, n.name+"'s metrics: Node Ready, components up", func() error {
			return kc.metricsReady(n)
		})
	}
	for _, n := range all {
		kc.fetchKubeconfig(n)
	}

	// The Nodes as Kubernetes sees them, from every node's balancer.
	for _, via := range all {
		kc.eventually(60*time.Second, "Nodes seen through "+via.name, func() error {
			var nodes k8sNodeList
			if err := kc.kubectlJSON(via, &nodes, "get", "nodes"); err != nil {
				return err
			}
			var got []string
			for _, kn := range nodes.Items {
				got = append(got, kn.Metadata.Name)
				var internal string
				for _, a := range kn.Status.Addresses {
					if a.Type == "InternalIP" {
						internal = a.Address
					}
				}
				if !condition(kn.Status.Conditions, "Ready") {
					return fmt.Errorf("Node %s not Ready", kn.Metadata.Name)
				}
				if ip, ok := mesh[kn.Metadata.Name]; !ok || internal != ip.String() {
					return fmt.Errorf("Node %s: InternalIP %q, want its mesh IP %v", kn.Metadata.Name, internal, ip)
				}
				if kn.Spec.PodCIDR != podNet[kn.Metadata.Name].String() {
					return fmt.Errorf("Node %s: podCIDR %q, want %v", kn.Metadata.Name, kn.Spec.PodCIDR, podNet[kn.Metadata.Name])
				}
			}
			slices.Sort(got)
			if w := kc.names(all); !slices.Equal(got, w) {
				return fmt.Errorf("Nodes %v, want %v", got, w)
			}
			return nil
		})
	}

	// The image reaches every node's containerd.
	out, err := n1.cli("kube", "import", "--data-dir", n1.dir, image)
	if err != nil {
		kc.fatalf("%v", err)
	}
	for _, n := range all {
		if !strings.Contains(out, n.name+": imported") {
			kc.fatalf("kube import: %s not imported:\n%s", n.name, out)
		}
	}

	// A pod on every node.
	podOn := map[string]*agentNode{}
	var manifest strings.Builder
	for i, n := range all {
		name := fmt.Sprintf("p%d", i+1)
		podOn[name] = n
		manifest.WriteString(podManifest(name, n.name))
	}
	podsFile := filepath.Join(kc.tmp, "pods.yaml")
	if err := os.WriteFile(podsFile, []byte(manifest.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	// The controller manager creates the default service account moments
	// after the API answers; until then pods are refused.
	kc.eventually(60*time.Second, "pods accepted", func() error {
		_, err := kc.kubectl(n1, "apply", "-f", podsFile)
		return err
	})
	var podIP map[string]netip.Addr
	kc.eventually(2*time.Minute, "a pod Running on every node", func() error {
		podIP, err = kc.podsRunning(n1, podOn)
		return err
	})
	for pod, ip := range podIP {
		if n := podOn[pod]; !podNet[n.name].Contains(ip) {
			kc.fatalf("pod %s on %s has IP %v, outside the node's pod CIDR %v", pod, n.name, ip, podNet[n.name])
		}
	}

	// Every pod reaches every other, ICMP and HTTP, across wg0.
	type counters struct{ rx, tx uint64 }
	before := map[string]counters{}
	for _, n := range all {
		rx, tx, err := wgCounters(n)
		if err != nil {
			kc.fatalf("%v", err)
		}
		before[n.name] = counters{rx, tx}
	}
	pods := slices.Sorted(maps.Keys(podOn))
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			kc.eventually(30*time.Second, fmt.Sprintf("%s pings %s", from, to), func() error {
				out, err := kc.kubectl(n1, "exec", from, "--", "ping", "-c1", "-W2", podIP[to].String())
				if err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				return nil
			})
			kc.eventually(30*time.Second, fmt.Sprintf("%s fetches from %s", from, to), func() error {
				body, err := kc.fetch(n1, from, fmt.Sprintf("http://%s:%d/", podIP[to], httpPort))
				if err != nil || body != to {
					return fmt.Errorf("got %q, %v; want %q", body, err, to)
				}
				return nil
			})
		}
	}
	for _, n := range all {
		rx, tx, err := wgCounters(n)
		if err != nil {
			kc.fatalf("%v", err)
		}
		if b := before[n.name]; rx <= b.rx || tx <= b.tx {
			kc.fatalf("%s: wg0 rx %d->%d tx %d->%d: pod traffic did not cross wg0", n.name, b.rx, rx, b.tx, tx)
		}
	}

	// A ClusterIP Service in front of p3, by its cluster DNS name from p1.
	svcFile := filepath.Join(kc.tmp, "svc.yaml")
	if err := os.WriteFile(svcFile, fmt.Appendf(nil, serviceManifest, "p3", httpPort), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := kc.kubectl(n1, "apply", "-f", svcFile); err != nil {
		kc.fatalf("%v: %s", err, out)
	}
	kc.eventually(60*time.Second, "p1 reaches the web Service by name", func() error {
		body, err := kc.fetch(n1, "p1", "http://web.default.svc.cluster.local:80/")
		if err != nil || body != "p3" {
			return fmt.Errorf("got %q, %v; want p3", body, err)
		}
		return nil
	})
	// A user device entering through n1 reaches the pods, on its entry
	// node and on others, and the Service by its ClusterIP.
	kc.deviceReachesPods(n1, podIP, "p3")

	// The same resolver answers the cluster's own zone to pods (the node
	// resolver on the mesh IP, cluster.local mounted in it), on every
	// node: n3's behind its host firewall too.
	for _, pod := range pods {
		kc.eventually(60*time.Second, pod+" resolves a node by name", func() error {
			out, err := kc.kubectl(n1, "exec", pod, "--", "nslookup", n2.name+".runos.internal")
			if err != nil || !strings.Contains(out, mesh[n2.name].String()) {
				return fmt.Errorf("nslookup %s.runos.internal: %q, %v; want %s", n2.name, out, err, mesh[n2.name])
			}
			return nil
		})
	}

	// Nothing answers without a credential on the ports pods and local
	// users reach: kubelet, API server, etcd (curl from a node, as a local
	// user without certificates would).
	var open []string // every credential probe that got in, reported together
	for _, probe := range []struct{ what, url, want string }{
		{"kubelet", fmt.Sprintf("https://%s:10250/pods", mesh[n2.name]), "401"},
		{"kube-apiserver", fmt.Sprintf("https://%s:6443/version", mesh[n1.name]), "401"},
		{"kube-apiserver through the balancer", "https://127.0.0.1:6444/api/v1/secrets", "401"},
	} {
		out, err := n1.host.Run("curl", "-sk", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", probe.url)
		if err != nil || out != probe.want {
			open = append(open, fmt.Sprintf("%s without a credential: HTTP %q (%v), want %s", probe.what, out, err, probe.want))
		}
	}
	if out, err := n1.host.Run("curl", "-sk", "-m", "10", fmt.Sprintf("https://%s:2379/version", mesh[n2.name])); err == nil {
		open = append(open, "etcd answered a client without a certificate: "+out)
	}
	if len(open) > 0 {
		kc.fatalf("%s", strings.Join(open, "\n"))
	}

	// Pods reach the world outside the cluster (here a LAN host that is no
	// member) with their node's address.
	outside := kc.lab.Host("www", kc.lan)
	wwwDir := filepath.Join(kc.tmp, "www")
	if err := os.MkdirAll(wwwDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(wwwDir, "index.html"), []byte("outside\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside.Start(t, "www", "busybox", "httpd", "-f", "-p", "8081", "-h", wwwDir)
	kc.eventually(30*time.Second, "p1 fetches from a host outside the cluster", func() error {
		body, err := kc.fetch(n1, "p1", fmt.Sprintf("http://%s:8081/", outside.Addr()))
		if err != nil || body != "outside" {
			return fmt.Errorf("got %q, %v", body, err)
		}
		return nil
	})

	// Apps and services target the managed cluster by themselves: an app
	// of a locally imported image runs; a service's objects are applied.
	appImage := busyboxImageTar(t, appImageRef, "sh", "-c", fmt.Sprintf("mkdir -p /www && echo app > /www/index.html && exec httpd -f -p %d -h /www", httpPort))
	if out, err := n2.cli("kube", "import", "--data-dir", n2.dir, appImage); err != nil {
		kc.fatalf("%v: %s", err, out)
	}
	var app struct {
		OSID string `json:"osid"`
	}
	if err := n2.cliJSON(&app, "apps", "deploy", "web", "--image", appImageRef, "--port", fmt.Sprint(httpPort), "--json", "--data-dir", n2.dir); err != nil {
		kc.fatalf("%v", err)
	}
	kc.eventually(2*time.Minute, "app "+app.OSID+" ready", func() error { return kc.appReady(n3, app.OSID) })
	// A pod finds the app by its name in the cluster zone, as by its OSID.
	for _, name := range []string{app.OSID, "web"} {
		kc.eventually(60*time.Second, "p1 fetches the app as "+name+".runos.internal", func() error {
			body, err := kc.fetch(n1, "p1", fmt.Sprintf("http://%s.runos.internal:%d/", name, httpPort))
			if err != nil || body != "app" {
				return fmt.Errorf("got %q, %v; want app", body, err)
			}
			return nil
		})
	}
	var svc struct {
		OSID string `json:"osid"`
	}
	if err := n3.cliJSON(&svc, "services", "deploy", "redis", "--json", "--data-dir", n3.dir); err != nil {
		kc.fatalf("%v", err)
	}
	kc.eventually(2*time.Minute, "service "+svc.OSID+" applied", func() error {
		out, err := kc.kubectl(n1, "get", "statefulsets,deployments", "-n", svc.OSID, "-o", "name")
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("no workload objects in namespace %s: %v %s", svc.OSID, err, out)
		}
		return nil
	})

	// Restarting every agent (kill -9 of the agent alone) restarts no
	// container: the components run on and the new agents adopt them.
	containers := kc.containerIDs(n1, pods)
	for _, n := range all {
		n.kill()
	}
	for _, n := range all {
		kc.startKube(n)
	}
	kc.eventually(90*time.Second, "mesh formed again after agent restarts", func() error {
		return kc.formed(all, nil, kc.names(all))
	})
	kc.eventually(2*time.Minute, "kube status ready after agent restarts", func() error {
		return kc.allReady(n1, all)
	})
	if after := kc.containerIDs(n1, pods); !maps.Equal(after, containers) {
		kc.fatalf("containers changed across agent restarts:\nbefore %v\nafter  %v", containers, after)
	}

	// Power cut of the Raft leader's node: agent, components, pods.
	leader := kc.leader(all)
	survivors := others(all, leader)
	var survivorPods []string
	for _, p := range pods {
		if podOn[p] != leader {
			survivorPods = append(survivorPods, p)
		}
	}
	kc.crash(leader)
	t.Logf("power-cut %s (the Raft leader)", leader.name)
	via := survivors[0]
	kc.eventually(60*time.Second, "the API answers through "+via.name, func() error {
		_, err := kc.kubectl(via, "get", "nodes")
		return err
	})
	for _, from := range survivorPods {
		for _, to := range survivorPods {
			if from == to {
				continue
			}
			kc.eventually(30*time.Second, fmt.Sprintf("%s still fetches from %s", from, to), func() error {
				body, err := kc.fetch(via, from, fmt.Sprintf("http://%s:%d/", podIP[to], httpPort))
				if err != nil || body != to {
					return fmt.Errorf("got %q, %v; want %q", body, err, to)
				}
				return nil
			})
		}
	}

	// Whole-cluster power cut: the survivors lose power too, then every
	// node boots; Kubernetes comes back with its objects and pods.
	for _, n := range survivors {
		kc.crash(n)
	}
	for _, n := range all {
		kc.startKube(n)
	}
	kc.eventually(90*time.Second, "mesh formed again", func() error {
		return kc.formed(all, nil, kc.names(all))
	})
	kc.eventually(4*time.Minute, "kube status ready after restarts", func() error {
		return kc.allReady(via, all)
	})
	kc.eventually(2*time.Minute, "the same pods Running again", func() error {
		podIP, err = kc.podsRunning(via, podOn)
		return err
	})
	kc.eventually(2*time.Minute, "the app ready again after the power cut", func() error { return kc.appReady(via, app.OSID) })
	kc.eventually(60*time.Second, "p1 reaches the web Service after the restarts", func() error {
		body, err := kc.fetch(via, "p1", "http://web.default.svc.cluster.local:80/")
		if err != nil || body != "p3" {
			return fmt.Errorf("got %q, %v; want p3", body, err)
		}
		return nil
	})

	// Remove a node that does not lead: its Node goes, and stays gone.
	lead := kc.leader(all)
	victim := others(all, lead)[0]
	if out, err := lead.cli("node", "remove", "--data-dir", lead.dir, victim.name); err != nil {
		kc.fatalf("%v", err)
	} else if strings.TrimSpace(out) != "removed node "+victim.name {
		kc.fatalf("node remove said %q", out)
	}
	rest := others(all, victim)
	nodeGone := func() error {
		out, err := kc.kubectl(lead, "get", "node", victim.name)
		if err == nil {
			return fmt.Errorf("Node %s still there: %s", victim.name, out)
		}
		if !strings.Contains(out, "NotFound") && !strings.Contains(out, "not found") {
			return fmt.Errorf("kubectl get node %s: %v", victim.name, err)
		}
		return nil
	}
	kc.eventually(90*time.Second, "Node "+victim.name+" deleted", nodeGone)
	// A kubelet still running on the removed node would register it again.
	for range 10 {
		time.Sleep(time.Second)
		if err := nodeGone(); err != nil {
			kc.fatalf("after removal: %v", err)
		}
	}
	kc.eventually(60*time.Second, "kube status lists the remaining nodes", func() error {
		return kc.allReady(lead, rest)
	})
	kc.eventually(60*time.Second, "the removed node's etcd member gone", func() error {
		st, err := kc.kubeStatus(lead)
		if err != nil {
			return err
		}
		for _, m := range st.Etcd {
			if m.Node == victim.name {
				return fmt.Errorf("etcd still lists %s (%s)", victim.name, m.Phase)
			}
		}
		return nil
	})

	// Disable is refused while workloads exist; once they are gone it
	// stops every component on every node.
	if _, err := lead.cli("kube", "disable", "--data-dir", lead.dir); err == nil {
		kc.fatalf("kube disable accepted while an app and a service exist")
	}
	var pids []int
	st, err := kc.kubeStatus(lead)
	if err != nil {
		kc.fatalf("%v", err)
	}
	for _, n := range st.Nodes {
		for _, comp := range n.Components {
			if comp.PID > 0 {
				pids = append(pids, comp.PID)
			}
		}
	}
	for _, del := range [][]string{{"apps", "delete", app.OSID}, {"services", "delete", svc.OSID}} {
		if out, err := lead.cli(append(del, "--data-dir", lead.dir)...); err != nil {
			kc.fatalf("%v: %s", err, out)
		}
	}
	kc.eventually(2*time.Minute, "kube disable accepted once the workloads are gone", func() error {
		_, err := lead.cli("kube", "disable", "--data-dir", lead.dir)
		return err
	})
	kc.eventually(60*time.Second, "every component stopped", func() error {
		st, err := kc.kubeStatus(lead)
		if err != nil {
			return err
		}
		if st.Managed {
			return errors.New("kube status still says managed")
		}
		for _, pid := range pids {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(b), ") Z ") {
				return fmt.Errorf("component pid %d still runs", pid)
			}
		}
		for _, n := range rest {
			for _, table := range []string{"filter", "nat"} {
				if out, err := n.host.Run("iptables", "-t", table, "-S"); err != nil || strings.Contains(out, "RUNOS-P") {
					return fmt.Errorf("%s: the pod chains are still in iptables' %s table (%v):\n%s", n.name, table, err, out)
				}
			}
		}
		return nil
	})
}

// etcdVoters is nil once kube status lists a voting etcd member (bootstrap
// or voter) on each of want and no other.
func (kc *kubeCluster) etcdVoters(via *agentNode, want []*agentNode) error {
	st, err := kc.kubeStatus(via)
	if err != nil {
		return err
	}
	var got []string
	for _, m := range st.Etcd {
		if m.Phase != "bootstrap" && m.Phase != "voter" {
			return fmt.Errorf("etcd member on %s is a %s", m.Node, m.Phase)
		}
		got = append(got, m.Node)
	}
	slices.Sort(got)
	if w := kc.names(want); !slices.Equal(got, w) {
		return fmt.Errorf("etcd members on %v, want %v", got, w)
	}
	return nil
}

// appReady is nil once the app reports every replica ready.
func (kc *kubeCluster) appReady(via *agentNode, osid string) error {
	var a struct {
		Status string `json:"status"`
		Reason string `json:"reason"`
		Ready  int    `json:"ready"`
		Total  int    `json:"total"`
	}
	if err := via.cliJSON(&a, "apps", "show", osid, "--json", "--data-dir", via.dir); err != nil {
		return err
	}
	if a.Status != "ready" || a.Total == 0 || a.Ready != a.Total {
		return fmt.Errorf("app %s: %s (%s), %d/%d ready", osid, a.Status, a.Reason, a.Ready, a.Total)
	}
	return nil
}

// containerIDs maps each pod to its container's ID and restart count.
func (kc *kubeCluster) containerIDs(via *agentNode, pods []string) map[string]string {
	kc.t.Helper()
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Status struct {
				ContainerStatuses []struct {
					ContainerID  string `json:"containerID"`
					RestartCount int    `json:"restartCount"`
				} `json:"containerStatuses"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := kc.kubectlJSON(via, &list, append([]string{"get", "pods"}, pods...)...); err != nil {
		kc.fatalf("%v", err)
	}
	out := map[string]string{}
	for _, p := range list.Items {
		for _, c := range p.Status.ContainerStatuses {
			out[p.Metadata.Name] = fmt.Sprintf("%s restarts=%d", c.ContainerID, c.RestartCount)
		}
	}
	return out
}

// deviceReachesPods adds a user device entering through entry (the
// reference wireguard-go on the LAN, the config as printed) and checks
// that it fetches every pod's page by pod IP, and the web Service's (in
// front of svcPod) by its ClusterIP; then removes it.
func (kc *kubeCluster) deviceReachesPods(entry *agentNode, podIP map[string]netip.Addr, svcPod string) {
	kc.t.Helper()
	var added accessConfigJSON
	if err := entry.cliJSON(&added, "access", "add", "kdev", "--via", entry.name, "--json", "--data-dir", entry.dir); err != nil {
		kc.fatalf("%v", err)
	}
	dev := newDevice(kc.t, kc.cluster, "kdev", kc.lan)
	dev.up(added.Config)
	defer dev.down()
	get := func(url string) (string, error) {
		out, err := dev.host.Run("curl", "-s", "-m", "5", url)
		return strings.TrimSpace(out), err
	}
	for pod, ip := range podIP {
		kc.eventually(30*time.Second, "the device fetches from "+pod, func() error {
			body, err := get(fmt.Sprintf("http://%s:%d/", ip, httpPort))
			if err != nil || body != pod {
				return fmt.Errorf("got %q, %v; want %q", body, err, pod)
			}
			return nil
		})
	}
	clusterIP, err := kc.kubectl(entry, "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		kc.fatalf("%v: %s", err, clusterIP)
	}
	kc.eventually(30*time.Second, "the device fetches from the web Service's ClusterIP", func() error {
		body, err := get(fmt.Sprintf("http://%s:80/", strings.TrimSpace(clusterIP)))
		if err != nil || body != svcPod {
			return fmt.Errorf("got %q, %v; want %q", body, err, svcPod)
		}
		return nil
	})
	if _, err := entry.cli("access", "remove", "kdev", "--data-dir", entry.dir); err != nil {
		kc.fatalf("%v", err)
	}
}

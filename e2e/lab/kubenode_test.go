package lab_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

// startStandin runs the kube-standin role as a process of h's kube node and
// returns once it has set itself up.
func startStandin(t *testing.T, h *lab.Host, name, mntDir string, sysctls bool) (*lab.Proc, standinState) {
	t.Helper()
	state := filepath.Join(t.TempDir(), name+".json")
	env := []string{"NODE=" + h.KubeNodeName(), "STATE=" + state, "MNTDIR=" + mntDir}
	if sysctls {
		env = append(env, "SYSCTLS=1")
	}
	p := h.StartKubeNode(t, name, helper(t, "kube-standin", env...)...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(state); err == nil {
			var st standinState
			if err := json.Unmarshal(b, &st); err != nil {
				t.Fatalf("stand-in %s: %v: %q", name, err, b)
			}
			return p, st
		}
		select {
		case <-p.Done():
			t.Fatalf("stand-in %s exited: %v: %s", name, p.Wait(), p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("stand-in %s not ready after 30s: %s", name, p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gone reports whether pid has exited (a zombie has).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// nodeCgroups lists the cgroups of a kube node left in any hierarchy.
func nodeCgroups(t *testing.T, node string) []string {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	v1, v2 := cgroupHierarchies(string(mi))
	var out []string
	for _, h := range append(v1, v2) {
		for _, d := range []string{"runos/" + node, "runos-lab/" + node} {
			if p := filepath.Join(h, d); exists(p) {
				out = append(out, p)
			}
		}
	}
	return out
}

func mountedInRoot(t *testing.T, dir string) bool {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return isMountPoint(string(mi), dir)
}

var kubeSysctls = []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"}

func readSysctls(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, k := range kubeSysctls {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			t.Fatal(err)
		}
		m[k] = strings.TrimSpace(string(b))
	}
	return m
}

// leftBehind is what a finished kube node must no longer have.
type leftBehind struct {
	pids  []int
	nodes []string // kube node names
	dirs  []string // their directories
	cnis  []string
	mnts  []string
}

func (lb *leftBehind) check(t *testing.T) {
	t.Helper()
	for _, pid := range lb.pids {
		if !gone(pid) {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			t.Errorf("process %d (%s) survived the kube node", pid, strings.TrimSpace(string(comm)))
		}
	}
	for _, n := range lb.nodes {
		if left := nodeCgroups(t, n); len(left) > 0 {
			t.Errorf("cgroups of %s left: %v", n, left)
		}
	}
	for _, d := range lb.dirs {
		if exists(d) {
			t.Errorf("node directory %s left", d)
		}
	}
	for _, c := range lb.cnis {
		if exists("/run/netns/" + c) {
			t.Errorf("CNI netns %s left in /run/netns", c)
		}
	}
	for _, m := range lb.mnts {
		if mountedInRoot(t, m) {
			t.Errorf("%s is mounted in the root mount namespace", m)
		}
	}
}

func (lb *leftBehind) node(h *lab.Host) {
	lb.nodes = append(lb.nodes, h.KubeNodeName())
	lb.dirs = append(lb.dirs, filepath.Dir(h.KubeDir("/var/log/pods")))
}

func (lb *leftBehind) standin(st standinState) {
	lb.pids = append(lb.pids, st.Self, st.Daemon, st.Pod, st.PodV1)
	lb.cnis = append(lb.cnis, st.CNI)
}

// TestKubeNode runs two kube nodes side by side with a stand-in for an
// agent and its components, kills the agent, power-cuts a node, and checks
// that nothing of either survives the lab. Not parallel: it checks that the
// global sysctls kubelet changes come back once the process's last kube
// node is gone.
func TestKubeNode(t *testing.T) {
	before := readSysctls(t)
	var lb leftBehind
	mntA, mntB := t.TempDir(), t.TempDir()
	lb.mnts = []string{mntA, mntB}
	t.Run("nodes", func(t *testing.T) {
		l := lab.New(t)
		lan := l.LAN("lan", netip.MustParsePrefix("10.80.0.0/24"))
		a, b := l.Host("a", lan), l.Host("b", lan)
		lb.node(a)
		lb.node(b)
		if a.KubeNodeName() == b.KubeNodeName() || !strings.HasPrefix(a.KubeNodeName(), l.Prefix()) {
			t.Fatalf("kube node names %q, %q: want unique, with the lab's prefix %q", a.KubeNodeName(), b.KubeNodeName(), l.Prefix())
		}

		// Both listen on kubelet.sock at the same path: each has its own.
		agentA, sa := startStandin(t, a, "standin-a1", mntA, true)
		_, sb := startStandin(t, b, "standin-b1", mntB, false)
		lb.standin(sa)
		lb.standin(sb)
		for _, h := range []*lab.Host{a, b} {
			for _, f := range []struct{ bind, rel string }{
				{"/var/lib/kubelet/device-plugins", "kubelet.sock"},
				{"/run/containerd", "s/standin"},
				{"/var/log/pods", "standin"},
				{"/var/lib/cni", "results/standin"},
			} {
				if !exists(filepath.Join(h.KubeDir(f.bind), f.rel)) {
					t.Errorf("%s: %s/%s did not land in the node's own directory", h.Name(), f.bind, f.rel)
				}
				if exists(filepath.Join(f.bind, f.rel)) {
					t.Errorf("%s/%s appeared in the root mount namespace", f.bind, f.rel)
				}
			}
		}
		if !exists(filepath.Join(a.KubeDir("/run/netns"), sa.CNI)) || exists("/run/netns/"+sa.CNI) {
			t.Errorf("CNI netns %s: want it in the node's /run/netns only", sa.CNI)
		}
		if mountedInRoot(t, mntA) {
			t.Errorf("the node's mount on %s leaked into the root mount namespace", mntA)
		}
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", sa.Pod))
		if !strings.Contains(string(cg), "/runos/"+a.KubeNodeName()+"/kubepods/pod1") {
			t.Errorf("pod not in the node's cgroupRoot:\n%s", cg)
		}
		netA, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", sa.Daemon))
		netPod, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", sa.Pod))
		if netA == "" || netA == netPod {
			t.Errorf("pod netns %q, node netns %q: want different", netPod, netA)
		}
		if got := readSysctls(t); got["kernel/panic"] != "10" {
			t.Errorf("stand-in did not change the sysctls: %v", got)
		}

		// kill -9 of the agent: what it started runs on, and the next agent
		// finds the mounts the first one made.
		if err := agentA.Kill(); err != nil {
			t.Fatal(err)
		}
		<-agentA.Done()
		for _, pid := range []int{sa.Daemon, sa.Pod, sa.PodV1} {
			if gone(pid) {
				t.Errorf("process %d died with the agent", pid)
			}
		}
		_, sa2 := startStandin(t, a, "standin-a2", mntA, true)
		lb.standin(sa2)
		if sa2.MntNS != sa.MntNS || !sa2.MountSeen {
			t.Errorf("restarted agent: mount namespace %s (mount seen: %v), want the node's %s with its mounts", sa2.MntNS, sa2.MountSeen, sa.MntNS)
		}

		// Power cut of b.
		if err := b.CrashKubeNode(); err != nil {
			t.Fatal(err)
		}
		for _, pid := range []int{sb.Self, sb.Daemon, sb.Pod, sb.PodV1} {
			if !gone(pid) {
				t.Errorf("process %d survived CrashKubeNode", pid)
			}
		}
		if left := nodeCgroups(t, b.KubeNodeName()); len(left) > 0 {
			t.Errorf("cgroups survived CrashKubeNode: %v", left)
		}
		for _, d := range []string{"/run/netns", "/run/containerd"} {
			if entries, _ := os.ReadDir(b.KubeDir(d)); len(entries) > 0 {
				t.Errorf("%s not emptied by the crash: %d entries", d, len(entries))
			}
		}
		if !exists(filepath.Join(b.KubeDir("/var/log/pods"), "standin")) {
			t.Error("the crash lost /var/log/pods, which is on disk")
		}
		// Reboot: a fresh mount namespace, without the old mounts.
		_, sb2 := startStandin(t, b, "standin-b2", mntB, false)
		lb.standin(sb2)
		if sb2.MountSeen {
			t.Error("rebooted node still has the mount made before the crash")
		}
		// A command in the node sees what its processes see.
		out, err := b.KubeRun("ls", "/run/netns")
		if err != nil || !strings.Contains(out, sb2.CNI) {
			t.Errorf("KubeRun ls /run/netns = %q, %v; want %s", out, err, sb2.CNI)
		}
	})
	lb.check(t)
	if got := readSysctls(t); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Errorf("sysctls after the last kube node: %v, want %v as before", got, before)
	}
}

// TestKubeNodeSweep: a test process that dies without cleaning up leaves a
// kube node's daemons, pods, cgroups and directories behind; Sweep removes
// them.
func TestKubeNodeSweep(t *testing.T) {
	lab.New(t) // skips (or fails in CI) where namespaces are unavailable
	mnt := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestHelperProcess$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"=kube-crash", "MNTDIR="+mnt, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("crashing helper: %v: %s", err, out)
	}
	var rep struct {
		Node, Dir string
		State     standinState
	}
	for _, line := range strings.Split(string(out), "\n") {
		if s, ok := strings.CutPrefix(line, "KUBECRASH "); ok {
			if err := json.Unmarshal([]byte(s), &rep); err != nil {
				t.Fatal(err)
			}
		}
	}
	if rep.Node == "" {
		t.Fatalf("crashing helper reported nothing: %s", out)
	}
	lb := leftBehind{nodes: []string{rep.Node}, dirs: []string{rep.Dir}, mnts: []string{mnt}}
	lb.standin(rep.State)
	// Make sure there is something to sweep.
	if gone(rep.State.Pod) || gone(rep.State.Daemon) || len(nodeCgroups(t, rep.Node)) == 0 || !exists(rep.Dir) {
		t.Fatalf("the crashed run left nothing behind (pod gone: %v, daemon gone: %v, cgroups %v, dir %v): the test proves nothing",
			gone(rep.State.Pod), gone(rep.State.Daemon), nodeCgroups(t, rep.Node), exists(rep.Dir))
	}
	if err := lab.Sweep(); err != nil {
		t.Fatal(err)
	}
	lb.check(t)
	if exists("/run/netns/" + rep.Node) {
		t.Errorf("namespace %s survived Sweep", rep.Node)
	}
}

// kubeCrash is the helper role behind TestKubeNodeSweep: it starts a kube
// node with a stand-in, reports, and exits without any cleanup.
func kubeCrash(t *testing.T, mntDir string) error {
	l := lab.New(t)
	h := l.Host("n", l.LAN("lan", netip.MustParsePrefix("10.81.0.0/24")))
	_, st := startStandin(t, h, "standin", mntDir, false)
	js, err := json.Marshal(map[string]any{"Node": h.KubeNodeName(), "Dir": filepath.Dir(h.KubeDir("/var/log/pods")), "State": st})
	if err != nil {
		return err
	}
	fmt.Printf("KUBECRASH %s\n", js)
	os.Exit(0)
	return nil
}

// TestKubeNodeContainerd runs a real containerd in two kube nodes: its shim
// sockets and runc state, at fixed paths under /run/containerd, stay apart;
// a container lands in the node's cgroupRoot; killing containerd leaves
// shims and containers running; a power cut and the end of the lab leave
// nothing.
func TestKubeNodeContainerd(t *testing.T) {
	for _, bin := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2", "/bin/busybox"} {
		if _, err := exec.LookPath(bin); err != nil {
			if lab.Required() {
				t.Fatalf("%s missing (Debian packages containerd runc busybox-static; scripts/test-deps.sh)", bin)
			}
			t.Skipf("%s missing (Debian packages containerd runc busybox-static)", bin)
		}
	}
	var lb leftBehind
	t.Run("nodes", func(t *testing.T) {
		l := lab.New(t)
		lan := l.LAN("lan", netip.MustParsePrefix("10.82.0.0/24"))
		a, b := l.Host("a", lan), l.Host("b", lan)
		ca, cb := newContainerd(t, a), newContainerd(t, b)
		lb.node(a)
		lb.node(b)
		pa, pb := ca.run(t, "c1"), cb.run(t, "c1")
		lb.pids = append(lb.pids, pa, pb, ppid(pa), ppid(pb))
		shims := map[string]bool{}
		for _, h := range []*lab.Host{a, b} {
			entries, _ := os.ReadDir(filepath.Join(h.KubeDir("/run/containerd"), "s"))
			if len(entries) == 0 {
				t.Errorf("%s: no shim socket in the node's /run/containerd/s", h.Name())
			}
			for _, e := range entries {
				shims[e.Name()] = true
				if exists(filepath.Join("/run/containerd/s", e.Name())) {
					t.Errorf("shim socket %s in the root's /run/containerd/s", e.Name())
				}
			}
		}
		if len(shims) < 2 {
			t.Errorf("shim sockets %v: want one per node", shims)
		}

		// kill -9 of containerd (as of an agent): the shim and the
		// container run on.
		if err := ca.proc.Kill(); err != nil {
			t.Fatal(err)
		}
		<-ca.proc.Done()
		if gone(pa) || gone(ppid(pa)) {
			t.Error("the container or its shim died with containerd")
		}

		if err := a.CrashKubeNode(); err != nil {
			t.Fatal(err)
		}
		if !gone(pa) {
			t.Error("container survived CrashKubeNode")
		}
		// After the reboot containerd starts over its stale state.
		ca = newContainerd(t, a)
		pa2 := ca.run(t, "c2")
		lb.pids = append(lb.pids, pa2, ppid(pa2))
	})
	lb.check(t)
}

// containerd is a containerd of a kube node, with its own root, state and
// socket.
type containerd struct {
	h    *lab.Host
	dir  string
	sock string
	proc *lab.Proc
}

func newContainerd(t *testing.T, h *lab.Host) *containerd {
	t.Helper()
	dir := t.TempDir()
	c := &containerd{h: h, dir: dir, sock: filepath.Join(dir, "containerd.sock")}
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc", filepath.Join(dir, "opt"))
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	c.proc = h.StartKubeNode(t, "containerd-"+h.Name(), "containerd", "--config", filepath.Join(dir, "config.toml"))
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.ctr("version")
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: containerd not answering: %v\n%s", h.Name(), err, c.proc.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *containerd) ctr(args ...string) (string, error) {
	return c.h.KubeRun(append([]string{"ctr", "-a", c.sock, "-n", "lab"}, args...)...)
}

// run starts container id (busybox sleep) in the node's cgroupRoot and
// returns its pid.
func (c *containerd) run(t *testing.T, id string) int {
	t.Helper()
	cgroup := "/runos/" + c.h.KubeNodeName() + "/" + id
	if out, err := c.ctr("run", "-d", "--cgroup", cgroup, "--rootfs", filepath.Join(c.dir, "rootfs"), id, "/bin/busybox", "sleep", "600"); err != nil {
		t.Fatalf("%s: ctr run: %v: %s", c.h.Name(), err, out)
	}
	out, err := c.ctr("task", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			if !strings.Contains(string(cg), cgroup) {
				t.Errorf("%s: container %s not in %s:\n%s", c.h.Name(), id, cgroup, cg)
			}
			return pid
		}
	}
	t.Fatalf("%s: task %s not listed: %s", c.h.Name(), id, out)
	return 0
}

// ppid is pid's parent (a container's shim).
func ppid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

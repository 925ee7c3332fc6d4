package lab

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Kubernetes nodes: several kubelets, containerds and their pods on one
// machine, each in a lab Host. Two things a plain Start does not give them:
//
//   - /sys/fs/cgroup: `ip netns exec` remounts /sys, which hides the cgroup
//     hierarchies from kubelet and runc. A kube node is entered with
//     `nsenter --net` instead, which leaves the mounts alone.
//   - Private copies of the paths every kubelet and containerd use whatever
//     their configuration says (kubeBinds): each node has a mount namespace
//     of its own (`unshare --mount --propagation slave`) with a per-node
//     directory bind-mounted over each of them.
//
// The mount namespace is the node's "machine": a holder process keeps it
// alive, and every process started in the node (an agent, then the agent
// again after it was killed, a kubectl) enters that same namespace, so a
// restarted agent sees the mounts its containerd made, as on a real machine.
// CrashKubeNode is the power cut: everything dies, mounts included.
//
// Everything started in the node is born in a cgroup2 tracker cgroup
// (runos-lab/<node>), so daemons that left the agent's process group and
// session (containerd, shims) are still found; pods are found in the
// kubelet's cgroupRoot, which must be /runos/<KubeNodeName()>.

// kubeBinds are the paths that would collide between kube nodes on one
// machine.
var kubeBinds = []string{
	"/var/lib/kubelet/device-plugins", // kubelet.sock, whatever --root-dir says
	"/var/log/pods",                   // container logs
	"/var/log/containers",             // symlinks into /var/log/pods
	"/var/lib/cni",                    // host-local IPAM leases, cached CNI results
	// containerd 1.6 puts shim sockets (s/<sha256>), runc state (runc/<ns>)
	// and fifos here, whatever its state dir.
	"/run/containerd",
	// CNI's pod network namespaces (cni-<uuid>): private to the node, so they
	// die with its mount namespace and never show up in the root one.
	"/run/netns",
	"/usr/libexec/kubernetes/kubelet-plugins",
}

// runBinds are the kubeBinds that are tmpfs on a real machine: emptied when a
// node crashes, as a reboot would.
var runBinds = []string{"/run/containerd", "/run/netns"}

// kubeSysctls are the global (not per network namespace) settings kubelet
// changes; the lab puts them back once the process's last kube node is gone.
var kubeSysctls = []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"}

var (
	kubeCheckOnce sync.Once
	kubeCheckErr  error

	// sysctlMu guards sysctlUsers (live kube nodes in this process) and
	// sysctlSaved (the values before the first of them started).
	sysctlMu    sync.Mutex
	sysctlUsers int
	sysctlSaved map[string]string
)

func kubeCheck() error {
	for _, tool := range []string{"nsenter", "unshare", "sh", "sleep", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found in PATH (package util-linux/coreutils)", tool)
		}
	}
	_, v2, err := cgroupMounts()
	if err != nil {
		return err
	}
	if v2 == "" {
		return errors.New("no cgroup2 hierarchy mounted (want /sys/fs/cgroup or /sys/fs/cgroup/unified)")
	}
	return nil
}

// kubeRoot holds the per-node directories: <tmp>/runos-lab/<node>/<bind>.
func kubeRoot() string { return filepath.Join(os.TempDir(), "runos-lab") }

// bindDir names the per-node directory mounted over path.
func bindDir(nodeDir, path string) string {
	return filepath.Join(nodeDir, strings.ReplaceAll(strings.Trim(path, "/"), "/", "_"))
}

// kubeNode is the node-side state of a Host running Kubernetes.
type kubeNode struct {
	name string // = the Host's namespace: unique on the machine
	dir  string

	mu sync.Mutex
	// holder keeps the mount namespace alive; nil before the first start and
	// after a crash. mntns is that namespace's identity ("mnt:[N]").
	holder *exec.Cmd
	held   chan struct{} // closed when holder has exited
	mntns  string
}

// KubeNodeName is the name a Kubernetes node running in this Host must use
// (the agent's --name): the namespace name, unique on the machine. The
// node's kubelet must use cgroupRoot /runos/<KubeNodeName()>: that is where
// the lab looks for pods to kill and cgroups to remove.
func (h *Host) KubeNodeName() string { return h.ns }

// KubeDir is the directory, as seen from outside, that is mounted over path
// inside the kube node (path is one of kubeBinds, e.g. "/var/log/pods"), or
// "" for other paths. It exists once StartKubeNode has run.
func (h *Host) KubeDir(path string) string {
	for _, p := range kubeBinds {
		if p == path {
			return bindDir(filepath.Join(kubeRoot(), h.ns), p)
		}
	}
	return ""
}

// StartKubeNode starts args inside the Host's kube node: its network
// namespace (nsenter, so /sys/fs/cgroup stays visible) and the node's
// private mount namespace, created on first use with a per-node directory
// bind-mounted over each of the shared paths (see KubeDir). The process and
// everything it starts, daemons included, belong to the node: CrashKubeNode
// and the end of the test that created the lab kill them all, remove the
// node's cgroups and directories and restore the global sysctls kubelet
// changes. The returned Proc is the process itself (killing it leaves what
// it started running, as `kill -9` of an agent does); it is killed when t
// ends.
func (h *Host) StartKubeNode(t testing.TB, name string, args ...string) *Proc {
	t.Helper()
	k := h.kubeNode(t)
	mntns, err := k.enter()
	if err != nil {
		t.Fatalf("lab: kube node %s: %v", h.name, err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.ns, "--mount=" + mntns, "--wd=" + wd}, args...)...)
	cg, err := k.trackerFD()
	if err != nil {
		t.Fatalf("lab: kube node %s: %v", h.name, err)
	}
	defer cg.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	return startProc(t, name, h.name, cmd)
}

// KubeCommand returns a command that runs args inside the Host's kube node
// (network and mount namespace), e.g. kubectl or ctr. It fails when nothing
// runs in the node.
func (h *Host) KubeCommand(args ...string) (*exec.Cmd, error) {
	h.kubeMu.Lock()
	k := h.kube
	h.kubeMu.Unlock()
	if k == nil {
		return nil, fmt.Errorf("lab: %s: no kube node started", h.name)
	}
	k.mu.Lock()
	mntns, err := k.running()
	k.mu.Unlock()
	if err != nil {
		return nil, err
	}
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.ns, "--mount=" + mntns, "--wd=" + wd}, args...)...), nil
}

// KubeRun runs args inside the kube node and returns the combined output,
// trimmed.
func (h *Host) KubeRun(args ...string) (string, error) {
	cmd, err := h.KubeCommand(args...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("%s (in kube node %s): %w: %s", strings.Join(args, " "), h.name, err, s)
	}
	return s, nil
}

// CrashKubeNode is a power cut of the kube node: every process of it dies
// (those StartKubeNode started, what they started, pods, and anything else
// in the Host's network namespace), its mount namespace and the mounts in
// it go, its cgroups are removed and its /run directories emptied, as after
// a reboot. Its other directories (/var/...) keep their contents. The next
// StartKubeNode boots it again. Procs of the node report their exit.
func (h *Host) CrashKubeNode() error {
	h.kubeMu.Lock()
	k := h.kube
	h.kubeMu.Unlock()
	if k == nil {
		return fmt.Errorf("lab: %s: no kube node started", h.name)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.kill(); err != nil {
		return err
	}
	var errs []error
	for _, p := range runBinds {
		d := bindDir(k.dir, p)
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			errs = append(errs, os.RemoveAll(filepath.Join(d, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// kubeNode returns the Host's kube node, setting it up on first use: the
// checks, the per-node directories, the tracker cgroup, and the teardown
// (registered with the lab's test, so the node outlives the test or subtest
// that started a process in it, and goes before the namespace does).
func (h *Host) kubeNode(t testing.TB) *kubeNode {
	t.Helper()
	kubeCheckOnce.Do(func() { kubeCheckErr = kubeCheck() })
	if kubeCheckErr != nil {
		if Required() {
			t.Fatalf("lab: kube nodes: %v (required because CI=true or RUNOS_LAB_REQUIRED=1)", kubeCheckErr)
		}
		t.Skipf("lab: kube nodes: skipping: %v", kubeCheckErr)
	}
	h.kubeMu.Lock()
	defer h.kubeMu.Unlock()
	if h.kube != nil {
		return h.kube
	}
	k := &kubeNode{name: h.ns, dir: filepath.Join(kubeRoot(), h.ns)}
	for _, p := range kubeBinds {
		if err := os.MkdirAll(bindDir(k.dir, p), 0o755); err != nil {
			t.Fatalf("lab: %v", err)
		}
	}
	saveSysctls()
	lt := h.lab.t
	lt.Cleanup(func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		if err := k.teardown(); err != nil {
			lt.Errorf("%v", err)
		}
		restoreSysctls()
	})
	h.kube = k
	return k
}

// trackerFD opens the tracker cgroup, (re)creating it: a crash removes it.
func (k *kubeNode) trackerFD() (*os.File, error) {
	_, v2, err := cgroupMounts()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(v2, trackerCgroup(k.name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("tracker cgroup: %w", err)
	}
	return os.Open(dir)
}

// enter returns the /proc path of the node's mount namespace, booting the
// node (a new holder and namespace) if nothing runs in it.
func (k *kubeNode) enter() (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if p, err := k.running(); err == nil {
		return p, nil
	}
	return k.boot()
}

// running finds a live process in the node's mount namespace, the holder
// preferably; a killed holder does not strand the namespace while the
// node's other processes live. Caller holds k.mu.
func (k *kubeNode) running() (string, error) {
	if k.mntns == "" {
		return "", fmt.Errorf("lab: kube node %s is not running", k.name)
	}
	var pids []int
	if k.holder != nil {
		pids = append(pids, k.holder.Process.Pid)
	}
	_, v2, _ := cgroupMounts()
	pids = append(pids, cgroupPids(filepath.Join(v2, trackerCgroup(k.name)))...)
	for _, pid := range pids {
		p := fmt.Sprintf("/proc/%d/ns/mnt", pid)
		if ns, err := os.Readlink(p); err == nil && ns == k.mntns && alive(pid) {
			return p, nil
		}
	}
	return "", fmt.Errorf("lab: kube node %s: nothing runs in its mount namespace %s", k.name, k.mntns)
}

// holderScript makes the node's mounts, reports READY and then just holds
// the namespace. Arguments: pairs of source and target.
const holderScript = `exec 2>&1
set -e
while [ $# -gt 0 ]; do
	mkdir -p "$2"
	mount --bind "$1" "$2"
	shift 2
done
echo READY
exec sleep infinity </dev/null >/dev/null 2>&1
`

// boot starts a new holder in a new mount namespace. Caller holds k.mu.
func (k *kubeNode) boot() (string, error) {
	args := []string{"--net=/run/netns/" + k.name, "unshare", "--mount", "--propagation", "slave", "sh", "-c", holderScript, "sh"}
	for _, p := range kubeBinds {
		args = append(args, bindDir(k.dir, p), p)
	}
	cmd := exec.Command("nsenter", args...)
	cg, err := k.trackerFD()
	if err != nil {
		return "", err
	}
	defer cg.Close()
	// Pdeathsig: a test binary that dies takes the holder along (best
	// effort; Sweep does the rest).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	// A pipe of our own rather than StdoutPipe: Wait runs concurrently
	// with the read below.
	r, w, err := os.Pipe()
	if err != nil {
		return "", err
	}
	defer r.Close()
	cmd.Stdout = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		return "", fmt.Errorf("starting the mount namespace holder: %w", err)
	}
	held := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(held)
	}()
	var said []string
	ready := false
	sc := bufio.NewScanner(r)
	for !ready && sc.Scan() {
		ready = sc.Text() == "READY"
		if !ready {
			said = append(said, sc.Text())
		}
	}
	if !ready {
		_ = cmd.Process.Kill()
		<-held
		return "", fmt.Errorf("setting up the mount namespace failed: %v: %s", sc.Err(), strings.Join(said, "\n"))
	}
	p := fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid)
	ns, err := os.Readlink(p)
	if err != nil {
		_ = cmd.Process.Kill()
		<-held
		return "", err
	}
	k.holder, k.held, k.mntns = cmd, held, ns
	return p, nil
}

// kill kills every process of the node and its cgroups. Caller holds k.mu.
func (k *kubeNode) kill() error {
	err := killKubeNode(k.name, k.name, 20*time.Second)
	if k.holder != nil {
		select {
		case <-k.held:
		case <-time.After(10 * time.Second):
			err = errors.Join(err, fmt.Errorf("lab: kube node %s: holder %d not reaped", k.name, k.holder.Process.Pid))
		}
		k.holder, k.held = nil, nil
	}
	k.mntns = ""
	return errors.Join(err, removeKubeCgroups(k.name, 10*time.Second))
}

// teardown removes every trace of the node and reports what it could not.
// Caller holds k.mu.
func (k *kubeNode) teardown() error {
	errs := []error{k.kill(), unmountUnder(k.dir), os.RemoveAll(k.dir)}
	if left := kubeCgroupDirs(k.name); len(left) > 0 {
		errs = append(errs, fmt.Errorf("lab: kube node %s: cgroups left: %v", k.name, left))
	}
	return errors.Join(errs...)
}

// sweepKubeNode removes a kube node whose test process died without
// cleaning up.
func sweepKubeNode(name string) error {
	netns := ""
	if _, err := os.Stat("/run/netns/" + name); err == nil {
		netns = name
	}
	dir := filepath.Join(kubeRoot(), name)
	return errors.Join(killKubeNode(name, netns, 20*time.Second), removeKubeCgroups(name, 10*time.Second),
		unmountUnder(dir), os.RemoveAll(dir))
}

// kubeNodeNames lists the names of kube nodes that have something on this
// machine: cgroups in any hierarchy or a directory.
func kubeNodeNames() []string {
	seen := map[string]bool{}
	var names []string
	add := func(dir string) {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.IsDir() && labNS.MatchString(e.Name()) && !seen[e.Name()] {
				seen[e.Name()] = true
				names = append(names, e.Name())
			}
		}
	}
	v1, v2, _ := cgroupMounts()
	for _, h := range append(v1, v2) {
		if h != "" {
			add(filepath.Join(h, "runos"))
			add(filepath.Join(h, "runos-lab"))
		}
	}
	add(kubeRoot())
	return names
}

// kubeLeftovers describes what kube nodes whose name starts with prefix
// left on the machine.
func kubeLeftovers(prefix string) []string {
	var out []string
	for _, n := range kubeNodeNames() {
		if !strings.HasPrefix(n, prefix) {
			continue
		}
		for _, d := range kubeCgroupDirs(n) {
			out = append(out, "cgroup "+d)
		}
		if d := filepath.Join(kubeRoot(), n); exists(d) {
			out = append(out, "dir "+d)
		}
	}
	return out
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// saveSysctls records kubeSysctls when the process's first kube node starts.
func saveSysctls() {
	sysctlMu.Lock()
	defer sysctlMu.Unlock()
	sysctlUsers++
	if sysctlUsers > 1 {
		return
	}
	sysctlSaved = map[string]string{}
	for _, k := range kubeSysctls {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			sysctlSaved[k] = strings.TrimSpace(string(b))
		}
	}
}

// restoreSysctls puts kubeSysctls back when the last kube node is gone.
func restoreSysctls() {
	sysctlMu.Lock()
	defer sysctlMu.Unlock()
	sysctlUsers--
	if sysctlUsers > 0 {
		return
	}
	for k, v := range sysctlSaved {
		_ = os.WriteFile("/proc/sys/"+k, []byte(v), 0)
	}
}

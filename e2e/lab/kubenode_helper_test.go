package lab_test

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// standinState is what the kube-standin role reports once it is set up.
type standinState struct {
	Self   int    `json:"self"`
	Daemon int    `json:"daemon"` // setsid'd, in the node's network namespace: a containerd
	Pod    int    `json:"pod"`    // in a cni netns and /runos/<node>/kubepods/pod1 everywhere
	PodV1  int    `json:"pod_v1"` // in a cni netns, /runos/<node>/... in v1 only, cgroup2 root
	CNI    string `json:"cni"`    // the cni-<uuid> netns it made
	MntNS  string `json:"mntns"`
	// MountSeen: MNTDIR was already a mount when it started (made by an
	// earlier stand-in in the same mount namespace).
	MountSeen bool `json:"mount_seen"`
}

// kubeStandin does, in a kube node, what an agent with its kubelet,
// containerd and pods does to a machine, then idles: it listens on
// kubelet.sock, writes into the shared paths, mounts a tmpfs on mntDir (as
// containerd mounts snapshots), makes a cni-<uuid> network namespace with
// "pods" in it and in the kubelet's cgroups, starts a daemon in a session of
// its own, and (if sysctls) changes the global sysctls kubelet changes.
func kubeStandin(node, stateFile, mntDir string, sysctls bool) error {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	if !strings.Contains(string(mi), " - cgroup2 ") {
		return errors.New("no cgroup2 mount visible: /sys/fs/cgroup is hidden (entered with `ip netns exec`?)")
	}
	sock := "/var/lib/kubelet/device-plugins/kubelet.sock"
	_ = os.Remove(sock) // kubelet removes a stale socket too
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("kubelet.sock: %w", err)
	}
	defer ln.Close()
	for _, p := range []string{"/run/containerd/s/standin", "/var/log/pods/standin", "/var/lib/cni/results/standin"} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(node), 0o600); err != nil {
			return err
		}
	}

	st := standinState{Self: os.Getpid()}
	if st.MntNS, err = os.Readlink("/proc/self/ns/mnt"); err != nil {
		return err
	}
	st.MountSeen = isMountPoint(string(mi), mntDir)
	if !st.MountSeen {
		if out, err := exec.Command("mount", "-t", "tmpfs", "standin", mntDir).CombinedOutput(); err != nil {
			return fmt.Errorf("mount: %v: %s", err, out)
		}
	}

	b := make([]byte, 16)
	_, _ = rand.Read(b)
	st.CNI = fmt.Sprintf("cni-%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
	if out, err := exec.Command("ip", "netns", "add", st.CNI).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	if st.Daemon, err = detach("sleep", "600"); err != nil {
		return err
	}
	if st.Pod, err = detach("ip", "netns", "exec", st.CNI, "sleep", "600"); err != nil {
		return err
	}
	if st.PodV1, err = detach("ip", "netns", "exec", st.CNI, "sleep", "600"); err != nil {
		return err
	}
	v1, v2 := cgroupHierarchies(string(mi))
	pod1 := filepath.Join("runos", node, "kubepods", "pod1")
	pod2 := filepath.Join("runos", node, "kubepods", "pod2")
	for _, h := range v1 {
		if err := joinCgroup(h, pod1, st.Pod); err != nil {
			return err
		}
		if err := joinCgroup(h, pod2, st.PodV1); err != nil {
			return err
		}
	}
	if err := joinCgroup(v2, pod1, st.Pod); err != nil {
		return err
	}
	// Out of the tracker: only its v1 cgroups tie this one to the node.
	if err := joinCgroup(v2, "", st.PodV1); err != nil {
		return err
	}

	if sysctls {
		for k, v := range map[string]string{"vm/overcommit_memory": "1", "kernel/panic": "10", "kernel/panic_on_oops": "1"} {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
				return err
			}
		}
	}

	js, _ := json.Marshal(st)
	if err := os.WriteFile(stateFile+".tmp", js, 0o600); err != nil {
		return err
	}
	if err := os.Rename(stateFile+".tmp", stateFile); err != nil {
		return err
	}
	fmt.Println("READY")
	time.Sleep(10 * time.Minute)
	return nil
}

// detach starts a process in a session of its own that outlives its parent,
// as daemons and containerd shims do.
func detach(args ...string) (int, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	return pid, cmd.Process.Release()
}

func isMountPoint(mountinfo, dir string) bool {
	for _, line := range strings.Split(mountinfo, "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// cgroupHierarchies returns the v1 mount points and the cgroup2 one.
func cgroupHierarchies(mountinfo string) (v1 []string, v2 string) {
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if sep < 5 || sep+1 >= len(f) || f[3] != "/" {
			continue
		}
		switch f[sep+1] {
		case "cgroup":
			v1 = append(v1, f[4])
		case "cgroup2":
			v2 = f[4]
		}
	}
	return v1, v2
}

// joinCgroup creates rel (and its parents) in hierarchy h and moves pid
// into it. cpuset cgroups get their parent's cpus and mems, without which
// they take no tasks.
func joinCgroup(h, rel string, pid int) error {
	dir := h
	for _, part := range strings.Split(rel, "/") {
		if part == "" {
			continue
		}
		parent := dir
		dir = filepath.Join(dir, part)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(parent, f)); err == nil {
				if cur, _ := os.ReadFile(filepath.Join(dir, f)); strings.TrimSpace(string(cur)) == "" {
					if err := os.WriteFile(filepath.Join(dir, f), v, 0); err != nil {
						return fmt.Errorf("%s: %w", filepath.Join(dir, f), err)
					}
				}
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("moving %d into %s: %w", pid, dir, err)
	}
	return nil
}

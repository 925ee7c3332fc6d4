package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// mount is one line of /proc/self/mountinfo.
type mount struct {
	root, point, fstype string
}

// mounts lists the mounts of the calling process's mount namespace.
func mounts() ([]mount, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []mount
	for _, line := range strings.Split(string(b), "\n") {
		// id parent major:minor root point options [optional...] - fstype source superopts
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) < 5 || sep < 0 || sep+1 >= len(f) {
			continue
		}
		out = append(out, mount{root: unescapeMount(f[3]), point: unescapeMount(f[4]), fstype: f[sep+1]})
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupMounts returns the mount points of every cgroup v1 hierarchy and of
// cgroup2 (at most one of each place; bind mounts of subtrees are skipped,
// their cgroups are reachable through the full mount).
func cgroupMounts() (v1 []string, v2 string, err error) {
	ms, err := mounts()
	if err != nil {
		return nil, "", err
	}
	for _, m := range ms {
		if m.root != "/" {
			continue
		}
		switch m.fstype {
		case "cgroup":
			if !slices.Contains(v1, m.point) {
				v1 = append(v1, m.point)
			}
		case "cgroup2":
			if v2 == "" {
				v2 = m.point
			}
		}
	}
	return v1, v2, nil
}

// The cgroups a kube node owns, relative to each hierarchy's root:
// kubeCgroupRoot is the kubelet's cgroupRoot (pods live under it), and
// trackerCgroup (cgroup2 only) holds everything the lab started in the node
// and, by inheritance, everything those started, daemonised or not.
func kubeCgroupRoot(node string) string { return "runos/" + node }
func trackerCgroup(node string) string  { return "runos-lab/" + node }

// kubeCgroupDirs lists the existing cgroup directories of node, in every
// hierarchy.
func kubeCgroupDirs(node string) []string {
	v1, v2, _ := cgroupMounts()
	var dirs []string
	add := func(d string) {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			dirs = append(dirs, d)
		}
	}
	for _, h := range v1 {
		add(filepath.Join(h, kubeCgroupRoot(node)))
	}
	if v2 != "" {
		add(filepath.Join(v2, kubeCgroupRoot(node)))
		add(filepath.Join(v2, trackerCgroup(node)))
	}
	return dirs
}

// cgroupPids lists the processes in dir and every cgroup below it (zombies
// are not listed by the kernel).
func cgroupPids(dir string) []int {
	var pids []int
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// netnsPids lists the processes whose network namespace is ns (as `ip netns
// pids` does), or nothing if ns does not exist.
func netnsPids(ns string) []int {
	var want syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+ns, &want); err != nil {
		return nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name()+"/ns/net", &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killKubeNode kills every process of a kube node and waits until they are
// gone: its tracker cgroup (the agent, its components, their shims), its
// cgroupRoot in every hierarchy (pods, which live in network namespaces of
// their own) and, if netns is not empty, whatever else runs in the node's
// network namespace. cgroup.kill is atomic against forks; the v1 hierarchies
// and the namespace are swept until a pass finds nothing.
func killKubeNode(node, netns string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var pids []int
		var populated bool
		for _, d := range kubeCgroupDirs(node) {
			if b, err := os.ReadFile(filepath.Join(d, "cgroup.events")); err == nil {
				// cgroup2: also counts tasks still exiting, which
				// cgroup.procs no longer lists.
				if strings.Contains(string(b), "populated 1") {
					populated = true
					_ = os.WriteFile(filepath.Join(d, "cgroup.kill"), []byte("1"), 0)
				}
			}
			pids = append(pids, cgroupPids(d)...)
		}
		if netns != "" {
			pids = append(pids, netnsPids(netns)...)
		}
		pids = slices.DeleteFunc(pids, func(p int) bool { return p == os.Getpid() || !alive(p) })
		if len(pids) == 0 && !populated {
			return nil
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: kube node %s: processes survive SIGKILL after %v: %s", node, timeout, describePids(pids))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func describePids(pids []int) string {
	var parts []string
	for _, p := range pids {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/comm")
		parts = append(parts, fmt.Sprintf("%d (%s)", p, strings.TrimSpace(string(comm))))
	}
	return strings.Join(parts, ", ")
}

// removeKubeCgroups removes node's cgroups depth-first in every hierarchy.
// Run it after killKubeNode: a cgroup whose last task is still exiting
// refuses rmdir with EBUSY for a moment, so that is retried.
func removeKubeCgroups(node string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var errs []error
	for _, top := range kubeCgroupDirs(node) {
		var dirs []string
		_ = filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		// Deepest first: WalkDir lists parents before children.
		slices.Reverse(dirs)
		for _, d := range dirs {
			for {
				err := syscall.Rmdir(d)
				if err == nil || errors.Is(err, syscall.ENOENT) {
					break
				}
				if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
					errs = append(errs, fmt.Errorf("lab: rmdir %s: %w (tasks: %s)", d, err, describePids(cgroupPids(d))))
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points of the calling namespace at or below
// dir, deepest first.
func mountsUnder(dir string) []string {
	ms, _ := mounts()
	var out []string
	for _, m := range ms {
		if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
			out = append(out, m.point)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return slices.Compact(out)
}

// unmountUnder detaches whatever is mounted at or below dir in the root
// mount namespace. The node's own mounts live in its private namespace and
// vanish with it; this catches any that leaked out.
func unmountUnder(dir string) error {
	var errs []error
	for _, p := range mountsUnder(dir) {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("lab: unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

package kubehost

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
)

// cgroupRoot is the kubelet's cgroupRoot: a subtree of its own per node,
// so several nodes on one machine (tests) do not share pod cgroups.
func cgroupRoot(node string) string { return "/runos/" + node }

// prepareCgroups creates root in every cgroup v1 hierarchy before the
// kubelet starts (it does not create its cgroupRoot itself). cpuset
// children start with no CPUs or memory nodes: they are copied from the
// parent, level by level.
func prepareCgroups(root string) error {
	hiers, err := filepath.Glob("/sys/fs/cgroup/*")
	if err != nil {
		return err
	}
	for _, h := range hiers {
		if filepath.Base(h) == "unified" {
			continue
		}
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil {
			continue // not a hierarchy (e.g. a symlink like cpu -> cpu,cpuacct is fine, files are not)
		}
		parent := h
		for _, part := range strings.Split(strings.Trim(root, "/"), "/") {
			dir := filepath.Join(parent, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
				return err
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				cur, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil || len(bytes.TrimSpace(cur)) > 0 {
					continue
				}
				if v, err := os.ReadFile(filepath.Join(parent, f)); err == nil {
					os.WriteFile(filepath.Join(dir, f), v, 0o644)
				}
			}
			parent = dir
		}
	}
	return nil
}

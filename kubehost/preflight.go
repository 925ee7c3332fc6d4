package kubehost

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/runos/runos-agent/kubehost/supervise"
)

// Check tells whether this node can run managed Kubernetes at version:
// root, and every binary present at the right version. Its error names
// what is missing; `kube enable` refuses with it.
func (h *Host) Check(version string, etcd bool) error {
	s := &Spec{Version: version}
	if etcd {
		s.Etcd = &EtcdRole{}
	}
	_, err := h.preflight(s)
	return err
}

// preflight checks the binaries the spec needs and returns the versions
// they report, by component.
func (h *Host) preflight(s *Spec) (map[string]string, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("managed Kubernetes needs root (kubelet, containerd and CNI configure the host)")
	}
	var errs []error
	if n := len(h.p.containerdSock()); n > maxSocketPath {
		errs = append(errs, fmt.Errorf("the data dir path is too long for containerd's socket (%s is %d bytes; unix sockets take %d)", h.p.containerdSock(), n, maxSocketPath))
	}
	versions := map[string]string{}
	kube := []string{Kubelet, KubeProxy}
	if s.Etcd != nil {
		kube = append(kube, APIServer, ControllerManager, Scheduler)
	}
	for _, name := range kube {
		v, err := h.version(h.bin(name), "--version")
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w (--kube-bin-dir %s)", name, err, h.cfg.BinDir))
			continue
		}
		got := parseKubeVersion(v)
		if got != s.Version {
			errs = append(errs, fmt.Errorf("%s: %s is %q, the cluster runs %s", name, h.bin(name), firstLine(v), s.Version))
			continue
		}
		versions[name] = got
	}
	if v, err := h.version(h.cfg.ContainerdPath, "--version"); err != nil {
		errs = append(errs, fmt.Errorf("containerd: %w (Debian: apt-get install containerd)", err))
	} else {
		versions[Containerd] = containerdVersion(v)
	}
	if _, err := h.version(h.cfg.CtrPath, "--version"); err != nil {
		errs = append(errs, fmt.Errorf("ctr: %w (comes with containerd)", err))
	}
	if _, err := exec.LookPath("runc"); err != nil {
		errs = append(errs, errors.New("runc: not found in PATH (Debian: apt-get install runc)"))
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		errs = append(errs, errors.New("iptables: not found in PATH; kube-proxy needs it (Debian: apt-get install iptables)"))
	}
	if s.Etcd != nil {
		if v, err := h.version(h.cfg.EtcdPath, "--version"); err != nil {
			errs = append(errs, fmt.Errorf("etcd: %w (Debian: apt-get install etcd-server)", err))
		} else {
			versions[Etcd] = etcdVersion(v)
		}
	}
	for _, plugin := range []string{"bridge", "host-local", "portmap", "loopback"} {
		if _, err := os.Stat(filepath.Join(h.cfg.CNIBinDir, plugin)); err != nil {
			errs = append(errs, fmt.Errorf("CNI plugin %s: not in %s (Debian: apt-get install containernetworking-plugins)", plugin, h.cfg.CNIBinDir))
		}
	}
	if _, err := os.Stat(h.cfg.BusyboxPath); err != nil {
		errs = append(errs, fmt.Errorf("busybox: %s not found; the pod sandbox image is made from it (Debian: apt-get install busybox-static)", h.cfg.BusyboxPath))
	}
	return versions, errors.Join(errs...)
}

// version runs a binary's version flag once per binary file (by mtime).
func (h *Host) version(path string, args ...string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if !filepath.IsAbs(path) {
			return "", fmt.Errorf("%s not found in PATH", path)
		}
		return "", fmt.Errorf("%s not found", path)
	}
	if v, ok := h.versions[path]; ok && v.mtime.Equal(fi.ModTime()) {
		return v.version, v.err
	}
	out, err := supervise.Version(path, args...)
	h.versions[path] = binVersion{mtime: fi.ModTime(), version: out, err: err}
	return out, err
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// containerdVersion takes "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1".
func containerdVersion(out string) string {
	if f := strings.Fields(firstLine(out)); len(f) >= 3 {
		return f[2]
	}
	return firstLine(out)
}

// etcdVersion takes "etcd Version: 3.4.23\nGit SHA: ...".
func etcdVersion(out string) string {
	_, v, ok := strings.Cut(firstLine(out), "Version:")
	if ok {
		return strings.TrimSpace(v)
	}
	return firstLine(out)
}

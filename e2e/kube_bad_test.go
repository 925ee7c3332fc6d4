package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

// kubeBinaries are the Kubernetes binaries --kube-bin-dir holds.
var kubeBinaries = []string{"kubelet", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl"}

// TestKubeBadInput: what `kube enable` does with what it cannot run, on
// one two-node kernel-mode cluster. Missing binaries and a kubelet of
// another version are refused with an error naming the binary (and the
// versions), and nothing is enabled; a port a component needs, taken on one
// node, shows in `kube status` as that component's error while the other
// node comes Ready, and the component comes up by itself once the port is
// free; a second enable at another version is refused and changes nothing.
func TestKubeBadInput(t *testing.T) {
	kc := newKubeCluster(t, "10.98.1.0/24", 2)
	n1, n2 := kc.nodes[0], kc.nodes[1]
	all := kc.nodes
	// The agents' --kube-bin-dir: empty at first, filled as the test goes.
	bins := filepath.Join(kc.tmp, "kube-bin")
	if err := os.Mkdir(bins, 0o755); err != nil {
		t.Fatal(err)
	}
	kc.agentBinDir = bins

	n1.initCluster()
	kc.startKube(n1)
	n2.join(n1)
	kc.startKube(n2)
	kc.eventually(90*time.Second, "two-node mesh forms", func() error {
		return kc.formed(all, nil, nil)
	})
	unmanaged := func(when string) {
		t.Helper()
		for _, n := range all {
			st, err := kc.kubeStatus(n)
			if err != nil {
				kc.fatalf("%v", err)
			}
			if st.Managed || st.Version != "" {
				kc.fatalf("%s: %s: kube status says managed %v version %q, want unmanaged", when, n.name, st.Managed, st.Version)
			}
		}
	}
	refused := func(when string, args []string, want ...string) string {
		t.Helper()
		out, errOut, err := n1.exec(append([]string{"kube", "enable", "--data-dir", n1.dir}, args...)...)
		if err == nil {
			kc.fatalf("%s: kube enable succeeded: %s", when, out)
		}
		for _, w := range want {
			if !strings.Contains(errOut, w) {
				kc.fatalf("%s: kube enable failed (%v) without naming %q:\n%s", when, err, w, errOut)
			}
		}
		t.Logf("%s: kube enable: %s", when, strings.TrimSpace(errOut))
		return errOut
	}

	// (a) No binaries at all.
	refused("empty --kube-bin-dir", nil, "kubelet", "kube-apiserver", "kube-proxy", bins)
	unmanaged("after enable with no binaries")

	// (b) Every binary there, but kubelet of another release.
	for _, b := range kubeBinaries {
		if b == "kubelet" {
			continue
		}
		if err := os.Symlink(filepath.Join(kc.binDir, b), filepath.Join(bins, b)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(bins, "kubelet"), []byte("#!/bin/sh\necho 'Kubernetes v1.33.0'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	msg := refused("kubelet v1.33.0", nil, "kubelet", "v1.33.0", kubeVersion)
	for _, b := range []string{"kube-apiserver", "kube-proxy", "kube-scheduler", "kube-controller-manager"} {
		if strings.Contains(msg, b) {
			kc.fatalf("kube enable blames %s, which is fine:\n%s", b, msg)
		}
	}
	unmanaged("after enable with the wrong kubelet")

	// (c) The right binaries, but on n2 the addresses of two components
	// taken: the kubelet's port on the mesh IP (a supervised process) and
	// the API balancer's on loopback (served by the agent). The cluster
	// DNS has no port of its own any more: it answers inside the node
	// resolver, which holds port 53 on the mesh IP from the agent's start.
	if err := os.Remove(filepath.Join(bins, "kubelet")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(kc.binDir, "kubelet"), filepath.Join(bins, "kubelet")); err != nil {
		t.Fatal(err)
	}
	st2, err := n2.status()
	if err != nil {
		kc.fatalf("%v", err)
	}
	taken := map[string]string{
		"kubelet":      st2.MeshIP + ":10250",
		"api-balancer": "127.0.0.1:6444",
	}
	var squatters []*lab.Proc
	for comp, addr := range taken {
		p := n2.host.StartKubeNode(t, "squat-"+comp+"-"+n2.host.Name(), helper(t, "echo-server", "LISTEN="+addr)...)
		squatters = append(squatters, p)
		kc.eventually(10*time.Second, "a listener on "+addr, func() error {
			if strings.Contains(p.Output(), "LISTENING") {
				return nil
			}
			select {
			case <-p.Done():
				return fmt.Errorf("listener exited: %s", p.Output())
			default:
			}
			return fmt.Errorf("not listening yet: %q", p.Output())
		})
	}
	if out, err := n1.cli("kube", "enable", "--data-dir", n1.dir); err != nil {
		kc.fatalf("%v", err)
	} else if !strings.Contains(out, kubeVersion) {
		kc.fatalf("kube enable said %q", out)
	}
	seenErr := map[string]string{}
	kc.eventually(4*time.Minute, n1.name+" Ready, "+n2.name+"'s components down with their ports in use", func() error {
		st, err := kc.kubeStatus(n1)
		if err != nil {
			return err
		}
		if !st.Managed || st.Version != kubeVersion {
			return fmt.Errorf("managed %v version %q", st.Managed, st.Version)
		}
		var seen1, seen2 bool
		for _, n := range st.Nodes {
			switch n.Name {
			case n1.name:
				seen1 = true
				if !n.Ready {
					return fmt.Errorf("%s not Ready", n.Name)
				}
				for _, c := range n.Components {
					if !c.Running {
						return fmt.Errorf("%s: %s not running: %s", n.Name, c.Name, c.LastError)
					}
				}
			case n2.name:
				seen2 = true
				for comp, addr := range taken {
					var found bool
					for _, c := range n.Components {
						if c.Name != comp {
							continue
						}
						found = true
						if c.Running || !strings.Contains(c.LastError, "address already in use") || !strings.Contains(c.LastError, addr) {
							return fmt.Errorf("%s: %s running %v, last error %q; want down, naming %s in use", n.Name, comp, c.Running, c.LastError, addr)
						}
						seenErr[comp] = c.LastError
					}
					if !found {
						return fmt.Errorf("%s reports no %s: %+v", n.Name, comp, n.Components)
					}
				}
			}
		}
		if !seen1 || !seen2 {
			return fmt.Errorf("kube status lists %+v", st.Nodes)
		}
		return nil
	})
	for comp, msg := range seenErr {
		t.Logf("%s: %s: %s", n2.name, comp, msg)
	}
	if out, err := n2.cli("kube", "status", "--data-dir", n2.dir); err != nil {
		kc.fatalf("%v", err)
	} else if strings.Count(out, "address already in use") != len(taken) {
		kc.fatalf("kube status (table) does not show the %d components' errors:\n%s", len(taken), out)
	}

	// Free the ports: the components come up by themselves (the
	// supervisor's restart backoff is at most 60 s; the agent retries its
	// own listeners every few seconds).
	for _, p := range squatters {
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		<-p.Done()
	}
	freed := time.Now()
	kc.eventually(2*time.Minute, "both nodes Ready once the ports are free", func() error {
		return kc.allReady(n1, all)
	})
	t.Logf("%s recovered %v after the ports were freed", n2.name, time.Since(freed).Round(time.Second))

	// (d) Enabled at kubeVersion: another version is refused; the same
	// one is a no-op.
	before, err := kc.kubeStatus(n1)
	if err != nil {
		kc.fatalf("%v", err)
	}
	refused("second enable at v1.33.0", []string{"--version", "v1.33.0"}, "already enabled", kubeVersion, "v1.33.0")
	if out, err := n2.cli("kube", "enable", "--data-dir", n2.dir); err != nil {
		kc.fatalf("enabling again at the same version: %v", err)
	} else if !strings.Contains(out, kubeVersion) {
		kc.fatalf("kube enable again said %q", out)
	}
	for _, via := range all {
		after, err := kc.kubeStatus(via)
		if err != nil {
			kc.fatalf("%v", err)
		}
		if !after.Managed || after.Version != kubeVersion {
			kc.fatalf("%s: after the refused enable: managed %v version %q", via.name, after.Managed, after.Version)
		}
		if err := kc.allReady(via, all); err != nil {
			kc.fatalf("after the refused enable: %v", err)
		}
		// Nothing restarted: the same processes run.
		pids := map[string]int{}
		for _, n := range before.Nodes {
			for _, c := range n.Components {
				pids[n.Name+"/"+c.Name] = c.PID
			}
		}
		for _, n := range after.Nodes {
			for _, c := range n.Components {
				if want := pids[n.Name+"/"+c.Name]; c.PID != want {
					kc.fatalf("%s: %s's %s now pid %d, was %d: the refused enable restarted it", via.name, n.Name, c.Name, c.PID, want)
				}
			}
		}
	}
}

package kubehost

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"
)

// Pods keep their own addresses inside the cluster (the bridge does not
// masquerade, so a pod on another node sees the real source), but the rest
// of the world has no route back to 172.25.0.0/16: traffic from this
// node's pods to anything outside the mesh and pod networks leaves with
// the node's address, through a chain of the agent's own.
const egressChain = "RUNOS-POSTROUTING"

func egressRules(podCIDR netip.Prefix, keep []netip.Prefix) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*nat\n:%s - [0:0]\n", egressChain)
	for _, p := range keep {
		fmt.Fprintf(&b, "-A %s -d %s -j RETURN\n", egressChain, p)
	}
	fmt.Fprintf(&b, "-A %s -s %s -j MASQUERADE\nCOMMIT\n", egressChain, podCIDR.Masked())
	return b.String()
}

// ensureEgress installs the chain (replacing its rules) and the jump to it.
func ensureEgress(ctx context.Context, podCIDR netip.Prefix, keep []netip.Prefix) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	restore := exec.CommandContext(ctx, "iptables-restore", "--noflush")
	restore.Stdin = strings.NewReader(egressRules(podCIDR, keep))
	if out, err := restore.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if exec.CommandContext(ctx, "iptables", "-t", "nat", "-C", "POSTROUTING", "-j", egressChain).Run() == nil {
		return nil
	}
	if out, err := exec.CommandContext(ctx, "iptables", "-t", "nat", "-A", "POSTROUTING", "-j", egressChain).CombinedOutput(); err != nil {
		return fmt.Errorf("iptables: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// removeEgress takes the chain out again (managed Kubernetes turned off).
func removeEgress() {
	for _, args := range [][]string{
		{"-t", "nat", "-D", "POSTROUTING", "-j", egressChain},
		{"-t", "nat", "-F", egressChain},
		{"-t", "nat", "-X", egressChain},
	} {
		exec.Command("iptables", args...).Run()
	}
}

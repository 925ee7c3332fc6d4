package kubehost

import (
	"context"
	"errors"
	"net/netip"

	"github.com/runos/runos-agent/iptables"
	"github.com/runos/runos-agent/nft"
)

// bridgeName is the pods' bridge on every node (cniConfig).
const bridgeName = "runos0"

// egressChain: pods keep their own addresses inside the cluster (the
// bridge does not masquerade, so a pod on another node sees the real
// source), but the rest of the world has no route back to 172.25.0.0/16:
// traffic from this node's pods to anything outside the mesh and pod
// networks leaves with the node's address.
func egressChain(podCIDR netip.Prefix, keep []netip.Prefix) iptables.Chain {
	c := iptables.Chain{Table: "nat", Name: "RUNOS-POSTROUTING", From: "POSTROUTING"}
	for _, p := range keep {
		c.Rules = append(c.Rules, []string{"-d", p.Masked().String(), "-j", "RETURN"})
	}
	c.Rules = append(c.Rules, []string{"-s", podCIDR.Masked().String(), "-j", "MASQUERADE"})
	return c
}

// podsForwardChain lets pod traffic through a host whose FORWARD policy is
// DROP (Docker sets one; without this, pods on such a node reach nothing
// beyond it and nothing reaches them over the mesh): everything the pods
// send, what comes for them over the mesh, and replies. It opens nothing a
// host with an ACCEPT policy did not already forward. User devices (wg1)
// have a chain of their own in package access.
func podsForwardChain(meshInterface string) iptables.Chain {
	return iptables.Chain{Table: "filter", Name: "RUNOS-PODS", From: "FORWARD", First: true, Rules: [][]string{
		{"-i", bridgeName, "-j", "ACCEPT"},
		{"-i", meshInterface, "-o", bridgeName, "-j", "ACCEPT"},
		{"-o", bridgeName, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
	}}
}

// podsInputChain lets pods reach this node's mesh IP through a host firewall
// that drops incoming connections (ufw's default): the cluster DNS
// kubelet gives them and the API server behind the kubernetes Service
// listen there.
func podsInputChain(meshIP netip.Addr) iptables.Chain {
	return iptables.Chain{Table: "filter", Name: "RUNOS-PODS-IN", From: "INPUT", First: true, Rules: [][]string{
		{"-i", bridgeName, "-d", meshIP.String(), "-j", "ACCEPT"},
	}}
}

// ensurePodRules installs the egress, forward and input chains (replacing
// their rules) and the jumps to them, and keeps them (reconcile rechecks).
// A chain of the host's own that drops forwarded packets is reported: pods
// behind it reach only this node.
func (h *Host) ensurePodRules(ctx context.Context, spec *Spec, keep []netip.Prefix) error {
	h.podRules = nil
	var errs []error
	forwardAccepted := true
	for _, c := range []iptables.Chain{
		podsForwardChain(h.cfg.MeshInterface),
		podsInputChain(spec.MeshIP),
		egressChain(spec.PodCIDR, keep),
	} {
		k := &iptables.Kept{Host: h.cfg.IPTables, Chain: c}
		err := k.Ensure(ctx)
		if err != nil && c.From == "FORWARD" {
			forwardAccepted = false
		}
		errs = append(errs, err)
		h.podRules = append(h.podRules, k)
	}
	for _, c := range nft.BlockingForward(forwardAccepted) {
		h.log.Warn("the host drops forwarded packets: allow "+bridgeName+" there, or pods reach only this node", "chain", c.String())
	}
	return errors.Join(errs...)
}

// removePodRules takes the chains out again (managed Kubernetes turned
// off), also any a previous run of the agent left.
func (h *Host) removePodRules() {
	ctx := context.Background()
	for _, c := range []iptables.Chain{egressChain(netip.Prefix{}, nil), podsForwardChain(h.cfg.MeshInterface), podsInputChain(netip.Addr{})} {
		if err := h.cfg.IPTables.Remove(ctx, c); err != nil {
			h.log.Warn("removing pod rules", "chain", c.Name, "err", err)
		}
	}
	h.podRules = nil
}

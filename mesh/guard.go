package mesh

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/runos/runos-agent/iptables"
	"github.com/runos/runos-agent/nft"
)

// GuardTable is the nftables table (family ip: the mesh is IPv4, and an
// inet table would drop IPv6, NDP included, at its final rule) that keeps
// the mesh addresses of a kernel-mode node to WireGuard; nothing else uses
// it.
const GuardTable = "runos_mesh"

// guardRuleset is the nft(8) script that replaces the guard table in one
// transaction. Linux answers for a local address on whichever interface a
// packet arrives (the weak host model), so without it a host on the LAN
// reaches this node's mesh IP by routing it through the node's LAN address:
// every listener bound to the mesh IP alone, kube-apiserver among them,
// would face the LAN. Packets for the mesh are taken from the WireGuard
// interface, from this node itself, and from cfg.Inside (pods behind their
// bridge, user devices on wg1); the rest are dropped. The chain accepts
// rather than ends the ruleset, so other tables still see every packet.
func guardRuleset(iface string, cfg Config) string {
	var b strings.Builder
	b.WriteString(nft.Reset("ip", GuardTable))
	fmt.Fprintf(&b, "table ip %s {\n\tchain input {\n", GuardTable)
	b.WriteString("\t\ttype filter hook input priority filter - 10; policy accept;\n")
	fmt.Fprintf(&b, "\t\tip daddr != %s accept\n", cfg.Prefix.Masked())
	fmt.Fprintf(&b, "\t\tiifname { %q, \"lo\" } accept\n", iface)
	if len(cfg.Inside) > 0 {
		nets := make([]string, len(cfg.Inside))
		for i, p := range cfg.Inside {
			nets[i] = p.Masked().String()
		}
		fmt.Fprintf(&b, "\t\tip saddr { %s } accept\n", strings.Join(nets, ", "))
	}
	b.WriteString("\t\tdrop\n\t}\n}\n")
	return b.String()
}

// inputChain lets what the guard keeps for the mesh through a host firewall
// that drops incoming connections (ufw's default): gossip, Raft, the node
// API and DNS on the mesh IP are connections other members open, and no
// accept in the guard table can overrule iptables' INPUT policy. It takes
// packets for the mesh from WireGuard only, so every one comes from a
// member's key; pods and devices, whose interfaces belong to kubehost and
// access, are opened there.
func inputChain(iface string, prefix netip.Prefix) iptables.Chain {
	return iptables.Chain{Table: "filter", Name: "RUNOS-MESH", From: "INPUT", First: true, Rules: [][]string{
		{"-i", iface, "-d", prefix.Masked().String(), "-j", "ACCEPT"},
	}}
}

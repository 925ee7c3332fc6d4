package access

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/runos/runos-agent/nft"
)

// TableName is the nftables table (family inet) the entry node's rules live
// in; nothing else of the agent uses it.
const TableName = "runos_access"

// Rules is what the entry node's firewall enforces for devices on wg1.
type Rules struct {
	Interface string // "wg1"
	// Users is the devices' network (172.24.200.0/21).
	Users netip.Prefix
	// Networks are what a device may reach: the mesh (which contains
	// Users), the pods and the services.
	Networks []netip.Prefix
	// Peers are the devices that allow each other (AllowPeers).
	Peers []netip.Addr
}

// Ruleset is the nft(8) script that replaces the table in one transaction.
//
// A device reaches the cluster's networks, on this node (input) and through
// it (forward), and nothing else: no other device (unless both allow it),
// not the node's underlay, not the Internet. Packets towards wg1 come only
// from the cluster's networks (or are replies), so the node does not become
// a router into devices either. The chains accept what they allow rather
// than end the ruleset: other tables (Kubernetes', the host's) still see
// every packet.
func (r Rules) Ruleset() string {
	nets := make([]string, len(r.Networks))
	for i, p := range r.Networks {
		nets[i] = p.Masked().String()
	}
	networks := "{ " + strings.Join(nets, ", ") + " }"
	var peers string
	if len(r.Peers) > 0 {
		e := make([]string, len(r.Peers))
		for i, a := range r.Peers {
			e[i] = a.String()
		}
		peers = "\t\telements = { " + strings.Join(e, ", ") + " }\n"
	}
	var b strings.Builder
	b.WriteString(nft.Reset("inet", TableName))
	fmt.Fprintf(&b, `table inet %[1]s {
	set peers {
		type ipv4_addr
%[2]s	}
	chain input {
		type filter hook input priority filter - 5; policy accept;
		iifname %[3]q ip daddr %[4]s accept
		iifname %[3]q drop
	}
	chain forward {
		type filter hook forward priority filter - 5; policy accept;
		iifname %[3]q jump from_device
		oifname %[3]q jump to_device
	}
	chain from_device {
		ip daddr %[5]s ip saddr @peers ip daddr @peers accept
		ip daddr %[5]s drop
		ip daddr %[4]s accept
		drop
	}
	chain to_device {
		ip saddr %[5]s ip saddr @peers ip daddr @peers accept
		ip saddr %[5]s drop
		ip saddr %[4]s accept
		ct state established,related accept
		drop
	}
}
`, TableName, peers, r.Interface, networks, r.Users.Masked())
	return b.String()
}

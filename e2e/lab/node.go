package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
)

// node is what Hosts and Routers share: a namespace to run things in and to
// put firewall rules into.
type node struct {
	lab  *Lab
	name string
	ns   string

	blockOnce sync.Once
	blockErr  error
}

// Name is the name given to the lab.
func (n *node) Name() string { return n.name }

// Namespace is the network namespace's name (for `ip netns exec`).
func (n *node) Namespace() string { return n.ns }

// Run runs a command inside the namespace (`ip netns exec NS args...`) and
// returns its combined output, trimmed.
func (n *node) Run(args ...string) (string, error) {
	return run(append([]string{"ip", "netns", "exec", n.ns}, args...)...)
}

// AddLoopbackAddr puts p on the namespace's lo, e.g. a node's pod /24 (there
// are no dummy interfaces here). On lo the kernel treats the whole prefix as
// local: every address in it answers, not just p's.
func (n *node) AddLoopbackAddr(p netip.Prefix) error {
	_, err := run("ip", "-n", n.ns, "addr", "add", p.String(), "dev", "lo")
	return err
}

// blockRules drop everything to and from the addresses in two sets, and
// what arrives from the addresses in two more (one-way); they run before
// anything else in the namespace, conntrack included.
const blockRules = `table inet lab_block {
	set v4 { type ipv4_addr; }
	set v6 { type ipv6_addr; }
	set in4 { type ipv4_addr; }
	set in6 { type ipv6_addr; }
	chain input {
		type filter hook input priority raw; policy accept;
		ip saddr @v4 drop
		ip6 saddr @v6 drop
		ip saddr @in4 drop
		ip6 saddr @in6 drop
	}
	chain output {
		type filter hook output priority raw; policy accept;
		ip daddr @v4 drop
		ip6 daddr @v6 drop
	}
	chain forward {
		type filter hook forward priority raw; policy accept;
		ip saddr @v4 drop
		ip daddr @v4 drop
		ip6 saddr @v6 drop
		ip6 daddr @v6 drop
	}
}
`

// Block drops all traffic between this namespace and other, in both
// directions (a partition). Blocking twice is fine.
func (n *node) Block(other netip.Addr) error {
	return n.blockSet("add", other)
}

// Unblock lifts Block. Unblocking an address that is not blocked is an error.
func (n *node) Unblock(other netip.Addr) error {
	return n.blockSet("delete", other)
}

// BlockFrom drops what other sends to this namespace, while what this
// namespace sends to other still goes out: an asymmetric partition.
func (n *node) BlockFrom(other netip.Addr) error {
	return n.blockSetNamed("add", "in", other)
}

// UnblockFrom lifts BlockFrom.
func (n *node) UnblockFrom(other netip.Addr) error {
	return n.blockSetNamed("delete", "in", other)
}

func (n *node) blockSet(op string, a netip.Addr) error {
	return n.blockSetNamed(op, "", a)
}

func (n *node) blockSetNamed(op, prefix string, a netip.Addr) error {
	n.blockOnce.Do(func() {
		_, n.blockErr = runStdin(blockRules, "ip", "netns", "exec", n.ns, "nft", "-f", "-")
	})
	if n.blockErr != nil {
		return n.blockErr
	}
	set := prefix + "v4"
	if prefix != "" {
		set = prefix + "4"
	}
	if a.Is6() && !a.Is4In6() {
		set = prefix + "v6"
		if prefix != "" {
			set = prefix + "6"
		}
	}
	_, err := n.Run("nft", op, "element", "inet", "lab_block", set, fmt.Sprintf("{ %s }", a.Unmap()))
	return err
}

func splitLines(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, line)
		}
	}
	return out
}

func isSummary(line string) bool {
	return strings.HasPrefix(line, "conntrack v") && strings.Contains(line, "flow entries")
}

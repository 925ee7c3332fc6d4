// Package nft applies nftables scripts with nft(8): each script is one
// transaction, so a table is replaced whole or not at all. The agent owns a
// few tables (mesh.GuardTable, access.TableName), each replaced by a script
// that starts with Reset and removed with Delete. ForwardDrops finds the
// host's chains that drop forwarded packets, which no table of the agent's
// can overrule.
package nft

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// Run applies script (nft -f -), waiting at most 10 s.
func Run(script string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Reset is the start of a script that replaces table (family family,
// "ip" or "inet"): it declares the table, so the delete that follows
// succeeds on a fresh host, and deletes it.
func Reset(family, table string) string {
	return fmt.Sprintf("table %[1]s %[2]s\ndelete table %[1]s %[2]s\n", family, table)
}

// Delete is the script that removes table, and does nothing if it is not
// there.
func Delete(family, table string) string { return Reset(family, table) }

// Chain names one base chain: "family table chain".
type Chain struct{ Family, Table, Name string }

func (c Chain) String() string { return c.Family + " " + c.Table + " " + c.Name }

// ForwardDrops lists the base chains on the forward hook whose policy is
// drop. Each one drops whatever its own rules do not accept, and no table
// of the agent's can overrule that; iptables' filter FORWARD (iptables-nft
// shows it as "ip filter FORWARD") is the one the agent can add a rule to,
// through package iptables.
func ForwardDrops() ([]Chain, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nft", "-j", "list", "chains").Output()
	if err != nil {
		return nil, fmt.Errorf("nft list chains: %w", err)
	}
	return forwardDrops(out)
}

func forwardDrops(listing []byte) ([]Chain, error) {
	var doc struct {
		Nftables []struct {
			Chain *struct {
				Family, Table, Name, Hook, Policy string
			} `json:"chain"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(listing, &doc); err != nil {
		return nil, fmt.Errorf("nft list chains: %w", err)
	}
	var drops []Chain
	for _, o := range doc.Nftables {
		if c := o.Chain; c != nil && c.Hook == "forward" && c.Policy == "drop" {
			drops = append(drops, Chain{c.Family, c.Table, c.Name})
		}
	}
	return drops, nil
}

// IPTablesForward reports whether c is iptables' own FORWARD chain (as
// iptables-nft keeps it), which package iptables can add a rule to.
func (c Chain) IPTablesForward() bool {
	return c.Family == "ip" && c.Table == "filter" && c.Name == "FORWARD"
}

// BlockingForward lists the chains of ForwardDrops that still drop what
// the agent forwards: all of them, except iptables' own FORWARD when the
// caller's accept chain is in it (acceptedInIPTables). Without nft(8) it
// finds none.
func BlockingForward(acceptedInIPTables bool) []Chain {
	drops, err := ForwardDrops()
	if err != nil {
		return nil
	}
	return blocking(drops, acceptedInIPTables)
}

func blocking(drops []Chain, acceptedInIPTables bool) []Chain {
	return slices.DeleteFunc(drops, func(c Chain) bool { return acceptedInIPTables && c.IPTablesForward() })
}

// Package iptables keeps chains of the agent's own in the host's iptables,
// each entered by one jump from a built-in chain, the way Tailscale's
// ts-input and ts-forward work. It exists because an nftables table of the
// agent cannot overrule the host's: an accept ends only its own chain, and
// a policy of DROP in iptables' filter table (Docker's on FORWARD, ufw's
// on INPUT) still drops the packet. The agent's own policy stays in its
// nftables tables (access, guard); these chains only let through what
// those already passed. Kept puts a chain back after a reload of the
// host's firewall took it.
//
// Commands run with iptables(8) itself, so the host's backend (nf_tables
// or legacy) is the one the chain lands in.
package iptables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"time"
)

// Chain is one chain of the agent's own and the jump into it.
type Chain struct {
	Table string // "filter" or "nat"
	Name  string // the chain, e.g. "RUNOS-ACCESS"
	From  string // the built-in chain that jumps to it, e.g. "FORWARD"
	// First puts the jump at the head of From, ahead of the host's own
	// rules (a trailing -j DROP, or REJECT); otherwise it is appended.
	First bool
	// Rules are the chain's rules, each the arguments after "-A Name".
	Rules [][]string
}

func (c Chain) check() error {
	if c.Table == "" || c.Name == "" || c.From == "" {
		return errors.New("iptables: chain needs Table, Name and From")
	}
	return nil
}

// Host runs iptables(8). The zero value runs it in this process's network
// namespace; Wrap is put before every command (tests: "ip netns exec NS").
type Host struct {
	Wrap []string
}

// Available reports whether iptables is installed. A host without it has
// no iptables rules that could drop what the agent forwards.
func (h Host) Available() bool {
	_, err := exec.LookPath("iptables")
	return err == nil
}

// Ensure makes the chain hold exactly c.Rules (in one iptables-restore
// transaction) and makes sure From jumps to it once.
func (h Host) Ensure(ctx context.Context, c Chain) error {
	if err := c.check(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n:%s - [0:0]\n", c.Table, c.Name) // declares the chain, and flushes it
	for _, r := range c.Rules {
		fmt.Fprintf(&b, "-A %s %s\n", c.Name, strings.Join(r, " "))
	}
	b.WriteString("COMMIT\n")
	if _, err := h.run(ctx, b.String(), "iptables-restore", "--noflush"); err != nil {
		return err
	}
	if _, err := h.run(ctx, "", "iptables", "-t", c.Table, "-C", c.From, "-j", c.Name); err == nil {
		return nil
	}
	add := []string{"-t", c.Table, "-A", c.From, "-j", c.Name}
	if c.First {
		add = []string{"-t", c.Table, "-I", c.From, "1", "-j", c.Name}
	}
	_, err := h.run(ctx, "", "iptables", add...)
	return err
}

// Remove takes the jumps to the chain and the chain out. A chain that is
// not there is not an error.
func (h Host) Remove(ctx context.Context, c Chain) error {
	if err := c.check(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := h.run(ctx, "", "iptables", "-t", c.Table, "-n", "-L", c.Name); err != nil {
		return nil // no such chain (or no iptables): nothing to remove
	}
	for range 16 { // each -D removes one jump; a crashed run may have left two
		if _, err := h.run(ctx, "", "iptables", "-t", c.Table, "-D", c.From, "-j", c.Name); err != nil {
			break
		}
	}
	if _, err := h.run(ctx, "", "iptables", "-t", c.Table, "-F", c.Name); err != nil {
		return err
	}
	_, err := h.run(ctx, "", "iptables", "-t", c.Table, "-X", c.Name)
	return err
}

func (h Host) run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	argv := append(append(append([]string(nil), h.Wrap...), name), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s: %v: %s", strings.Join(append([]string{name}, args...), " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// DefaultRecheck is how often a Kept chain is checked for.
const DefaultRecheck = 30 * time.Second

// Kept is a chain the owner keeps in place: a reload of the host's
// firewall (netfilter-persistent, a ufw reload, iptables -F) takes the
// agent's chains with it, and Recheck puts them back. It has no lock: its
// owner calls it from one goroutine or under its own lock.
type Kept struct {
	Host  Host
	Chain Chain
	// Every is the least time between two checks (default DefaultRecheck);
	// Now is the clock (default time.Now).
	Every time.Duration
	Now   func() time.Time

	installed bool
	checked   time.Time
}

// Ensure installs the chain (Host.Ensure) and starts keeping it.
func (k *Kept) Ensure(ctx context.Context) error {
	if err := k.Host.Ensure(ctx, k.Chain); err != nil {
		return err
	}
	k.installed, k.checked = true, k.now()
	return nil
}

// Recheck, once Every has passed since the last check, puts the chain
// back if From no longer jumps to it or its rules are gone, and reports
// whether it did. Before Ensure succeeded, and after Remove, it does
// nothing.
func (k *Kept) Recheck(ctx context.Context) (restored bool, err error) {
	every := k.Every
	if every <= 0 {
		every = DefaultRecheck
	}
	if !k.installed || k.now().Sub(k.checked) < every {
		return false, nil
	}
	k.checked = k.now()
	if k.Host.intact(ctx, k.Chain) {
		return false, nil
	}
	if err := k.Ensure(ctx); err != nil {
		return false, err
	}
	return true, nil
}

// Recheck runs Kept.Recheck on each of kept and logs what it did.
func Recheck(ctx context.Context, log *slog.Logger, kept ...*Kept) {
	for _, k := range kept {
		restored, err := k.Recheck(ctx)
		switch {
		case err != nil:
			log.Warn("putting an iptables chain back", "chain", k.Chain.Name, "err", err)
		case restored:
			log.Info("the host's firewall lost an iptables chain; put it back", "chain", k.Chain.Name)
		}
	}
}

// Remove takes the chain out (Host.Remove) and stops keeping it.
func (k *Kept) Remove(ctx context.Context) error {
	k.installed = false
	return k.Host.Remove(ctx, k.Chain)
}

func (k *Kept) now() time.Time {
	if k.Now != nil {
		return k.Now()
	}
	return time.Now()
}

// intact reports whether From jumps to the chain and the chain holds as
// many rules as c has: a flush or a reload takes one or the other.
func (h Host) intact(ctx context.Context, c Chain) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := h.run(ctx, "", "iptables", "-t", c.Table, "-C", c.From, "-j", c.Name); err != nil {
		return false
	}
	out, err := h.run(ctx, "", "iptables", "-t", c.Table, "-S", c.Name)
	if err != nil {
		return false
	}
	rules := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "-A "+c.Name+" ") {
			rules++
		}
	}
	return rules == len(c.Rules)
}

package iptables

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// netns creates a network namespace for the test, removed at cleanup.
func netns(t *testing.T, name string) string {
	t.Helper()
	ns := fmt.Sprintf("rt-ipt-%s-%d", name, os.Getpid())
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	return ns
}

func run(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore", "nft", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install iproute2 iptables nftables iputils-ping): %v", tool, err)
		}
	}
}

var forward = Chain{
	Table: "filter", Name: "RUNOS-TEST", From: "FORWARD", First: true,
	Rules: [][]string{{"-i", "in0", "-o", "out0", "-j", "ACCEPT"}, {"-i", "out0", "-o", "in0", "-j", "ACCEPT"}},
}

// TestEnsureAndRemove: the chain holds exactly its rules, FORWARD jumps to
// it once and first however often Ensure runs, and Remove leaves the
// host's tables as they were.
func TestEnsureAndRemove(t *testing.T) {
	needRoot(t)
	ns := netns(t, "er")
	h := Host{Wrap: []string{"ip", "netns", "exec", ns}}
	ctx := context.Background()
	ipt := func(args ...string) string {
		return run(t, append([]string{"ip", "netns", "exec", ns, "iptables"}, args...)...)
	}
	ipt("-P", "FORWARD", "DROP")
	ipt("-A", "FORWARD", "-j", "REJECT") // a host's own trailing rule
	before := ipt("-S")

	for range 3 {
		if err := h.Ensure(ctx, forward); err != nil {
			t.Fatal(err)
		}
	}
	c := forward
	c.Rules = c.Rules[:1] // a change replaces the rules, not adds to them
	if err := h.Ensure(ctx, c); err != nil {
		t.Fatal(err)
	}
	got := ipt("-S", "FORWARD")
	want := "-P FORWARD DROP\n-A FORWARD -j RUNOS-TEST\n-A FORWARD -j REJECT --reject-with icmp-port-unreachable\n"
	if got != want {
		t.Errorf("FORWARD:\n%s\nwant:\n%s", got, want)
	}
	if got, want := ipt("-S", "RUNOS-TEST"), "-N RUNOS-TEST\n-A RUNOS-TEST -i in0 -o out0 -j ACCEPT\n"; got != want {
		t.Errorf("RUNOS-TEST:\n%s\nwant:\n%s", got, want)
	}

	for range 2 {
		if err := h.Remove(ctx, forward); err != nil {
			t.Fatal(err)
		}
	}
	if after := ipt("-S"); after != before {
		t.Errorf("after Remove:\n%s\nwant what was there before:\n%s", after, before)
	}
	if err := h.Ensure(ctx, Chain{Table: "filter"}); err == nil {
		t.Error("Ensure took a chain without a name")
	}
}

// TestAcceptGetsThroughTheHostsDropPolicy is why the package exists: a
// router namespace with Docker's FORWARD policy of DROP forwards nothing,
// an accept in an nftables table of the agent's own does not change that,
// and the iptables chain does.
func TestAcceptGetsThroughTheHostsDropPolicy(t *testing.T) {
	needRoot(t)
	in, r, out := netns(t, "in"), netns(t, "r"), netns(t, "out")
	run(t, "ip", "-n", r, "link", "add", "in0", "type", "veth", "peer", "name", "eth0", "netns", in)
	run(t, "ip", "-n", r, "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", out)
	for _, c := range [][]string{
		{"-n", r, "addr", "add", "198.18.1.1/24", "dev", "in0"},
		{"-n", r, "addr", "add", "198.18.2.1/24", "dev", "out0"},
		{"-n", r, "link", "set", "in0", "up"},
		{"-n", r, "link", "set", "out0", "up"},
		{"-n", in, "addr", "add", "198.18.1.2/24", "dev", "eth0"},
		{"-n", in, "link", "set", "eth0", "up"},
		{"-n", in, "route", "add", "default", "via", "198.18.1.1"},
		{"-n", out, "addr", "add", "198.18.2.2/24", "dev", "eth0"},
		{"-n", out, "link", "set", "eth0", "up"},
		{"-n", out, "route", "add", "default", "via", "198.18.2.1"},
	} {
		run(t, append([]string{"ip"}, c...)...)
	}
	run(t, "ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	ping := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", in, "ping", "-n", "-c", "1", "-W", "1", "198.18.2.2").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	if err := ping(); err != nil {
		t.Fatalf("the router does not forward before any policy: %v", err)
	}
	run(t, "ip", "netns", "exec", r, "iptables", "-P", "FORWARD", "DROP")
	if ping() == nil {
		t.Fatal("the router forwards despite FORWARD policy DROP")
	}
	nftAccept := exec.Command("ip", "netns", "exec", r, "nft", "-f", "-")
	nftAccept.Stdin = strings.NewReader("table inet own {\n\tchain forward {\n\t\ttype filter hook forward priority filter - 5; policy accept;\n\t\taccept\n\t}\n}\n")
	if out, err := nftAccept.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
	if ping() == nil {
		t.Fatal("an accept in an nftables table overruled iptables' DROP: the premise of this package is wrong")
	}
	h := Host{Wrap: []string{"ip", "netns", "exec", r}}
	if err := h.Ensure(context.Background(), forward); err != nil {
		t.Fatal(err)
	}
	if err := ping(); err != nil {
		t.Fatalf("with the chain: %v", err)
	}
	if err := h.Remove(context.Background(), forward); err != nil {
		t.Fatal(err)
	}
	if ping() == nil {
		t.Fatal("forwarding goes on after Remove")
	}
}

// TestKeptAfterAReload: a reload of the host's firewall (iptables-restore
// of its saved rules, as netfilter-persistent does) takes the chain away;
// Recheck puts it back once its interval has passed, and not before.
func TestKeptAfterAReload(t *testing.T) {
	needRoot(t)
	ns := netns(t, "kept")
	ipt := func(args ...string) string {
		return run(t, append([]string{"ip", "netns", "exec", ns, "iptables"}, args...)...)
	}
	ipt("-A", "FORWARD", "-j", "ACCEPT")
	saved := run(t, "ip", "netns", "exec", ns, "iptables-save")
	reload := func() {
		cmd := exec.Command("ip", "netns", "exec", ns, "iptables-restore")
		cmd.Stdin = strings.NewReader(saved)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("iptables-restore: %v %s", err, out)
		}
	}
	now := time.Unix(1e9, 0)
	k := &Kept{Host: Host{Wrap: []string{"ip", "netns", "exec", ns}}, Chain: forward, Now: func() time.Time { return now }}
	ctx := context.Background()
	if restored, err := k.Recheck(ctx); restored || err != nil {
		t.Fatalf("Recheck before Ensure: %v, %v", restored, err)
	}
	if err := k.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	want := ipt("-S")

	now = now.Add(DefaultRecheck)
	if restored, err := k.Recheck(ctx); restored || err != nil {
		t.Fatalf("Recheck of an intact chain: %v, %v", restored, err)
	}
	reload()
	if strings.Contains(ipt("-S"), "RUNOS-TEST") {
		t.Fatal("the reload left the chain: nothing to test")
	}
	now = now.Add(DefaultRecheck / 2)
	if restored, _ := k.Recheck(ctx); restored {
		t.Fatal("Recheck before its interval")
	}
	now = now.Add(DefaultRecheck / 2)
	if restored, err := k.Recheck(ctx); !restored || err != nil {
		t.Fatalf("Recheck after the reload: %v, %v", restored, err)
	}
	if got := ipt("-S"); got != want {
		t.Errorf("after Recheck:\n%s\nwant:\n%s", got, want)
	}

	// A flush of the chain's rules alone is noticed too.
	ipt("-F", "RUNOS-TEST")
	now = now.Add(DefaultRecheck)
	if restored, err := k.Recheck(ctx); !restored || err != nil {
		t.Fatalf("Recheck after a flush: %v, %v", restored, err)
	}
	if err := k.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	now = now.Add(DefaultRecheck)
	if restored, _ := k.Recheck(ctx); restored || strings.Contains(ipt("-S"), "RUNOS-TEST") {
		t.Fatal("Recheck after Remove put the chain back")
	}
}

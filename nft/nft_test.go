package nft

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestForwardDrops reads what nft itself lists in a namespace holding the
// two kinds of host firewall that drop forwarded packets: Docker's iptables
// policy (through iptables-nft) and a table of the host's own.
func TestForwardDrops(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	for _, tool := range []string{"ip", "nft", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install iproute2 nftables iptables): %v", tool, err)
		}
	}
	if out, _ := exec.Command("iptables", "--version").Output(); !strings.Contains(string(out), "nf_tables") {
		t.Skipf("iptables is not the nf_tables backend: %s", out)
	}
	ns := fmt.Sprintf("rt-nft-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	in := func(stdin string, argv ...string) []byte {
		t.Helper()
		cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v", argv, err)
		}
		return out
	}
	list := func() []string {
		t.Helper()
		drops, err := forwardDrops(in("", "nft", "-j", "list", "chains"))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range drops {
			got = append(got, c.String())
		}
		return got
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("a fresh namespace: %v", got)
	}
	in("", "iptables", "-P", "FORWARD", "DROP")
	in("table inet filter {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n"+
		"\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n"+
		"table inet mine {\n\tchain forward {\n\t\ttype filter hook forward priority filter - 5; policy accept;\n\t}\n}\n",
		"nft", "-f", "-")
	if got, want := list(), []string{"inet filter forward", "ip filter FORWARD"}; !slices.Equal(slices.Sorted(slices.Values(got)), want) {
		t.Errorf("forward drops %v, want %v", got, want)
	}
	// An accept chain in iptables' FORWARD gets past that one only.
	drops, err := forwardDrops(in("", "nft", "-j", "list", "chains"))
	if err != nil {
		t.Fatal(err)
	}
	if got := blocking(slices.Clone(drops), true); len(got) != 1 || got[0].String() != "inet filter forward" {
		t.Errorf("blocking with the iptables accept: %v", got)
	}
	if got := blocking(slices.Clone(drops), false); len(got) != 2 {
		t.Errorf("blocking without the iptables accept: %v", got)
	}
	if _, err := forwardDrops([]byte("not json")); err == nil {
		t.Error("garbage parsed")
	}
}

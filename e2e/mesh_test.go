package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

var (
	meshPrefix = netip.MustParsePrefix("172.24.0.0/16")
	podPrefix  = netip.MustParsePrefix("172.25.0.0/16")
)

const echoPort = 9000

// TestKernelMesh is the lab scenario of a kernel-mode cluster: three real
// agents in three namespaces on one LAN form a WireGuard mesh that carries
// ICMP and TCP between wg0 addresses and into each node's pod /24, survive
// a SIGKILL of their Raft leader, take the node back, and cut a removed
// node off.
func TestKernelMesh(t *testing.T) {
	t.Parallel()
	c := newCluster(t, "10.99.0.0/24", "a", "b", "c")
	all := c.nodes
	a, b, cn := all[0], all[1], all[2]

	// Form: init and run a; b and c join through a with one-time tokens,
	// then run.
	a.initCluster()
	a.start()
	b.join(a)
	cn.join(a)
	formStart := time.Now()
	b.start()
	cn.start()
	c.eventually(90*time.Second, "three-node mesh forms", func() error {
		return c.formed(all, nil, c.names(all))
	})
	t.Logf("mesh formed: 3 nodes healthy, all handshakes, 3 voters (%v after starting b and c)", time.Since(formStart).Round(time.Millisecond))

	mesh := map[string]netip.Addr{}   // node -> mesh IP
	pods := map[string]netip.Prefix{} // node -> pod CIDR
	var cluster string
	for _, n := range all {
		st, err := n.status()
		if err != nil {
			c.fatalf("%v", err)
		}
		ip, err1 := netip.ParseAddr(st.MeshIP)
		pod, err2 := netip.ParsePrefix(st.PodCIDR)
		if err1 != nil || err2 != nil || !meshPrefix.Contains(ip) || pod.Bits() != 24 || !podPrefix.Contains(pod.Addr()) || pod.Masked() != pod {
			c.fatalf("%s: mesh IP %q / pod CIDR %q: want a /32 in %v and a /24 in %v", n.name, st.MeshIP, st.PodCIDR, meshPrefix, podPrefix)
		}
		if st.Net != "kernel" {
			c.fatalf("%s runs in %q mode, want kernel", n.name, st.Net)
		}
		if cluster == "" {
			cluster = st.ClusterID
		} else if st.ClusterID != cluster {
			c.fatalf("%s is in cluster %q, a in %q", n.name, st.ClusterID, cluster)
		}
		for other, o := range mesh {
			if o == ip || pods[other].Overlaps(pod) {
				c.fatalf("%s and %s share addresses: %v %v / %v %v", n.name, other, ip, pod, o, pods[other])
			}
		}
		mesh[n.name], pods[n.name] = ip, pod
	}
	for _, n := range all {
		c.checkKernelLink(n, mesh[n.name], pods, others(all, n))
	}

	// Traffic: every node serves TCP echo on all its addresses and owns an
	// address inside its pod /24 (on lo); each reaches every other over wg0.
	podAddr := map[string]netip.Addr{}
	for _, n := range all {
		podAddr[n.name] = hostIn(pods[n.name], 10)
		if err := n.host.AddLoopbackAddr(netip.PrefixFrom(podAddr[n.name], 32)); err != nil {
			c.fatalf("%v", err)
		}
		c.startEcho(n)
	}
	for _, from := range all {
		for _, to := range others(all, from) {
			c.mustReach(from, to.name+" wg0", mesh[to.name], mesh[from.name])
			c.mustReach(from, to.name+" pod", podAddr[to.name], mesh[from.name])
		}
	}

	// SIGKILL the leader: the other two elect a new one and accept writes.
	leader := c.leader(all)
	st, err := leader.status()
	if err != nil {
		c.fatalf("%v", err)
	}
	term := st.Raft.Term
	t.Logf("killing the leader %s (term %d)", leader.name, term)
	leader.kill()
	survivors := others(all, leader)
	c.eventually(60*time.Second, "a survivor accepts a write", func() error {
		var errs []string
		for _, n := range survivors {
			if _, err := n.createToken("1m"); err != nil {
				errs = append(errs, err.Error())
				continue
			}
			return nil
		}
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	})
	var applied uint64 // what the survivors had applied after the write
	var newLeader string
	c.eventually(30*time.Second, "survivors agree on a new leader", func() error {
		var name string
		applied = 0
		for _, n := range survivors {
			st, err := n.status()
			if err != nil {
				return err
			}
			if st.Raft.Leader == "" || st.Raft.Leader == leader.name || (name != "" && st.Raft.Leader != name) {
				return fmt.Errorf("%s follows %q (term %d)", n.name, st.Raft.Leader, st.Raft.Term)
			}
			if st.Raft.Term <= term {
				return fmt.Errorf("%s is still in term %d", n.name, st.Raft.Term)
			}
			name = st.Raft.Leader
			applied = max(applied, st.Raft.AppliedIndex)
		}
		newLeader = name
		return nil
	})
	t.Logf("write accepted; new leader %s, applied index %d", newLeader, applied)
	c.eventually(60*time.Second, "survivors notice "+leader.name+" is gone", func() error {
		for _, n := range survivors {
			ns, err := n.nodes()
			if err != nil {
				return err
			}
			for _, x := range ns {
				if x.Name == leader.name && x.Health == "healthy" {
					return fmt.Errorf("%s still sees %s healthy", n.name, x.Name)
				}
			}
		}
		return nil
	})

	// Restart it from its data dir: it rejoins and catches up.
	restarted := time.Now()
	leader.start()
	c.eventually(90*time.Second, leader.name+" rejoins after restart", func() error {
		return c.formed(all, map[string]time.Time{leader.name: restarted}, c.names(all))
	})
	c.eventually(30*time.Second, leader.name+" catches up", func() error {
		st, err := leader.status()
		if err != nil {
			return err
		}
		if st.Raft.AppliedIndex < applied {
			return fmt.Errorf("%s applied index %d, the others were at %d", leader.name, st.Raft.AppliedIndex, applied)
		}
		return nil
	})
	t.Logf("%s rejoined and caught up (%v after restart)", leader.name, time.Since(restarted).Round(time.Millisecond))
	c.checkKernelLink(leader, mesh[leader.name], pods, survivors)
	for _, n := range survivors {
		c.mustReach(leader, n.name+" wg0", mesh[n.name], mesh[leader.name])
		c.mustReach(n, leader.name+" pod", podAddr[leader.name], mesh[n.name])
	}

	// Remove a follower through the other follower (a forwarded write):
	// the rest drop its peer and its routes, and cannot reach it any more.
	lead := c.leader(all)
	followers := others(all, lead)
	victim, via := followers[1], followers[0]
	out, err := via.cli("node", "remove", "--data-dir", via.dir, victim.name)
	if err != nil {
		c.fatalf("%v", err)
	}
	if strings.TrimSpace(out) != "removed node "+victim.name {
		c.fatalf("node remove said %q", out)
	}
	t.Logf("removed %s (leader %s, asked through %s)", victim.name, lead.name, via.name)
	rest := others(all, victim)
	c.eventually(30*time.Second, "the others drop "+victim.name, func() error {
		if err := c.formed(rest, nil, nil); err != nil {
			return err
		}
		for _, n := range rest {
			routes, err := n.host.Run("ip", "-4", "route", "show", pods[victim.name].String())
			if err != nil {
				return err
			}
			if routes != "" {
				return fmt.Errorf("%s still routes %s: %s", n.name, pods[victim.name], routes)
			}
		}
		return nil
	})
	for _, n := range rest {
		for _, to := range []netip.Addr{mesh[victim.name], podAddr[victim.name]} {
			if out, err := n.host.Run("ping", "-c", "1", "-W", "1", to.String()); err == nil {
				c.fatalf("%s still reaches removed node %s at %v: %s", n.name, victim.name, to, out)
			}
		}
	}
	if st, err := victim.status(); err == nil {
		// Not asserted: the removed node need not learn of its removal
		// (it is cut off before the entry reaches it).
		t.Logf("removed node %s's own view: raft %s, applied %d, %d WireGuard peers", victim.name, st.Raft.State, st.Raft.AppliedIndex, len(st.Peers))
	}
	// The cluster that is left still takes writes and still carries traffic.
	c.eventually(30*time.Second, "the rest accept a write", func() error {
		_, err := via.createToken("1m")
		return err
	})
	c.mustReach(rest[0], rest[1].name+" wg0", mesh[rest[1].name], mesh[rest[0].name])
	c.mustReach(rest[1], rest[0].name+" pod", podAddr[rest[0].name], mesh[rest[1].name])
}

// hostIn is address number i of an IPv4 prefix (172.25.3.0/24, 10: 172.25.3.10).
func hostIn(p netip.Prefix, i byte) netip.Addr {
	a := p.Masked().Addr().As4()
	a[3] += i
	return netip.AddrFrom4(a)
}

// checkKernelLink checks n's wg0: its mesh IP as a /32, the mesh /16 routed
// into it, and a route for each peer's pod /24 (but not its own).
func (c *cluster) checkKernelLink(n *agentNode, ip netip.Addr, pods map[string]netip.Prefix, peers []*agentNode) {
	c.t.Helper()
	c.eventually(10*time.Second, n.name+" wg0 is configured", func() error {
		addrs, err := n.host.Run("ip", "-4", "-o", "addr", "show", "dev", "wg0")
		if err != nil {
			return err
		}
		if !strings.Contains(addrs, " "+ip.String()+"/32 ") {
			return fmt.Errorf("%s wg0 lacks %v/32: %s", n.name, ip, addrs)
		}
		routes, err := n.host.Run("ip", "-4", "route", "show", "dev", "wg0")
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, line := range strings.Split(routes, "\n") {
			if f := strings.Fields(line); len(f) > 0 {
				have[f[0]] = true
			}
		}
		want := []string{meshPrefix.String()}
		for _, p := range peers {
			want = append(want, pods[p.name].String())
		}
		for _, w := range want {
			if !have[w] {
				return fmt.Errorf("%s: no route for %s into wg0: %q", n.name, w, routes)
			}
		}
		if have[pods[n.name].String()] {
			return fmt.Errorf("%s routes its own pod CIDR into wg0: %q", n.name, routes)
		}
		return nil
	})
}

// startEcho runs a TCP echo server on every address of n's namespace.
func (c *cluster) startEcho(n *agentNode) {
	c.t.Helper()
	c.startEchoOn(n.host, n.name)
}

// startEchoOn runs a TCP echo server on every address of h's namespace and
// returns once it listens, so a test's first dial is not refused.
func (c *cluster) startEchoOn(h *lab.Host, name string) {
	c.t.Helper()
	c.startEchoAt(h, name, fmt.Sprintf("0.0.0.0:%d", echoPort))
}

// startEchoAt runs a TCP echo server on listen in h's namespace and
// returns once it listens.
func (c *cluster) startEchoAt(h *lab.Host, name, listen string) {
	c.t.Helper()
	p := h.Start(c.t, "echo-"+name, helper(c.t, "echo-server", "LISTEN="+listen)...)
	c.eventually(10*time.Second, "echo server on "+name, func() error {
		select {
		case <-p.Done():
			return fmt.Errorf("echo server exited: %v: %s", p.Wait(), p.Output())
		default:
		}
		if !strings.Contains(p.Output(), "LISTENING") {
			return fmt.Errorf("not listening yet")
		}
		return nil
	})
}

// mustReach checks that from reaches addr (what names it) by ping and by TCP,
// and that the TCP server saw the connection come from src: from's mesh IP,
// so it went through wg0.
func (c *cluster) mustReach(from *agentNode, what string, addr, src netip.Addr) {
	c.t.Helper()
	c.eventually(10*time.Second, fmt.Sprintf("%s pings %s (%v)", from.name, what, addr), func() error {
		_, err := from.host.Run("ping", "-c", "1", "-W", "1", addr.String())
		return err
	})
	c.eventually(10*time.Second, fmt.Sprintf("%s talks TCP to %s (%v)", from.name, what, addr), func() error {
		msg := fmt.Sprintf("hello-%016x", rand.Uint64())
		out, err := from.host.Run(helper(c.t, "echo-client", "DIAL="+netip.AddrPortFrom(addr, echoPort).String(), "MSG="+msg)...)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		f := strings.Fields(out)
		if len(f) != 3 || f[0] != "FROM" || f[2] != msg {
			return fmt.Errorf("unexpected echo %q", out)
		}
		if ap, err := netip.ParseAddrPort(f[1]); err != nil || ap.Addr() != src {
			return fmt.Errorf("echo server saw the connection from %s, want %v (through wg0)", f[1], src)
		}
		return nil
	})
}

// TestCLIBadInput checks the CLI's answers to mistakes: a join with a wrong,
// malformed, foreign or spent token fails with one line and writes nothing;
// status without a running agent says so.
func TestCLIBadInput(t *testing.T) {
	t.Parallel()
	c := newCluster(t, "10.98.0.0/24", "a", "d")
	a, d := c.nodes[0], c.nodes[1]

	c.expectCLIError(d, "not running", "status", "--data-dir", d.dir) // no data dir at all
	a.initCluster()
	c.expectCLIError(a, "not running", "status", "--json", "--data-dir", a.dir) // initialised, never run
	a.start()
	c.eventually(60*time.Second, "single node is up", func() error {
		return c.formed([]*agentNode{a}, nil, []string{"a"})
	})

	tok, err := a.createToken("10m")
	if err != nil {
		c.fatalf("%v", err)
	}
	fp, cred, _ := strings.Cut(tok.Token, "::")
	id, secret, _ := strings.Cut(cred, ".")
	otherHex := func(s string) string { // same length, every digit different
		b := []byte(s)
		for i := range b {
			b[i] = "123456789abcdef0"[strings.IndexByte("0123456789abcdef", b[i])]
		}
		return string(b)
	}
	member := netip.AddrPortFrom(a.host.Addr(), listenPort).String()
	for _, tc := range []struct{ what, token, want string }{
		{"wrong secret", fp + "::" + id + "." + otherHex(secret), "join refused"},
		{"unknown token id", fp + "::" + otherHex(id) + "." + secret, "join refused"},
		{"malformed", "RO1not-a-token", "malformed join token"},
		{"another cluster's CA", "RO1" + otherHex(strings.TrimPrefix(fp, "RO1")) + "::" + id + "." + secret, "fingerprint mismatch"},
	} {
		t.Logf("join with %s", tc.what)
		c.expectCLIError(d, tc.want, "join", "--data-dir", d.dir, "--name", "d", "--net", "kernel", "--token", tc.token, member)
		c.expectUninitialised(d.dir)
	}
	c.expectCLIError(d, "not initialised", "run", "--data-dir", d.dir)

	// None of that spent the real token; it admits exactly one node.
	out, err := d.cli("join", "--data-dir", d.dir, "--name", "d", "--net", "kernel", "--token", tok.Token, member)
	if err != nil || !strings.Contains(out, "joined cluster") {
		c.fatalf("join with the real token after failed attempts: %v: %q", err, out)
	}
	second := filepath.Join(filepath.Dir(d.dir), "e")
	c.expectCLIError(d, "join refused", "join", "--data-dir", second, "--name", "e", "--net", "kernel", "--token", tok.Token, member)
	c.expectUninitialised(second)

	// A crashed agent leaves its socket behind: still "not running".
	a.kill()
	if _, err := os.Stat(filepath.Join(a.dir, "agent.sock")); err != nil {
		t.Logf("no stale socket after SIGKILL (%v)", err)
	}
	c.expectCLIError(a, "not running", "status", "--data-dir", a.dir)
	c.expectCLIError(a, "not running", "token", "create", "--data-dir", a.dir)
}

// expectCLIError runs the CLI in n's namespace and wants it to fail with
// exit status 1, nothing on stdout, and one line on stderr
// ("runos-agent: ...") containing want.
func (c *cluster) expectCLIError(n *agentNode, want string, args ...string) {
	c.t.Helper()
	stdout, stderr, err := n.exec(args...)
	cmd := "runos-agent " + strings.Join(args, " ")
	if err == nil {
		c.fatalf("%s succeeded, want an error; stdout %q", cmd, stdout)
	}
	msg := strings.TrimRight(stderr, "\n")
	switch {
	case strings.Contains(err.Error(), "signal"):
		c.fatalf("%s: %v, want a clean exit: %s", cmd, err, stderr)
	case stdout != "":
		c.fatalf("%s: printed %q to stdout on error", cmd, stdout)
	case msg == "" || strings.Contains(msg, "\n"):
		c.fatalf("%s: stderr is not one line: %q", cmd, stderr)
	case !strings.HasPrefix(msg, "runos-agent: "):
		c.fatalf("%s: error %q does not start with \"runos-agent: \"", cmd, msg)
	case !strings.Contains(msg, want):
		c.fatalf("%s: error %q does not mention %q", cmd, msg, want)
	}
	c.t.Logf("%s: %s", cmd, msg)
}

// expectUninitialised wants dir absent or empty.
func (c *cluster) expectUninitialised(dir string) {
	c.t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		c.fatalf("%v", err)
	}
	if len(entries) > 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		slices.Sort(names)
		c.fatalf("failed join left files in %s: %v", dir, names)
	}
}

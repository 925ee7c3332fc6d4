//go:build linux

package mesh

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The kernel-mode test builds a two-node lab out of network namespaces:
//
//	ns A (veth0 198.18.0.1/24, lo 172.25.1.1) <-veth-> ns B (veth0 198.18.0.2/24, lo 172.25.2.1)
//
// and re-executes this test binary inside each namespace as
// TestHelperKernelNode, which runs a kernel-mode Device (a real wg0) and
// answers commands on stdin. Nothing is ever configured in the namespace the
// test itself runs in: the veth pair is created directly inside the lab
// namespaces, and the helper refuses to start in the parent's namespace.

const (
	helperEnv       = "MESH_HELPER_NODE"
	helperParentNS  = "MESH_PARENT_NETNS"
	helperPrivate   = "MESH_PRIVATE_KEY"
	helperAddress   = "MESH_ADDRESS"
	helperPort      = "MESH_LISTEN_PORT"
	helperPeerKey   = "MESH_PEER_KEY"
	helperPeerEP    = "MESH_PEER_ENDPOINT"
	helperPeerAllow = "MESH_PEER_ALLOWED"
	helperReply     = "MESH-HELPER "
	echoPort        = 7000
)

func requireKernelLab(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel-mode test needs root (network namespaces, TUN, netlink)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("kernel-mode test needs /dev/net/tun: %v", err)
	}
	for _, tool := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("kernel-mode test needs %q (apt-get install iproute2 iputils-ping): %v", tool, err)
		}
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetns creates a namespace and deletes it when the test ends. Deleting
// it also destroys the veth end and wg0 inside, whatever state they are in.
func newNetns(t *testing.T, name string) {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
}

// helperProc is one TestHelperKernelNode process and its command channel.
type helperProc struct {
	t       *testing.T
	name    string
	stdin   io.WriteCloser
	replies chan string

	mu  sync.Mutex
	out bytes.Buffer // everything else it printed, shown if the test fails
}

func startHelper(t *testing.T, exe, ns string, env map[string]string) *helperProc {
	t.Helper()
	// exe is resolved by the caller: /proc/self/exe here would name ip(8).
	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^TestHelperKernelNode$", "-test.v", "-test.timeout=2m")
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()

	h := &helperProc{t: t, name: ns, stdin: stdin, replies: make(chan string, 16)}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(h.replies)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			if i := strings.Index(line, helperReply); i >= 0 {
				h.replies <- line[i+len(helperReply):]
				continue
			}
			h.mu.Lock()
			h.out.WriteString(line + "\n")
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		// Closing stdin asks the helper to close its Device and exit; a
		// helper that does not is killed.
		stdin.Close()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		var err error
		select {
		case err = <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			err = <-exited
		}
		// Drain replies nobody read so the reader can reach EOF.
		for range h.replies {
		}
		<-readDone
		pr.Close()
		if err != nil {
			t.Errorf("helper in %s: %v", ns, err)
		}
		if t.Failed() {
			h.mu.Lock()
			t.Logf("helper in %s output:\n%s", ns, h.out.String())
			h.mu.Unlock()
		}
	})
	if r := h.wait(); r != "ready" {
		t.Fatalf("helper in %s did not start: %q", ns, r)
	}
	return h
}

func (h *helperProc) wait() string {
	select {
	case r, ok := <-h.replies:
		if !ok {
			return "exited"
		}
		return r
	case <-time.After(60 * time.Second): // a hung helper, not a slow one
		return "timeout"
	}
}

// do sends one command and returns the helper's reply.
func (h *helperProc) do(cmd string) string {
	h.t.Helper()
	if _, err := fmt.Fprintln(h.stdin, cmd); err != nil {
		h.t.Fatalf("helper %s: send %q: %v", h.name, cmd, err)
	}
	return h.wait()
}

func (h *helperProc) mustDo(cmd string) string {
	h.t.Helper()
	r := h.do(cmd)
	if !strings.HasPrefix(r, "ok") {
		h.t.Fatalf("helper %s: %s: %s", h.name, cmd, r)
	}
	return r
}

// pingUntil pings dst from inside ns until it answers or ctx ends.
func pingUntil(ctx context.Context, t *testing.T, ns, dst string) {
	t.Helper()
	for {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", dst).CombinedOutput()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("ping %s from %s: %v\n%s", dst, ns, err, out)
		}
	}
}

func hasRoute(t *testing.T, ns, prefix string) bool {
	return strings.Contains(run(t, "ip", "-n", ns, "route", "show", prefix), "dev wg0")
}

func TestKernelMesh(t *testing.T) {
	requireKernelLab(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parentNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}

	nsA := fmt.Sprintf("rtest-%d-a", os.Getpid())
	nsB := fmt.Sprintf("rtest-%d-b", os.Getpid())
	newNetns(t, nsA)
	newNetns(t, nsB)
	run(t, "ip", "-n", nsA, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", nsB)
	for ns, addrs := range map[string][2]string{
		nsA: {"198.18.0.1/24", "172.25.1.1/32"},
		nsB: {"198.18.0.2/24", "172.25.2.1/32"},
	} {
		run(t, "ip", "-n", ns, "addr", "add", addrs[0], "dev", "veth0")
		run(t, "ip", "-n", ns, "link", "set", "veth0", "up")
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
		// A pod address on lo stands in for the node's pod /24 (this
		// kernel has no dummy interfaces).
		run(t, "ip", "-n", ns, "addr", "add", addrs[1], "dev", "lo")
	}
	// IPv6 on the underlay, which the mesh guard must leave alone.
	run(t, "ip", "-n", nsA, "addr", "add", "fd00::1/64", "dev", "veth0", "nodad")
	run(t, "ip", "-n", nsB, "addr", "add", "fd00::2/64", "dev", "veth0", "nodad")

	keyA, _ := GeneratePrivateKey()
	keyB, _ := GeneratePrivateKey()
	node := func(priv, peer Key, addr, peerEP, peerAllowed string) map[string]string {
		return map[string]string{
			helperEnv:       "1",
			helperParentNS:  parentNS,
			helperPrivate:   priv.String(),
			helperAddress:   addr,
			helperPort:      "51820",
			helperPeerKey:   peer.PublicKey().String(),
			helperPeerEP:    peerEP,
			helperPeerAllow: peerAllowed,
		}
	}
	a := startHelper(t, exe, nsA, node(keyA, keyB, "172.24.0.1", "198.18.0.2:51820", "172.24.0.2/32,172.25.2.0/24"))
	b := startHelper(t, exe, nsB, node(keyB, keyA, "172.24.0.2", "198.18.0.1:51820", "172.24.0.1/32,172.25.1.0/24"))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// ICMP through the kernel: mesh IPs and the peers' pod addresses.
	pingUntil(ctx, t, nsA, "172.24.0.2")
	pingUntil(ctx, t, nsA, "172.25.2.1")
	pingUntil(ctx, t, nsB, "172.24.0.1")
	pingUntil(ctx, t, nsB, "172.25.1.1")

	// TCP through Device.Net() (HostNet, sourced from the mesh IP).
	for _, c := range []struct {
		h   *helperProc
		dst string
	}{{a, "172.24.0.2"}, {a, "172.25.2.1"}, {b, "172.24.0.1"}, {b, "172.25.1.1"}} {
		c.h.mustDo(fmt.Sprintf("dial %s:%d", c.dst, echoPort))
	}

	if r := a.mustDo("stats"); !strings.Contains(r, "handshake=true") || strings.Contains(r, "rx=0 ") {
		t.Fatalf("stats on a: %s", r)
	}
	if !hasRoute(t, nsA, "172.25.2.0/24") || !hasRoute(t, nsA, "172.24.0.0/16") {
		t.Fatalf("routes in %s:\n%s", nsA, run(t, "ip", "-n", nsA, "route"))
	}
	if hasRoute(t, nsA, "172.25.1.0/24") {
		t.Fatalf("a routes its own pod /24 into wg0:\n%s", run(t, "ip", "-n", nsA, "route"))
	}

	// Removing the peer removes its pod route and cuts the path.
	a.mustDo("peers none")
	if hasRoute(t, nsA, "172.25.2.0/24") {
		t.Fatalf("pod route survived peer removal:\n%s", run(t, "ip", "-n", nsA, "route"))
	}
	if r := a.do(fmt.Sprintf("dial 172.24.0.2:%d 500ms", echoPort)); strings.HasPrefix(r, "ok") {
		t.Fatal("dial to a removed peer succeeded")
	}
	// ... and re-adding restores both.
	a.mustDo("peers all")
	if !hasRoute(t, nsA, "172.25.2.0/24") {
		t.Fatalf("pod route not restored:\n%s", run(t, "ip", "-n", nsA, "route"))
	}
	a.mustDo(fmt.Sprintf("dial 172.25.2.1:%d", echoPort))

	// The mesh IP is guarded while the device is up (the attack itself is
	// e2e's TestAttackMeshIPThroughTheLAN), and the guard touches nothing
	// else: b still reaches a's underlay address over IPv4 and IPv6.
	if _, err := exec.LookPath("nft"); err == nil {
		if out, err := exec.Command("ip", "netns", "exec", nsA, "nft", "list", "table", "ip", GuardTable).CombinedOutput(); err != nil {
			t.Fatalf("no guard table while the device is up: %v: %s", err, out)
		}
	}
	iptablesInput := func() string {
		out, _ := exec.Command("ip", "netns", "exec", nsA, "iptables", "-S", "INPUT").CombinedOutput()
		return string(out)
	}
	_, noIPTables := exec.LookPath("iptables")
	if noIPTables == nil && !strings.Contains(iptablesInput(), "-A INPUT -j RUNOS-MESH") {
		t.Fatalf("INPUT does not jump to RUNOS-MESH while the device is up:\n%s", iptablesInput())
	}
	for _, dst := range []string{"198.18.0.1", "fd00::1"} {
		if out, err := exec.Command("ip", "netns", "exec", nsB, "ping", "-n", "-c", "1", "-W", "2", dst).CombinedOutput(); err != nil {
			t.Fatalf("b pings a's underlay address %s with the guard up: %v\n%s", dst, err, out)
		}
	}

	// Close takes the interface, and the guard, away.
	a.mustDo("close")
	if out, err := exec.Command("ip", "-n", nsA, "link", "show", "wg0").CombinedOutput(); err == nil {
		t.Fatalf("wg0 still exists after Close:\n%s", out)
	}
	if out, err := exec.Command("ip", "netns", "exec", nsA, "nft", "list", "table", "ip", GuardTable).CombinedOutput(); err == nil {
		t.Fatalf("the guard table is left after Close:\n%s", out)
	}
	if in := iptablesInput(); strings.Contains(in, "RUNOS-MESH") {
		t.Fatalf("the iptables chain is left after Close:\n%s", in)
	}
}

// TestHelperKernelNode is not a test on its own: TestKernelMesh runs it
// inside a lab namespace. It brings up a kernel-mode Device with one peer,
// serves a TCP echo on every address, and then answers commands, one per
// line on stdin, with one "MESH-HELPER ..." line on stdout:
//
//	dial ADDR [D]  TCP echo to ADDR through Device.Net() within D (default 5s)
//	stats          handshake and counters of the peer
//	peers none     SetPeers(nil)
//	peers all      SetPeers with the configured peer
//	close          Device.Close
//
// End of stdin closes the Device and ends the test.
func TestHelperKernelNode(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process for TestKernelMesh")
	}
	if ns, _ := os.Readlink("/proc/self/ns/net"); ns == "" || ns == os.Getenv(helperParentNS) {
		t.Fatalf("refusing to create a kernel device in the parent's network namespace (%q)", ns)
	}
	reply := func(format string, args ...any) { fmt.Printf(helperReply+format+"\n", args...) }

	priv, err := ParseKey(os.Getenv(helperPrivate))
	if err != nil {
		t.Fatal(err)
	}
	peerKey, err := ParseKey(os.Getenv(helperPeerKey))
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(os.Getenv(helperPort))
	peer := Peer{
		PublicKey:           peerKey,
		Endpoint:            netip.MustParseAddrPort(os.Getenv(helperPeerEP)),
		PersistentKeepalive: 25 * time.Second,
	}
	for _, p := range strings.Split(os.Getenv(helperPeerAllow), ",") {
		peer.AllowedIPs = append(peer.AllowedIPs, netip.MustParsePrefix(p))
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := New(Config{
		Mode:       ModeKernel,
		PrivateKey: priv,
		ListenPort: port,
		Address:    netip.MustParseAddr(os.Getenv(helperAddress)),
		Guard:      true,
		Inside:     []netip.Prefix{netip.MustParsePrefix("172.25.0.0/16")},
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if d.InterfaceName() != "wg0" || d.ListenPort() != port {
		t.Fatalf("interface %q port %d", d.InterfaceName(), d.ListenPort())
	}
	if err := d.SetPeers([]Peer{peer}); err != nil {
		t.Fatal(err)
	}
	ln, err := d.Net().Listen("tcp", fmt.Sprintf("0.0.0.0:%d", echoPort))
	if err != nil {
		t.Fatal(err)
	}
	startEcho(t, ln)
	reply("ready")

	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		verb, arg, _ := strings.Cut(sc.Text(), " ")
		var err error
		var extra string
		switch verb {
		case "dial":
			addr, budget, _ := strings.Cut(arg, " ")
			timeout := 5 * time.Second
			if budget != "" {
				if timeout, err = time.ParseDuration(budget); err != nil {
					break
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			err = echo(ctx, d.Net(), addr)
			cancel()
		case "stats":
			var st []PeerStats
			if st, err = d.Stats(); err == nil {
				for _, s := range st {
					extra += fmt.Sprintf(" peer=%s handshake=%t rx=%d tx=%d ", s.PublicKey, !s.LastHandshake.IsZero(), s.RxBytes, s.TxBytes)
				}
			}
		case "peers":
			if arg == "all" {
				err = d.SetPeers([]Peer{peer})
			} else {
				err = d.SetPeers(nil)
			}
		case "close":
			err = d.Close()
		default:
			err = fmt.Errorf("unknown command %q", verb)
		}
		if err != nil {
			reply("err %v", err)
		} else {
			reply("ok%s", extra)
		}
	}
}

// Package lab builds throwaway network topologies out of Linux network
// namespaces for end-to-end tests, in the spirit of tailscale's natlab but with
// the real kernel: switches are bridges, hosts and routers are namespaces
// joined to them by veth pairs, and routers do nftables masquerade with a
// home-router firewall.
//
//	l := lab.New(t)
//	inet := l.Internet(netip.MustParsePrefix("198.18.0.0/24"))
//	home := l.LAN("home", netip.MustParsePrefix("192.168.1.0/24"))
//	l.Router("r1", inet, home, lab.NATEasy)
//	a := l.Host("a", home)
//	out, err := a.Run("ping", "-c1", "198.18.0.1")
//
// Every namespace lives in its own name space ("rl<pid>-<rand>-<name>"), is
// deleted by t.Cleanup, and never touches the root namespace beyond being
// created there. Traffic cannot leave the lab: no link reaches the root
// namespace. Sweep removes namespaces left behind by processes that died.
//
// Constructors (LAN, Internet, Host, Router) fail the test on error; actions
// (Run, Block, SetWANAddr, ...) return errors.
package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// Lab is one test's topology. It is safe for use by one test goroutine; the
// Hosts and Routers it returns may be used from several goroutines.
type Lab struct {
	t      testing.TB
	prefix string // "rl<pid>-<rand>-", unique per Lab

	mu    sync.Mutex
	names map[string]bool
}

var (
	checkOnce sync.Once
	checkErr  error

	// Lab ids: random per process (so a reused pid still gets new names),
	// sequential within it (so labs in one process never collide).
	labBase = rand.Uint32()
	labSeq  atomic.Uint32
)

// New returns an empty lab. It skips the test when the machine cannot run
// one (not root, `ip` or `nft` missing, namespaces not permitted), unless the
// environment has CI=true or RUNOS_LAB_REQUIRED=1, in which case it fails
// instead: CI must never skip the lab silently.
//
// The first New in a process also sweeps namespaces left by dead processes.
func New(t testing.TB) *Lab {
	t.Helper()
	checkOnce.Do(func() {
		checkErr = check()
		if checkErr == nil {
			if err := Sweep(); err != nil {
				fmt.Fprintf(os.Stderr, "lab: sweeping stale namespaces: %v\n", err)
			}
		}
	})
	if checkErr != nil {
		if Required() {
			t.Fatalf("lab: %v (the lab is required here because CI=true or RUNOS_LAB_REQUIRED=1; run scripts/test-deps.sh as root)", checkErr)
		}
		t.Skipf("lab: skipping: %v (run as root after scripts/test-deps.sh; set RUNOS_LAB_REQUIRED=1 to fail instead)", checkErr)
	}
	l := &Lab{
		t:      t,
		prefix: fmt.Sprintf("%s%d-%04x-", nsPrefix, os.Getpid(), (labBase+labSeq.Add(1))&0xffff),
		names:  map[string]bool{},
	}
	// Registered first, so it runs after every other cleanup of this lab.
	t.Cleanup(func() {
		if left := append(namespacesWithPrefix(l.prefix), kubeLeftovers(l.prefix)...); len(left) > 0 {
			t.Errorf("lab: namespaces left after cleanup: %v", left)
		}
	})
	return l
}

// Required reports whether the environment demands that lab tests run rather
// than skip (CI=true or RUNOS_LAB_REQUIRED=1).
func Required() bool {
	return os.Getenv("CI") == "true" || os.Getenv("RUNOS_LAB_REQUIRED") == "1"
}

func check() error {
	if os.Geteuid() != 0 {
		return errors.New("not running as root")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found in PATH", tool)
		}
	}
	probe := fmt.Sprintf("%s%d-%04x-probe", nsPrefix, os.Getpid(), rand.Uint32()&0xffff)
	if _, err := run("ip", "netns", "add", probe); err != nil {
		return fmt.Errorf("cannot create network namespaces: %w", err)
	}
	if _, err := run("ip", "netns", "del", probe); err != nil {
		return fmt.Errorf("cannot delete network namespaces: %w", err)
	}
	return nil
}

// Prefix is the namespace-name prefix of this lab ("rl<pid>-<rand>-").
func (l *Lab) Prefix() string { return l.prefix }

// netns creates the namespace for a lab object and registers its deletion.
func (l *Lab) netns(name string) string {
	l.t.Helper()
	l.mu.Lock()
	dup := l.names[name]
	l.names[name] = true
	l.mu.Unlock()
	if dup {
		l.t.Fatalf("lab: duplicate name %q", name)
	}
	ns := l.prefix + name
	if _, err := run("ip", "netns", "add", ns); err != nil {
		l.t.Fatalf("lab: %v", err)
	}
	l.t.Cleanup(func() {
		if err := deleteNetns(ns); err != nil {
			l.t.Errorf("lab: %v", err)
		}
	})
	l.must(run("ip", "-n", ns, "link", "set", "lo", "up"))
	return ns
}

func (l *Lab) must(_ string, err error) {
	l.t.Helper()
	if err != nil {
		l.t.Fatalf("lab: %v", err)
	}
}

// run executes a command and returns its combined, trimmed output; the error
// names the command and carries the output.
func run(args ...string) (string, error) {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, s)
	}
	return s, nil
}

// runStdin is run with the given standard input (for `nft -f -`).
func runStdin(stdin string, args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, s)
	}
	return s, nil
}

// deleteNetns kills whatever still runs inside ns, then deletes it.
func deleteNetns(ns string) error {
	if out, err := run("ip", "netns", "pids", ns); err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	_, err := run("ip", "netns", "del", ns)
	if _, serr := os.Stat("/run/netns/" + ns); err != nil && errors.Is(serr, fs.ErrNotExist) {
		return nil // gone: another sweep (a parallel test's) got there first
	}
	return err
}

const nsPrefix = "rl"

// labNS matches lab namespace names and captures the owner's pid.
var labNS = regexp.MustCompile(`^` + nsPrefix + `(\d+)-[0-9a-f]{4}-`)

// namespaces lists the names of all network namespaces known to `ip netns`.
func namespaces() []string {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func namespacesWithPrefix(prefix string) []string {
	var out []string
	for _, n := range namespaces() {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// Leftovers lists the lab namespaces owned by this process, and the cgroups
// and directories of its kube nodes. After all tests have cleaned up it must
// be empty (check it in TestMain).
func Leftovers() []string {
	prefix := fmt.Sprintf("%s%d-", nsPrefix, os.Getpid())
	return append(namespacesWithPrefix(prefix), kubeLeftovers(prefix)...)
}

// Sweep deletes lab namespaces whose owning process (the pid in the name) is
// gone, killing anything still running inside them, and what their kube
// nodes left: processes (daemons and pods included), cgroups, directories.
// It leaves those of live processes alone, so parallel test runs are safe.
func Sweep() error {
	var errs []error
	for _, n := range kubeNodeNames() {
		m := labNS.FindStringSubmatch(n)
		if pid, err := strconv.Atoi(m[1]); err != nil || pidAlive(pid) {
			continue
		}
		if err := sweepKubeNode(n); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range namespaces() {
		m := labNS.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pidAlive(pid) {
			continue
		}
		if err := deleteNetns(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// allowed are the ranges a lab may use: private and benchmarking ranges only,
// and only ever inside the lab's own namespaces.
var allowed = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("fc00::/7"),
}

// internetRanges are what Internet accepts: the benchmarking range (and ULA
// for IPv6), so lab "public" addresses can never be mistaken for real ones.
var internetRanges = []netip.Prefix{
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("fc00::/7"),
}

func within(p netip.Prefix, ranges []netip.Prefix) bool {
	for _, r := range ranges {
		if r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

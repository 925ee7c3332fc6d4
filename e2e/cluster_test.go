package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

// The CLI's JSON, declared here from the documented contract (field names
// only; the agent may add fields) rather than borrowed from package api, so
// a renamed field fails these tests.
type statusJSON struct {
	Name      string `json:"name"`
	ClusterID string `json:"cluster_id"`
	MeshIP    string `json:"mesh_ip"`
	PodCIDR   string `json:"pod_cidr"`
	Net       string `json:"net"`
	Raft      struct {
		State        string   `json:"state"`
		Leader       string   `json:"leader"`
		Term         uint64   `json:"term"`
		AppliedIndex uint64   `json:"applied_index"`
		Voters       []string `json:"voters"`
	} `json:"raft"`
	Peers []peerJSON `json:"peers"`
}

type peerJSON struct {
	Name                 string  `json:"name"`
	MeshIP               string  `json:"mesh_ip"`
	Endpoint             string  `json:"endpoint"`
	LastHandshakeSeconds float64 `json:"last_handshake_seconds"` // -1: never
	RxBytes              uint64  `json:"rx_bytes"`
	TxBytes              uint64  `json:"tx_bytes"`
}

type nodeJSON struct {
	Name     string `json:"name"`
	ID       string `json:"id"`
	MeshIP   string `json:"mesh_ip"`
	PodCIDR  string `json:"pod_cidr"`
	Health   string `json:"health"`
	RaftRole string `json:"raft_role"`
	Version  string `json:"version"`
}

type tokenJSON struct {
	Token       string    `json:"token"`
	ExpiresAt   time.Time `json:"expires_at"`
	JoinCommand string    `json:"join_command"`
}

const listenPort = 51820

// cluster is a set of runos-agent nodes, each alone in a lab namespace on
// one LAN, in kernel mode.
type cluster struct {
	t     testing.TB
	bin   string
	lab   *lab.Lab
	lan   *lab.Segment
	nodes []*agentNode

	dumpOnce sync.Once
	// dumpMore, if set, adds to dump what a kind of cluster knows more
	// about (kubeCluster: Kubernetes).
	dumpMore func()
}

// agentNode is one node: its namespace, its data dir and its current `run`.
type agentNode struct {
	c    *cluster
	name string
	host *lab.Host
	dir  string

	mu    sync.Mutex
	proc  *lab.Proc   // the current `run`; nil while stopped
	procs []*lab.Proc // every `run`, for the logs
}

// newCluster creates one namespace per name on a LAN with the given prefix.
// Nothing runs yet.
func newCluster(t testing.TB, subnet string, names ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, lab: lab.New(t)}
	c.bin = agentBin(t)
	c.lan = c.lab.LAN("lan", netip.MustParsePrefix(subnet))
	dirs := t.TempDir()
	for _, name := range names {
		c.nodes = append(c.nodes, &agentNode{c: c, name: name, host: c.lab.Host(name, c.lan), dir: filepath.Join(dirs, name)})
	}
	return c
}

func (c *cluster) node(name string) *agentNode {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	c.fatalf("no node %q", name)
	return nil
}

func (c *cluster) names(nodes []*agentNode) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.name)
	}
	slices.Sort(out)
	return out
}

// fatalf dumps every node's view and log tail, then fails the test.
func (c *cluster) fatalf(format string, args ...any) {
	c.t.Helper()
	c.dump()
	c.t.Fatalf(format, args...)
}

// dump writes, once, what each node reports and the tail of its logs: the
// state at the moment of failure, before cleanup kills the agents.
func (c *cluster) dump() {
	c.dumpOnce.Do(func() {
		for _, n := range c.nodes {
			n.mu.Lock()
			procs, running := slices.Clone(n.procs), n.proc != nil
			n.mu.Unlock()
			if running {
				st, _ := n.cli("status", "--json", "--data-dir", n.dir)
				nodes, _ := n.cli("nodes", "--json", "--data-dir", n.dir)
				c.t.Logf("node %s: status:\n%s\nnodes:\n%s", n.name, st, nodes)
			}
			for i, p := range procs {
				c.t.Logf("node %s: run #%d (%s) log tail:\n%s", n.name, i+1, p.LogPath(), p.Tail(60))
			}
		}
		if c.dumpMore != nil {
			c.dumpMore()
		}
	})
}

// exec runs the CLI inside the node's namespace and returns stdout and
// stderr separately; err is the exit error.
func (n *agentNode) exec(args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.host.Namespace(), n.c.bin}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// cli is exec with stderr folded into the error.
func (n *agentNode) cli(args ...string) (string, error) {
	out, errOut, err := n.exec(args...)
	if err != nil {
		return out, fmt.Errorf("%s: runos-agent %s: %v: %s", n.name, strings.Join(args, " "), err, strings.TrimSpace(errOut))
	}
	return out, nil
}

func (n *agentNode) cliJSON(v any, args ...string) error {
	out, err := n.cli(args...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("%s: runos-agent %s: bad JSON: %v: %q", n.name, strings.Join(args, " "), err, out)
	}
	return nil
}

func (n *agentNode) status() (*statusJSON, error) {
	var s statusJSON
	return &s, n.cliJSON(&s, "status", "--json", "--data-dir", n.dir)
}

func (n *agentNode) nodes() ([]nodeJSON, error) {
	var ns []nodeJSON
	return ns, n.cliJSON(&ns, "nodes", "--json", "--data-dir", n.dir)
}

func (n *agentNode) createToken(ttl string) (*tokenJSON, error) {
	var tok tokenJSON
	if err := n.cliJSON(&tok, "token", "create", "--json", "--ttl", ttl, "--data-dir", n.dir); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(tok.Token, "RO1") || !strings.Contains(tok.JoinCommand, tok.Token) || !tok.ExpiresAt.After(time.Now()) {
		return nil, fmt.Errorf("%s: token create: implausible answer %+v", n.name, tok)
	}
	return &tok, nil
}

// initCluster runs `init` (kernel mode, advertising the LAN address).
func (n *agentNode) initCluster() {
	n.c.t.Helper()
	out, err := n.cli("init", "--data-dir", n.dir, "--name", n.name, "--net", "kernel", "--advertise", n.host.Addr().String())
	if err != nil {
		n.c.fatalf("%v", err)
	}
	if !strings.Contains(out, "initialised cluster") {
		n.c.fatalf("%s: init said %q", n.name, out)
	}
}

// join admits n through member with a fresh one-time token from member. The
// joiner advertises its interface addresses (the default).
func (n *agentNode) join(member *agentNode) {
	n.c.t.Helper()
	tok, err := member.createToken("10m")
	if err != nil {
		n.c.fatalf("%v", err)
	}
	out, err := n.cli("join", "--data-dir", n.dir, "--name", n.name, "--net", "kernel", "--token", tok.Token,
		netip.AddrPortFrom(member.host.Addr(), listenPort).String())
	if err != nil {
		n.c.fatalf("%v", err)
	}
	if !strings.Contains(out, "joined cluster") {
		n.c.fatalf("%s: join said %q", n.name, out)
	}
}

// start launches `run` on the data dir and returns once the local API
// answers.
func (n *agentNode) start() {
	n.c.t.Helper()
	n.startNoWait()
	n.c.eventually(30*time.Second, n.name+" answers status", func() error {
		if p := n.current(); p != nil {
			select {
			case <-p.Done():
				return fmt.Errorf("%s: run exited: %v", n.name, p.Wait())
			default:
			}
		}
		_, err := n.status()
		return err
	})
}

func (n *agentNode) startNoWait() {
	n.c.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil {
		n.c.t.Fatalf("%s is already running", n.name)
	}
	p := n.host.Start(n.c.t, fmt.Sprintf("agent-%s-%d", n.name, len(n.procs)+1), n.c.bin, "run", "--data-dir", n.dir)
	n.proc = p
	n.procs = append(n.procs, p)
}

func (n *agentNode) current() *lab.Proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// stop sends SIGTERM (a clean shutdown) and waits for the process to
// exit.
func (n *agentNode) stop() {
	n.c.t.Helper()
	n.end(syscall.SIGTERM, 30*time.Second)
}

// kill sends SIGKILL (no clean shutdown, no gossip leave) and waits for the
// process to be gone.
func (n *agentNode) kill() {
	n.c.t.Helper()
	n.end(syscall.SIGKILL, 10*time.Second)
}

// end sends sig to the running process, if any, and waits for it to exit.
func (n *agentNode) end(sig syscall.Signal, within time.Duration) {
	n.c.t.Helper()
	n.mu.Lock()
	p := n.proc
	n.proc = nil
	n.mu.Unlock()
	if p == nil {
		return
	}
	if err := p.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		n.c.fatalf("%v to %s: %v", sig, n.name, err)
	}
	select {
	case <-p.Done():
	case <-time.After(within):
		n.c.fatalf("%s still runs %v after %v", n.name, within, sig)
	}
}

// eventually polls f until it returns nil, and fails the test with f's last
// error after timeout.
func (c *cluster) eventually(timeout time.Duration, what string, f func() error) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.fatalf("%s: still not so after %v: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// formed reports nil once every node in members agrees the cluster is
// exactly members: `nodes` lists them all healthy, `status` has a WireGuard
// handshake with every other member, one leader, and voters equal to
// wantVoters (if not nil). A handshake involving a node named in fresh must
// be newer than the time given for it (handshakes from before a restart do
// not count).
func (c *cluster) formed(members []*agentNode, fresh map[string]time.Time, wantVoters []string) error {
	want := c.names(members)
	var leader string
	for _, n := range members {
		ns, err := n.nodes()
		if err != nil {
			return err
		}
		var got []string
		for _, x := range ns {
			got = append(got, x.Name)
			if x.Health != "healthy" {
				return fmt.Errorf("%s sees %s %s", n.name, x.Name, x.Health)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s lists nodes %v, want %v", n.name, got, want)
		}

		st, err := n.status()
		if err != nil {
			return err
		}
		asked := time.Now()
		var peers []string
		for _, p := range st.Peers {
			peers = append(peers, p.Name)
			if p.LastHandshakeSeconds < 0 {
				return fmt.Errorf("%s: no handshake with %s yet", n.name, p.Name)
			}
			since := fresh[n.name]
			if t := fresh[p.Name]; t.After(since) {
				since = t
			}
			if !since.IsZero() && p.LastHandshakeSeconds > asked.Sub(since).Seconds() {
				return fmt.Errorf("%s: last handshake with %s is %.1fs old, from before %v", n.name, p.Name, p.LastHandshakeSeconds, since.Format(time.TimeOnly))
			}
		}
		slices.Sort(peers)
		if others := slices.DeleteFunc(slices.Clone(want), func(s string) bool { return s == n.name }); !slices.Equal(peers, others) {
			return fmt.Errorf("%s has WireGuard peers %v, want %v", n.name, peers, others)
		}
		if st.Raft.Leader == "" {
			return fmt.Errorf("%s knows no raft leader (state %s)", n.name, st.Raft.State)
		}
		if leader == "" {
			leader = st.Raft.Leader
		} else if st.Raft.Leader != leader {
			return fmt.Errorf("%s follows %s, others %s", n.name, st.Raft.Leader, leader)
		}
		if wantVoters != nil {
			v := slices.Sorted(slices.Values(st.Raft.Voters))
			if !slices.Equal(v, wantVoters) {
				return fmt.Errorf("%s: raft voters %v, want %v", n.name, v, wantVoters)
			}
		}
	}
	return nil
}

// others is members without the given nodes.
func others(members []*agentNode, without ...*agentNode) []*agentNode {
	return slices.DeleteFunc(slices.Clone(members), func(n *agentNode) bool { return slices.Contains(without, n) })
}

// leader is the raft leader all running members agree on.
func (c *cluster) leader(members []*agentNode) *agentNode {
	c.t.Helper()
	var name string
	c.eventually(30*time.Second, "members agree on a leader", func() error {
		name = ""
		for _, n := range members {
			st, err := n.status()
			if err != nil {
				return err
			}
			if st.Raft.Leader == "" || (name != "" && st.Raft.Leader != name) {
				return fmt.Errorf("%s follows %q, others %q", n.name, st.Raft.Leader, name)
			}
			name = st.Raft.Leader
		}
		return nil
	})
	return c.node(name)
}

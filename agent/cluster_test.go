package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/nat/bindtest"
	"github.com/runos/runos-agent/raftstore"
)

// fastTuning is every test cluster's timing (TestMain, with goroutine leak
// checks, is in main_ext_test.go: it uses agenttest's options).
var fastTuning = FastTuning()

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("RUNOS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// cluster is the package's own in-process test cluster, for tests that
// need the agent's internals; tests of the public API use agenttest. Nodes
// run on real loopback UDP sockets (benchmarks measure them), each wrapped
// so that it can be cut for a crash.
type cluster struct {
	tb testing.TB
	dc *DevCluster
	// agents and dirs alias dc.Agents and dc.Dirs (re-read after addNode).
	agents []*Agent // nil while stopped
	dirs   []string
	binds  map[int]*bindtest.Cuttable // each node's underlay of its current start
	// afterApply is every node's Deps.AfterWorkloadApply, set by a test
	// while the cluster runs.
	afterApply atomic.Pointer[func(ctx context.Context, osid string)]
}

func newCluster(t testing.TB, n int) *cluster {
	t.Helper()
	return newClusterTuned(t, n, fastTuning)
}

func newClusterTuned(t testing.TB, n int, tuning Tuning) *cluster {
	t.Helper()
	c := &cluster{tb: t, binds: map[int]*bindtest.Cuttable{}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := StartDev(ctx, DevOptions{Nodes: n, Dir: t.TempDir(), Tuning: tuning, Node: c.place}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	c.dc, c.agents, c.dirs = dc, dc.Agents, dc.Dirs
	t.Cleanup(func() { dc.Close() })
	c.waitFormed(n)
	c.waitVoters(n)
	return c
}

func (c *cluster) place(i int) DevNode {
	return DevNode{Deps: c.deps(i)}
}

// deps are node i's dependencies for one start: a fresh, uncut socket.
func (c *cluster) deps(i int) Deps {
	b := bindtest.NewCuttable(conn.NewStdNetBind())
	c.binds[i] = b
	return Deps{Log: testLogger(c.tb), Underlay: b, AfterWorkloadApply: func(ctx context.Context, osid string) {
		if f := c.afterApply.Load(); f != nil {
			(*f)(ctx, osid)
		}
	}}
}

// cut silences node i's socket; stopping it then is a crash.
func (c *cluster) cut(i int) { c.binds[i].Cut() }

// waitVoters waits until the leader has chosen the voter set for n live
// nodes and every running node has that configuration: a node that missed
// it would refuse the votes of voters it does not know of, should the
// leader die next.
func (c *cluster) waitVoters(n int) {
	c.tb.Helper()
	want := min(n, 5)
	if want%2 == 0 {
		want--
	}
	eventually(c.tb, "voters chosen", func() error {
		l := c.leader()
		if l == nil {
			return errors.New("no leader")
		}
		if v := voters(l); v != want {
			return fmt.Errorf("%d voters, want %d", v, want)
		}
		for _, a := range c.running() {
			if got, lv := a.store.Status().Voters, l.store.Status().Voters; !slices.Equal(got, lv) {
				return fmt.Errorf("%s has voters %v, the leader %v", a.Name(), got, lv)
			}
		}
		return nil
	})
}

func (c *cluster) stop(i int) {
	c.tb.Helper()
	c.dc.StopNode(i)
}

// restartWith stops node i cleanly (if it runs) and starts it again from
// its data dir, its config changed by mod.
func (c *cluster) restartWith(i int, mod func(*Config)) *Agent {
	c.tb.Helper()
	c.stop(i)
	cfg := c.dc.Config(i)
	mod(&cfg)
	a, err := New(cfg, c.deps(i))
	if err != nil {
		c.tb.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		c.tb.Fatal(err)
	}
	c.agents[i] = a
	return a
}

func (c *cluster) start(i int) {
	c.tb.Helper()
	if _, err := c.dc.StartNode(context.Background(), i); err != nil {
		c.tb.Fatal(err)
	}
}

func (c *cluster) running() []*Agent {
	var out []*Agent
	for _, a := range c.agents {
		if a != nil {
			out = append(out, a)
		}
	}
	return out
}

// eventually polls cond until it holds or the deadline passes. The deadline
// is a safety net for a hung test, not a performance assertion.
func eventually(t testing.TB, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

func (c *cluster) leader() *Agent {
	for _, a := range c.running() {
		if a.store.IsLeader() {
			return a
		}
	}
	return nil
}

// waitLeader is the leader once there is one: right after a crash or under
// load a test may look between two terms, when leader() is nil.
func (c *cluster) waitLeader() *Agent {
	c.tb.Helper()
	var l *Agent
	eventually(c.tb, "a leader", func() error {
		if l = c.leader(); l == nil {
			return errors.New("no leader")
		}
		return nil
	})
	return l
}

func (c *cluster) follower() *Agent {
	for _, a := range c.running() {
		if !a.store.IsLeader() {
			return a
		}
	}
	return nil
}

// waitFormed waits until every running node sees n nodes, all healthy, one
// leader, and WireGuard handshakes with every running peer.
func (c *cluster) waitFormed(n int) {
	c.tb.Helper()
	running := c.running()
	eventually(c.tb, "cluster formed", func() error {
		leaders := 0
		for _, a := range running {
			if a.store.IsLeader() {
				leaders++
			}
			nodes := a.Nodes().Nodes
			if len(nodes) != n {
				return fmt.Errorf("%s sees %d nodes, want %d", a.Name(), len(nodes), n)
			}
			for _, x := range nodes {
				if x.Health != api.Healthy && c.isRunning(x.Name) {
					return fmt.Errorf("%s sees %s %s", a.Name(), x.Name, x.Health)
				}
			}
			st, err := a.Status()
			if err != nil {
				return err
			}
			for _, p := range st.Peers {
				if c.isRunning(p.Name) && p.LastHandshakeSeconds < 0 {
					return fmt.Errorf("%s has no handshake with %s", a.Name(), p.Name)
				}
			}
		}
		if leaders != 1 {
			return fmt.Errorf("%d leaders", leaders)
		}
		return nil
	})
}

func (c *cluster) isRunning(name string) bool {
	for _, a := range c.running() {
		if a.Name() == name {
			return true
		}
	}
	return false
}

func voters(a *Agent) int { return len(a.store.Status().Voters) }

func TestWriteOnFollowerIsForwarded(t *testing.T) {
	c := newCluster(t, 3)
	f := c.follower()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tok, err := f.CreateToken(ctx, api.TokenRequest{TTL: "5m"})
	if err != nil {
		t.Fatal(err)
	}
	parsed, _ := datadir.ParseToken(tok.Token)
	l := c.leader()
	st, _ := l.store.State()
	if _, ok := st.Tokens[parsed.ID]; !ok {
		t.Fatal("token written on a follower is not in the leader's state")
	}
	if strings.Contains(string(mustJSON(st)), parsed.Secret) {
		t.Fatal("the token secret is stored in the cluster state")
	}
}

func TestWholeClusterRestart(t *testing.T) {
	c := newCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tok, err := c.agents[1].CreateToken(ctx, api.TokenRequest{TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range c.agents {
		c.stop(i)
	}
	for i := range c.agents {
		c.start(i)
	}
	c.waitFormed(3)
	parsed, _ := datadir.ParseToken(tok.Token)
	for _, a := range c.running() {
		eventually(t, "state intact on "+a.Name(), func() error {
			st, _ := a.store.State()
			if _, ok := st.Tokens[parsed.ID]; !ok || len(st.Nodes) != 3 {
				return fmt.Errorf("token present=%v nodes=%d", ok, len(st.Nodes))
			}
			return nil
		})
	}
	if _, err := c.agents[2].CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatalf("write after power cut: %v", err)
	}
}

func TestJoinRejectsBadTokens(t *testing.T) {
	c := newCluster(t, 1)
	a := c.agents[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	good, err := a.CreateToken(ctx, api.TokenRequest{TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	short, err := a.CreateToken(ctx, api.TokenRequest{TTL: "1ms"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	parsed, _ := datadir.ParseToken(good.Token)
	wrongSecret := datadir.Token{CAFingerprint: parsed.CAFingerprint, ID: parsed.ID, Secret: strings.Repeat("0", 32)}.String()
	otherCluster := datadir.Token{CAFingerprint: strings.Repeat("1", 64), ID: parsed.ID, Secret: parsed.Secret}.String()
	member := a.cfg.Endpoints[0]
	join := func(name, token string) error {
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		_, err = Join(ctx, JoinOptions{NodeOptions: datadir.NodeOptions{
			DataDir: t.TempDir() + "/" + name, Name: name, Net: "userspace", ListenPort: port,
			Advertise: []string{fmt.Sprintf("127.0.0.1:%d", port)},
		}, Token: token, Member: member})
		return err
	}
	cases := []struct{ name, token, want string }{
		{"garbage", "hello", "malformed join token"},
		{"wrong-secret", wrongSecret, "join token is invalid"},
		{"expired", short.Token, "expired"},
		{"other-cluster", otherCluster, "fingerprint mismatch"},
		{"node0", good.Token, "name is already taken"},
	}
	for _, tc := range cases {
		if err := join(tc.name, tc.token); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	if err := join("fresh", good.Token); err != nil {
		t.Fatalf("good token refused after failed attempts: %v", err)
	}
	if err := join("again", good.Token); err == nil || !strings.Contains(err.Error(), "already been used") {
		t.Fatalf("reused token: err = %v", err)
	}
	if n := len(a.Nodes().Nodes); n != 2 {
		t.Fatalf("%d nodes after one good join, want 2", n)
	}
}

func TestNodeRemovalDropsPeerEverywhere(t *testing.T) {
	c := newCluster(t, 3)
	victim := c.agents[2]
	if victim.store.IsLeader() {
		victim = c.agents[1]
	}
	victimKey := victim.wgKey.PublicKey()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.agents[0].RemoveNode(ctx, victim.Name()); err != nil {
		t.Fatal(err)
	}
	for _, a := range c.running() {
		if a == victim {
			continue
		}
		eventually(t, a.Name()+" drops the removed peer", func() error {
			stats, err := a.dev.Stats()
			if err != nil {
				return err
			}
			for _, p := range stats {
				if p.PublicKey == victimKey {
					return errors.New("peer still configured")
				}
			}
			return nil
		})
	}
	// The removed node's certificate no longer passes the members' mTLS,
	// while a current member's still does.
	l := c.leader()
	if err := tlsHandshake(l.mtlsServer, victim.mtlsClient, l.Name()); err == nil {
		t.Fatal("a member accepted the removed node's certificate")
	}
	if err := tlsHandshake(l.mtlsServer, c.follower().mtlsClient, l.Name()); err != nil {
		t.Fatalf("a member refused a current node: %v", err)
	}
	if err := c.agents[0].RemoveNode(ctx, victim.Name()); !errors.Is(err, raftstore.ErrNoSuchNode) {
		t.Fatalf("second removal: err = %v, want no such node", err)
	}
}

// tlsHandshake runs a real TLS handshake over loopback TCP.
func tlsHandshake(server, client *tls.Config, serverName string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		err = tc.Handshake()
		if err == nil {
			// TLS 1.3: the client's certificate is checked after the client
			// finishes; a read surfaces the server's verdict to the client.
			_, err = tc.Write([]byte{1})
		}
		done <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), clientWithName(client, serverName))
	if err != nil {
		<-done
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, rerr := c.Read(make([]byte, 1))
	serr := <-done
	return errors.Join(rerr, serr)
}

func clientWithName(c *tls.Config, name string) *tls.Config {
	c = c.Clone()
	c.ServerName = name
	return c
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

func TestJoinEndpointSurvivesGarbage(t *testing.T) {
	c := newCluster(t, 1)
	a := c.agents[0]
	member := a.cfg.Endpoints[0]
	// Raw garbage instead of a TLS handshake.
	conn, err := net.Dial("tcp", member)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("GET / HTTP/1.0\r\n\r\n\x16\x03\x01garbage"))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.ReadAll(conn)
	conn.Close()

	// Well-formed TLS, but an oversized or malformed body.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for name, req := range map[string]api.JoinRequest{
		"oversized": {Token: strings.Repeat("x", 2*httpapi.MaxJoinBody)},
		"bad csr":   {Token: mustToken(t, a), Name: "evil", NodeID: datadir.NewNodeID(), PublicKey: a.wgKey.PublicKey().String(), CSR: []byte("not a csr")},
		"bad key":   {Token: mustToken(t, a), Name: "evil", NodeID: datadir.NewNodeID(), PublicKey: "short"},
	} {
		if _, err := postJoin(ctx, member, a.cfg.CAFingerprint, req); err == nil {
			t.Errorf("%s: join accepted", name)
		} else if strings.Contains(err.Error(), "EOF") {
			t.Errorf("%s: no clear error: %v", name, err)
		}
	}
	if n := len(a.Nodes().Nodes); n != 1 {
		t.Fatalf("%d nodes after bad joins, want 1", n)
	}
	// The endpoint still admits a proper join.
	port, _ := FreePort()
	if _, err := Join(ctx, JoinOptions{NodeOptions: datadir.NodeOptions{
		DataDir: t.TempDir(), Name: "good", Net: "userspace", ListenPort: port,
		Advertise: []string{fmt.Sprintf("127.0.0.1:%d", port)},
	}, Token: mustToken(t, a), Member: member}); err != nil {
		t.Fatal(err)
	}
}

func mustToken(t *testing.T, a *Agent) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tok, err := a.CreateToken(ctx, api.TokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

func TestJoinRefusesInitialisedDir(t *testing.T) {
	dir := t.TempDir()
	opts := datadir.NodeOptions{DataDir: dir, Name: "a", Net: "userspace", Advertise: []string{"127.0.0.1:1"}}
	if _, err := datadir.Init(opts, Version); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(dir + "/" + datadir.FileConfig)
	if _, err := Join(context.Background(), JoinOptions{NodeOptions: opts, Token: datadir.NewToken(strings.Repeat("a", 64)).String(), Member: "127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "already initialised") {
		t.Fatalf("join into an initialised dir: err = %v", err)
	}
	after, _ := os.ReadFile(dir + "/" + datadir.FileConfig)
	if string(before) != string(after) {
		t.Fatal("a refused join changed the data dir")
	}
}

func TestRemovedNodeLearnsItWasRemoved(t *testing.T) {
	c := newCluster(t, 3)
	victim := c.follower()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.waitLeader().RemoveNode(ctx, victim.Name()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "removed node sees its removal and drops its peers", func() error {
		st, _ := victim.store.State()
		if _, ok := st.Nodes[victim.cfg.NodeID]; ok {
			return errors.New("still in its own state")
		}
		stats, err := victim.dev.Stats()
		if err != nil {
			return err
		}
		if len(stats) != 0 {
			return fmt.Errorf("%d peers left", len(stats))
		}
		return nil
	})
	eventually(t, "removed node leaves the raft configuration", func() error {
		for _, id := range append(c.waitLeader().store.Status().Voters, c.waitLeader().store.Status().NonVoters...) {
			if id == victim.cfg.NodeID {
				return errors.New("still a raft server")
			}
		}
		return nil
	})
}

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
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// hashicorp/go-metrics runs a process-wide sink goroutine.
		goleak.IgnoreTopFunction("github.com/hashicorp/go-metrics.(*InmemSignal).run"),
		goleak.IgnoreTopFunction("github.com/armon/go-metrics.(*InmemSignal).run"),
		goleak.IgnoreAnyFunction("github.com/hashicorp/go-metrics.NewInmemSink"),
		// memberlist's Shutdown does not wait for a probe in flight: it
		// ends by itself when its ack timer fires, which memberlist scales
		// up to 9x the probe interval after the failed probes of a test
		// that stopped nodes — longer than goleak waits.
		goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	)
}

var fastTuning = Tuning{
	RaftHeartbeat:     300 * time.Millisecond,
	RaftElection:      300 * time.Millisecond,
	DeadVoterGrace:    2 * time.Second,
	ReconcileInterval: 200 * time.Millisecond,
	GossipFast:        true,
	HeartbeatInterval: 200 * time.Millisecond,
	HealthyWithin:     time.Second,
	OfflineAfter:      4 * time.Second,
	HealthDwell:       300 * time.Millisecond,
	CloudBackoffMax:   2 * time.Second,
	WorkloadInterval:  time.Second,
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("RUNOS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// cluster is an in-process test cluster whose nodes can be stopped and
// restarted from their data dirs.
type cluster struct {
	tb     testing.TB
	dir    string
	agents []*Agent // nil while stopped
	dirs   []string
	tuning Tuning
}

func newCluster(t testing.TB, n int) *cluster {
	t.Helper()
	return newClusterTuned(t, n, fastTuning)
}

func newClusterTuned(t testing.TB, n int, tuning Tuning) *cluster {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := StartDev(ctx, DevOptions{Nodes: n, Dir: dir, Tuning: tuning}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{tb: t, dir: dir, agents: dc.Agents, dirs: dc.Dirs, tuning: tuning}
	t.Cleanup(func() {
		for _, a := range c.agents {
			if a != nil {
				a.Close()
			}
		}
	})
	c.waitFormed(n)
	c.waitVoters(n)
	return c
}

// waitVoters waits until the leader has chosen the voter set for n live nodes.
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
		return nil
	})
}

func (c *cluster) stop(i int) {
	c.tb.Helper()
	c.agents[i].Close()
	c.agents[i] = nil
}

func (c *cluster) start(i int) {
	c.tb.Helper()
	a, err := New(Config{DataDir: c.dirs[i], Net: "userspace", Tuning: c.tuning}, testLogger(c.tb))
	if err != nil {
		c.tb.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		c.tb.Fatal(err)
	}
	c.agents[i] = a
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

func TestThreeNodeClusterForms(t *testing.T) {
	c := newCluster(t, 3)
	eventually(t, "three voters", func() error {
		if v := voters(c.leader()); v != 3 {
			return fmt.Errorf("%d voters", v)
		}
		return nil
	})
	// Addresses come from the RunOS plan and never collide.
	seen := map[string]bool{}
	for _, n := range c.agents[0].Nodes().Nodes {
		ip := netip.MustParseAddr(n.MeshIP)
		pod := netip.MustParsePrefix(n.PodCIDR)
		if !raftstore.MeshPrefix.Contains(ip) || !raftstore.PodPrefix.Contains(pod.Addr()) || pod.Bits() != 24 {
			t.Errorf("node %s has %s / %s outside the plan", n.Name, ip, pod)
		}
		if seen[n.MeshIP] || seen[n.PodCIDR] {
			t.Errorf("duplicate address for %s", n.Name)
		}
		seen[n.MeshIP], seen[n.PodCIDR] = true, true
	}
	// Every member holds the same data key, each in its own data dir.
	for i := range c.dirs {
		if c.agents[i].dataKey.IsZero() || c.agents[i].dataKey != c.agents[0].dataKey {
			t.Errorf("node %d has a different or missing data key", i)
		}
	}
}

func TestFiveNodeClusterKeepsQuorumLosingTwoVoters(t *testing.T) {
	c := newCluster(t, 5)
	eventually(t, "five voters", func() error {
		if v := voters(c.leader()); v != 5 {
			return fmt.Errorf("%d voters", v)
		}
		return nil
	})
	// Kill one voter that is not the leader, wait for it to be replaced,
	// then another: the cluster must still accept writes.
	for round := range 2 {
		victim := -1
		l := c.leader()
		for i, a := range c.agents {
			if a != nil && a != l && slices.Contains(l.store.Status().Voters, a.cfg.NodeID) {
				victim = i
				break
			}
		}
		if victim < 0 {
			t.Fatalf("round %d: no voter to kill besides the leader", round)
		}
		name := c.agents[victim].Name()
		c.stop(victim)
		eventually(t, fmt.Sprintf("round %d: %s out of the voters", round, name), func() error {
			l := c.leader()
			if l == nil {
				return errors.New("no leader")
			}
			for _, v := range statusOf(t, l).Raft.Voters {
				if v == name {
					return fmt.Errorf("%s still votes", name)
				}
			}
			return nil
		})
	}
	f := c.follower()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := f.CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatalf("write after losing two voters: %v", err)
	}
	if v := voters(c.leader()); v != 3 {
		t.Errorf("voters = %d after losing two of five nodes, want 3", v)
	}
}

func TestWriteOnFollowerIsForwarded(t *testing.T) {
	c := newCluster(t, 3)
	f := c.follower()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tok, err := f.CreateToken(ctx, api.TokenRequest{TTL: "5m"})
	if err != nil {
		t.Fatal(err)
	}
	parsed, _ := parseJoinToken(tok.Token)
	l := c.leader()
	st, _ := l.store.State()
	if _, ok := st.Tokens[parsed.ID]; !ok {
		t.Fatal("token written on a follower is not in the leader's state")
	}
	if strings.Contains(string(mustJSON(st)), parsed.Secret) {
		t.Fatal("the token secret is stored in the cluster state")
	}
}

func statusOf(t *testing.T, a *Agent) *api.Status {
	t.Helper()
	st, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestLeaderFailover(t *testing.T) {
	c := newCluster(t, 3)
	old := c.leader()
	for i, a := range c.agents {
		if a == old {
			c.stop(i)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.running()[0].CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatalf("no write accepted after the leader died: %v", err)
	}
	if l := c.leader(); l == nil || l == old {
		t.Fatal("no new leader")
	}
}

func TestNodeRestartsFromDataDir(t *testing.T) {
	c := newCluster(t, 3)
	i := 2
	if c.agents[i].store.IsLeader() {
		i = 1
	}
	c.stop(i)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.running()[0].CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatal(err)
	}
	c.start(i)
	c.waitFormed(3)
	want := c.leader().store.Status().AppliedIndex
	eventually(t, "restarted node catches up", func() error {
		if got := c.agents[i].store.Status().AppliedIndex; got < want {
			return fmt.Errorf("applied %d < %d", got, want)
		}
		return nil
	})
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
	parsed, _ := parseJoinToken(tok.Token)
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
	parsed, _ := parseJoinToken(good.Token)
	wrongSecret := joinToken{CAFingerprint: parsed.CAFingerprint, ID: parsed.ID, Secret: strings.Repeat("0", 32)}.String()
	otherCluster := joinToken{CAFingerprint: strings.Repeat("1", 64), ID: parsed.ID, Secret: parsed.Secret}.String()
	member := a.cfg.Endpoints[0]
	join := func(name, token string) error {
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		_, err = Join(ctx, JoinOptions{NodeOptions: NodeOptions{
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

func TestMeshTCPEchoGoesThroughWireGuard(t *testing.T) {
	c := newCluster(t, 2)
	a, b := c.agents[0], c.agents[1]
	ln, err := b.Net().Listen("tcp", netip.AddrPortFrom(b.cfg.MeshIP, 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		io.Copy(conn, conn)
	}()
	before := peerRx(t, a, b.Name())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := a.Net().DialContext(ctx, "tcp", netip.AddrPortFrom(b.cfg.MeshIP, 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := strings.Repeat("through the tunnel ", 1000)
	go conn.Write([]byte(msg))
	got := make([]byte, len(msg))
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatal("echo mismatch")
	}
	if after := peerRx(t, a, b.Name()); after < before+uint64(len(msg)) {
		t.Fatalf("WireGuard rx counter moved %d bytes for a %d byte echo", after-before, len(msg))
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

func peerRx(t *testing.T, a *Agent, name string) uint64 {
	t.Helper()
	for _, p := range statusOf(t, a).Peers {
		if p.Name == name {
			return p.RxBytes
		}
	}
	t.Fatalf("%s has no peer %s", a.Name(), name)
	return 0
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
	for name, req := range map[string]joinRequest{
		"oversized": {Token: strings.Repeat("x", 2*maxJoinBody)},
		"bad csr":   {Token: mustToken(t, a), Name: "evil", NodeID: randomHex(8), PublicKey: a.wgKey.PublicKey().String(), CSR: []byte("not a csr")},
		"bad key":   {Token: mustToken(t, a), Name: "evil", NodeID: randomHex(8), PublicKey: "short"},
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
	if _, err := Join(ctx, JoinOptions{NodeOptions: NodeOptions{
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

func TestInitRefusesInitialisedDir(t *testing.T) {
	dir := t.TempDir()
	opts := NodeOptions{DataDir: dir, Name: "a", Net: "userspace", Advertise: []string{"127.0.0.1:1"}}
	if _, err := Init(opts); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(dir + "/" + fileConfig)
	if _, err := Init(opts); err == nil || !strings.Contains(err.Error(), "already initialised") {
		t.Fatalf("second init: err = %v", err)
	}
	if _, err := Join(context.Background(), JoinOptions{NodeOptions: opts, Token: joinToken{CAFingerprint: strings.Repeat("a", 64), ID: randomHex(6), Secret: randomHex(16)}.String(), Member: "127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "already initialised") {
		t.Fatalf("join into an initialised dir: err = %v", err)
	}
	after, _ := os.ReadFile(dir + "/" + fileConfig)
	if string(before) != string(after) {
		t.Fatal("a refused init changed the data dir")
	}
	for _, f := range []string{fileWGKey, fileNodeKey, fileConfig} {
		fi, err := os.Stat(dir + "/" + f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want no group/other access", f, fi.Mode().Perm())
		}
	}
}

func TestRemovedNodeLearnsItWasRemoved(t *testing.T) {
	c := newCluster(t, 3)
	victim := c.follower()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.leader().RemoveNode(ctx, victim.Name()); err != nil {
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
		for _, id := range append(c.leader().store.Status().Voters, c.leader().store.Status().NonVoters...) {
			if id == victim.cfg.NodeID {
				return errors.New("still a raft server")
			}
		}
		return nil
	})
}

// A second `runos-agent dev` on the same dir restarts the same cluster.
func TestDevClusterRestartsFromItsDir(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := StartDev(ctx, DevOptions{Nodes: 3, Dir: dir, Tuning: fastTuning}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	id := dc.Agents[0].NodeConfig().ClusterID
	if err := dc.Close(); err != nil {
		t.Fatal(err)
	}
	dc, err = StartDev(ctx, DevOptions{Nodes: 3, Dir: dir, Tuning: fastTuning}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	for _, a := range dc.Agents {
		if got := a.NodeConfig().ClusterID; got != id {
			t.Fatalf("restarted into cluster %s, want %s", got, id)
		}
	}
	if _, err := dc.Agents[2].CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatalf("write after restart: %v", err)
	}
}

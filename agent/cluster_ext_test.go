package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/agent"
	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
)

// Cluster tests through the agent's public API, on agenttest's in-process
// clusters. (TestMain is the package's, in cluster_test.go.)

func voters(a *agent.Agent) int { return len(a.Store().Status().Voters) }

func statusOf(t *testing.T, a *agent.Agent) *api.Status {
	t.Helper()
	st, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestThreeNodeClusterForms(t *testing.T) {
	c := agenttest.Start(t, 3)
	agenttest.Eventually(t, "three voters", func() error {
		if v := voters(c.Leader()); v != 3 {
			return fmt.Errorf("%d voters", v)
		}
		return nil
	})
	// Addresses come from the RunOS plan and never collide.
	seen := map[string]bool{}
	for _, n := range c.Agent(0).Nodes().Nodes {
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
	var first string
	for i, dir := range c.Dirs() {
		key, err := os.ReadFile(filepath.Join(dir, "data.key"))
		if i == 0 {
			first = string(key)
		}
		if err != nil || len(strings.TrimSpace(string(key))) == 0 || string(key) != first {
			t.Errorf("node %d has a different or missing data key (%v)", i, err)
		}
	}
}

func TestFiveNodeClusterKeepsQuorumLosingTwoVoters(t *testing.T) {
	c := agenttest.Start(t, 5)
	agenttest.Eventually(t, "five voters", func() error {
		if v := voters(c.Leader()); v != 5 {
			return fmt.Errorf("%d voters", v)
		}
		return nil
	})
	// Kill one voter that is not the leader, wait for it to be replaced,
	// then another: the cluster must still accept writes.
	for round := range 2 {
		victim := -1
		l := c.Leader()
		for _, a := range c.Running() {
			if a != l && slices.Contains(l.Store().Status().Voters, a.NodeConfig().NodeID) {
				victim = c.Index(a)
				break
			}
		}
		if victim < 0 {
			t.Fatalf("round %d: no voter to kill besides the leader", round)
		}
		name := c.Agent(victim).Name()
		c.Stop(victim)
		agenttest.Eventually(t, fmt.Sprintf("round %d: %s out of the voters", round, name), func() error {
			l := c.Leader()
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
	f := c.Follower()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := f.CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatalf("write after losing two voters: %v", err)
	}
	if v := voters(c.Leader()); v != 3 {
		t.Errorf("voters = %d after losing two of five nodes, want 3", v)
	}
}

func TestLeaderFailover(t *testing.T) {
	c := agenttest.Start(t, 3)
	old := c.Leader()
	c.Stop(c.Index(old))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Running()[0].CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatalf("no write accepted after the leader died: %v", err)
	}
	if l := c.Leader(); l == nil || l == old {
		t.Fatal("no new leader")
	}
}

func TestNodeRestartsFromDataDir(t *testing.T) {
	c := agenttest.Start(t, 3)
	i := 2
	if c.Agent(i).Store().IsLeader() {
		i = 1
	}
	c.Stop(i)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Running()[0].CreateToken(ctx, api.TokenRequest{}); err != nil {
		t.Fatal(err)
	}
	c.Restart(i)
	c.WaitFormed(3)
	want := c.Leader().Store().Status().AppliedIndex
	agenttest.Eventually(t, "restarted node catches up", func() error {
		if got := c.Agent(i).Store().Status().AppliedIndex; got < want {
			return fmt.Errorf("applied %d < %d", got, want)
		}
		return nil
	})
}

func TestMeshTCPEchoGoesThroughWireGuard(t *testing.T) {
	c := agenttest.Start(t, 2)
	a, b := c.Agent(0), c.Agent(1)
	bAddr := netip.AddrPortFrom(b.NodeConfig().MeshIP, 9000).String()
	ln, err := b.Net().Listen("tcp", bAddr)
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
	conn, err := a.Net().DialContext(ctx, "tcp", bAddr)
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

func peerRx(t *testing.T, a *agent.Agent, name string) uint64 {
	t.Helper()
	for _, p := range statusOf(t, a).Peers {
		if p.Name == name {
			return p.RxBytes
		}
	}
	t.Fatalf("%s has no peer %s", a.Name(), name)
	return 0
}

// A second `runos-agent dev` on the same dir restarts the same cluster.
func TestDevClusterRestartsFromItsDir(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	opts := agent.DevOptions{Nodes: 3, Dir: dir, Tuning: agenttest.FastTuning()}
	dc, err := agent.StartDev(ctx, opts, agenttest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	id := dc.Agents[0].NodeConfig().ClusterID
	if err := dc.Close(); err != nil {
		t.Fatal(err)
	}
	dc, err = agent.StartDev(ctx, opts, agenttest.Logger(t))
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

package raftstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/runos/runos-agent/pki"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func bootstrapped(t *testing.T) *State {
	t.Helper()
	s := NewState()
	res := s.apply(1, &Command{ID: "b", Time: t0, Op: OpBootstrap, Bootstrap: &BootstrapCmd{
		ClusterID: "c1", CACertPEM: []byte("ca"), CAKeyPEM: []byte("key"),
		Node: Node{ID: "n1", Name: "alpha", PublicKey: "k1", MeshIP: FirstMeshIP(), PodCIDR: FirstPodCIDR(), CertSerial: "s1"},
	}})
	if err := res.Error(); err != nil {
		t.Fatal(err)
	}
	s.apply(2, &Command{ID: "tok", Time: t0, Op: OpCreateToken, CreateToken: &CreateTokenCmd{Token: Token{
		ID: "t1", SecretHash: pki.HashSecret("secret"), ExpiresAt: t0.Add(time.Hour), UsesLeft: 2}}})
	return s
}

func joinCmd(id, name, key, secret string, at time.Time) *Command {
	return &Command{ID: "join-" + id, Time: at, Op: OpJoin, Join: &JoinCmd{
		TokenID: "t1", SecretHash: pki.HashSecret(secret), NodeID: id, Name: name, PublicKey: key, CertSerial: "s-" + id}}
}

func TestJoinAllocatesAndConsumesToken(t *testing.T) {
	s := bootstrapped(t)
	res := s.apply(3, joinCmd("n2", "beta", "k2", "secret", t0.Add(time.Minute)))
	if err := res.Error(); err != nil {
		t.Fatal(err)
	}
	if got, want := res.Node.MeshIP, netip.MustParseAddr("172.24.0.2"); got != want {
		t.Errorf("mesh IP = %v, want %v", got, want)
	}
	if got, want := res.Node.PodCIDR, netip.MustParsePrefix("172.25.2.0/24"); got != want {
		t.Errorf("pod CIDR = %v, want %v", got, want)
	}
	if s.Tokens["t1"].UsesLeft != 1 {
		t.Errorf("uses left = %d, want 1", s.Tokens["t1"].UsesLeft)
	}
}

func TestJoinRejections(t *testing.T) {
	cases := []struct {
		name string
		cmd  *Command
		want error
	}{
		{"wrong secret", joinCmd("n2", "beta", "k2", "nope", t0), ErrTokenInvalid},
		{"unknown token", func() *Command { c := joinCmd("n2", "beta", "k2", "secret", t0); c.Join.TokenID = "zz"; return c }(), ErrTokenInvalid},
		{"expired", joinCmd("n2", "beta", "k2", "secret", t0.Add(2*time.Hour)), ErrTokenExpired},
		{"name taken", joinCmd("n2", "alpha", "k2", "secret", t0), ErrNameTaken},
		{"key taken", joinCmd("n2", "beta", "k1", "secret", t0), ErrKeyTaken},
		{"missing fields", &Command{ID: "x", Time: t0, Op: OpJoin, Join: &JoinCmd{TokenID: "t1"}}, ErrMalformedCmd},
		{"unknown op", &Command{ID: "y", Time: t0, Op: "launch"}, ErrUnknownOp},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := bootstrapped(t)
			before := s.Clone()
			res := s.apply(3, tc.cmd)
			if err := res.Error(); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if len(s.Nodes) != len(before.Nodes) || s.Tokens["t1"].UsesLeft != before.Tokens["t1"].UsesLeft {
				t.Fatal("a rejected command changed the state")
			}
		})
	}
}

func TestTokenReuse(t *testing.T) {
	s := bootstrapped(t)
	for i, want := range []error{nil, nil, ErrTokenUsed} {
		id := fmt.Sprintf("n%d", i+2)
		if err := s.apply(uint64(3+i), joinCmd(id, "node-"+id, "key-"+id, "secret", t0)).Error(); !errors.Is(err, want) {
			t.Fatalf("join %d: err = %v, want %v", i, err, want)
		}
	}
}

func TestRepeatedCommandIDAppliesOnce(t *testing.T) {
	s := bootstrapped(t)
	cmd := joinCmd("n2", "beta", "k2", "secret", t0)
	first := s.apply(3, cmd)
	again := s.apply(4, cmd)
	if first.Error() != nil || again.Error() != nil {
		t.Fatal(first.Error(), again.Error())
	}
	if first.Index != again.Index || len(s.Nodes) != 2 || s.Tokens["t1"].UsesLeft != 1 {
		t.Fatalf("retry re-applied: index %d vs %d, nodes %d, uses %d", first.Index, again.Index, len(s.Nodes), s.Tokens["t1"].UsesLeft)
	}
}

func TestAppliedWindowIsBounded(t *testing.T) {
	s := bootstrapped(t)
	for i := range appliedWindow + 10 {
		s.apply(uint64(10+i), &Command{ID: fmt.Sprint("u", i), Time: t0, Op: OpUpdateNode, UpdateNode: &UpdateNodeCmd{NodeID: "n1", Version: "v"}})
	}
	if len(s.Applied) != appliedWindow || len(s.Results) != appliedWindow {
		t.Fatalf("applied=%d results=%d, want %d", len(s.Applied), len(s.Results), appliedWindow)
	}
}

func TestAddressesAreNotReusedWhileNodeExists(t *testing.T) {
	s := bootstrapped(t)
	s.Tokens["t1"].UsesLeft = 1000
	seen := map[netip.Addr]bool{FirstMeshIP(): true}
	for i := range 300 {
		id := fmt.Sprint("x", i)
		res := s.apply(uint64(10+i), joinCmd(id, id, id, "secret", t0))
		if i >= 255 { // 256 pod /24s in all, one taken by the first node
			if !errors.Is(res.Error(), ErrAddressSpace) {
				t.Fatalf("join %d: err = %v, want address space exhausted", i, res.Error())
			}
			continue
		}
		if err := res.Error(); err != nil {
			t.Fatalf("join %d: %v", i, err)
		}
		ip := res.Node.MeshIP
		if seen[ip] || UserAccessPrefix.Contains(ip) || !MeshPrefix.Contains(ip) {
			t.Fatalf("bad mesh IP %v", ip)
		}
		seen[ip] = true
	}
	// Removing a node frees its addresses for the next joiner.
	gone := s.NodeByName("x7")
	s.apply(9999, &Command{ID: "rm", Time: t0, Op: OpRemoveNode, RemoveNode: &RemoveNodeCmd{Name: "x7"}})
	res := s.apply(10000, joinCmd("late", "late", "late", "secret", t0))
	if err := res.Error(); err != nil || res.Node.PodCIDR != gone.PodCIDR {
		t.Fatalf("late join: %v %v, want pod %v", err, res.Node, gone.PodCIDR)
	}
}

func TestCommandsBeforeBootstrapFail(t *testing.T) {
	s := NewState()
	if err := s.apply(1, joinCmd("n2", "b", "k", "secret", t0)).Error(); !errors.Is(err, ErrNotBootstrap) {
		t.Fatalf("err = %v", err)
	}
}

func TestPlanMembership(t *testing.T) {
	ids := func(n int) map[raft.ServerID]raft.ServerAddress {
		m := map[raft.ServerID]raft.ServerAddress{}
		for i := 1; i <= n; i++ {
			m[raft.ServerID(fmt.Sprint("n", i))] = raft.ServerAddress(fmt.Sprint("10.0.0.", i, ":7947"))
		}
		return m
	}
	servers := func(voters, nonvoters []string) []raft.Server {
		var out []raft.Server
		for _, v := range voters {
			out = append(out, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(v)})
		}
		for _, v := range nonvoters {
			out = append(out, raft.Server{Suffrage: raft.Nonvoter, ID: raft.ServerID(v)})
		}
		return out
	}
	set := func(xs ...string) func(raft.ServerID) bool {
		return func(id raft.ServerID) bool {
			for _, x := range xs {
				if string(id) == x {
					return true
				}
			}
			return false
		}
	}
	all := func(raft.ServerID) bool { return true }
	none := func(raft.ServerID) bool { return false }
	cases := []struct {
		name                         string
		conf                         []raft.Server
		nodes                        int
		up, deadLong                 func(raft.ServerID) bool
		add, remove, promote, demote string
	}{
		{"new nodes join as non-voters", servers([]string{"n1"}, nil), 3, all, none, "[n2 n3]", "[]", "[]", "[]"},
		{"three live: three voters", servers([]string{"n1"}, []string{"n2", "n3"}), 3, all, none, "[]", "[]", "[n2 n3]", "[]"},
		{"two live: one voter", servers([]string{"n1"}, []string{"n2"}), 2, all, none, "[]", "[]", "[]", "[]"},
		{"cap at five", servers([]string{"n1", "n2", "n3"}, []string{"n4", "n5", "n6", "n7"}), 7, all, none, "[]", "[]", "[n4 n5]", "[]"},
		{"voter briefly down: no change", servers([]string{"n1", "n2", "n3"}, nil), 3, set("n1", "n3"), none, "[]", "[]", "[]", "[]"},
		{"dead voter replaced", servers([]string{"n1", "n2", "n3"}, []string{"n4"}), 4, set("n1", "n3", "n4"), set("n2"), "[]", "[]", "[n4]", "[n2]"},
		{"dead voter of five, none to promote: back to odd", servers([]string{"n1", "n2", "n3", "n4", "n5"}, nil), 5, set("n1", "n2", "n3", "n4"), set("n5"), "[]", "[]", "[]", "[n5 n4]"},
		{"removed node leaves config", servers([]string{"n1", "n2", "n3"}, []string{"n4"}), 3, all, none, "[]", "[n4]", "[]", "[]"},
	}
	t.Run("a node gossip has not seen yet is not added", func(t *testing.T) {
		p := planMembership("n1", servers([]string{"n1"}, nil), ids(3), set("n1", "n2"), none, all, 5)
		if got := len(p.add); got != 1 || p.add[0].ID != "n2" {
			t.Fatalf("add = %v, want only n2", p.add)
		}
	})
	t.Run("removed voter loses its vote before it leaves", func(t *testing.T) {
		p := planMembership("n1", servers([]string{"n1", "n2", "n3"}, nil), ids(2), all, none, none, 5)
		if got := fmtIDs(p.remove) + " " + fmtIDs(p.demote); got != "[] [n3 n2]" {
			t.Fatalf("remove, demote = %s, want [] [n3 n2]", got)
		}
	})
	t.Run("removed node lingers until removable", func(t *testing.T) {
		p := planMembership("n1", servers([]string{"n1", "n2", "n3"}, []string{"n4"}), ids(3), all, none, none, 5)
		if len(p.remove) != 0 {
			t.Fatalf("removed %v before its grace ended", p.remove)
		}
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := planMembership("n1", tc.conf, ids(tc.nodes), tc.up, tc.deadLong, all, 5)
			var add []raft.ServerID
			for _, s := range p.add {
				add = append(add, s.ID)
			}
			got := fmt.Sprint(fmtIDs(add), fmtIDs(p.remove), fmtIDs(p.promote), fmtIDs(p.demote))
			want := fmt.Sprint(tc.add, tc.remove, tc.promote, tc.demote)
			if got != want {
				t.Fatalf("plan = %s, want %s", got, want)
			}
		})
	}
}

func fmtIDs(ids []raft.ServerID) string {
	if ids == nil {
		ids = []raft.ServerID{}
	}
	return fmt.Sprint(ids)
}

func TestEventsAreRecordedAndBounded(t *testing.T) {
	s := bootstrapped(t)
	s.apply(3, joinCmd("n2", "beta", "k2", "secret", t0))
	s.apply(4, joinCmd("n3", "beta", "k3", "secret", t0)) // refused: no event
	s.apply(5, &Command{ID: "rm", Time: t0, Op: OpRemoveNode, RemoveNode: &RemoveNodeCmd{Name: "beta"}})
	var kinds []string
	for _, e := range s.Events {
		kinds = append(kinds, e.Kind+":"+e.Node)
	}
	if got, want := fmt.Sprint(kinds), "[node_joined:alpha node_joined:beta node_removed:beta]"; got != want {
		t.Fatalf("events = %s, want %s", got, want)
	}
	for i := range eventWindow + 5 {
		s.apply(uint64(100+i), &Command{ID: fmt.Sprint("e", i), Time: t0, Op: OpEvent, Event: &Event{Kind: EventHealthChanged, Node: "alpha"}})
	}
	if len(s.Events) != eventWindow || s.Events[len(s.Events)-1].Seq != uint64(100+eventWindow+4) {
		t.Fatalf("window: %d events, last seq %d", len(s.Events), s.Events[len(s.Events)-1].Seq)
	}
}

// TestViewEventsStayPut: views share the event history with the state
// (no copy per read); what a view shows never changes afterwards, while the
// state records past the window, and a reader appending to its view does
// not reach the state.
func TestViewEventsStayPut(t *testing.T) {
	s := bootstrapped(t)
	event := func(i int) *Command {
		return &Command{ID: fmt.Sprint("e", i), Time: t0, Op: OpEvent, Event: &Event{Kind: EventHealthChanged, Node: fmt.Sprint("n", i)}}
	}
	for i := range eventWindow - 3 {
		s.apply(uint64(100+i), event(i))
	}
	v := s.View()
	want := slices.Clone(v.Events)
	v.Events = append(v.Events, Event{Kind: "reader's own"})
	for i := range 2*eventWindow + 7 {
		s.apply(uint64(5000+i), event(10000+i))
		if i%97 == 0 {
			_ = append(s.View().Events, Event{Kind: "another reader's"})
		}
	}
	if !slices.Equal(v.Events[:len(want)], want) || v.Events[len(want)].Kind != "reader's own" {
		t.Fatal("a view's events changed after the state recorded more")
	}
	if len(s.Events) != eventWindow || s.Events[0].Seq != uint64(5000+eventWindow+7) || s.Events[len(s.Events)-1].Seq != uint64(5000+2*eventWindow+6) {
		t.Fatalf("window: %d events, seq %d..%d", len(s.Events), s.Events[0].Seq, s.Events[len(s.Events)-1].Seq)
	}
	for _, e := range s.Events {
		if e.Kind != EventHealthChanged {
			t.Fatalf("a reader's append reached the state: %+v", e)
		}
	}
}

type bufSink struct{ bytes.Buffer }

func (b *bufSink) ID() string    { return "test" }
func (b *bufSink) Cancel() error { return nil }
func (b *bufSink) Close() error  { return nil }

func TestSnapshotKeepsIdempotency(t *testing.T) {
	f := NewFSM()
	st := bootstrapped(t)
	f.state = st
	join := joinCmd("n2", "beta", "k2", "secret", t0)
	b, _ := json.Marshal(join)
	f.Apply(&raft.Log{Index: 3, Data: b})
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink bufSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	restored := NewFSM()
	if err := restored.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	// The retried join after a restore answers like the first one.
	res := restored.Apply(&raft.Log{Index: 4, Data: b}).(*Result)
	if res.Error() != nil || res.Index != 3 {
		t.Fatalf("retry after restore: index %d err %v, want index 3", res.Index, res.Error())
	}
	view, _ := restored.State()
	if len(view.Nodes) != 2 || view.Tokens["t1"].UsesLeft != 1 || len(view.Applied) != 0 {
		t.Fatalf("restored view: %d nodes, %d uses, %d applied ids", len(view.Nodes), view.Tokens["t1"].UsesLeft, len(view.Applied))
	}
}

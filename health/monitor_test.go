package health

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/hostinfo"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time // guarded by mu
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeStore is a cluster state and an event log in memory.
type fakeStore struct {
	mu       sync.Mutex
	st       *raftstore.State // guarded by mu
	changed  chan struct{}    // guarded by mu
	observed []string         // guarded by mu; "id/term/leader" per ObserveBeat
}

func newFakeStore(nodes ...*raftstore.Node) *fakeStore {
	st := raftstore.NewState()
	for _, n := range nodes {
		st.Nodes[n.ID] = n
	}
	return &fakeStore{st: st, changed: make(chan struct{})}
}

func (s *fakeStore) State() (*raftstore.State, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := *s.st
	c.Events = slices.Clone(s.st.Events)
	return &c, uint64(len(c.Events))
}

func (s *fakeStore) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *fakeStore) RecordEvent(_ context.Context, e raftstore.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.Seq = uint64(len(s.st.Events) + 1)
	s.st.Events = append(s.st.Events, e)
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

func (s *fakeStore) events() []raftstore.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.st.Events)
}

func (s *fakeStore) Beat() (uint64, bool) { return 7, true }
func (s *fakeStore) KnowsLeader() bool    { return true }

func (s *fakeStore) ObserveBeat(id string, term uint64, leader, noLeader bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.observed = append(s.observed, fmt.Sprintf("%s/%d/%v", id, term, leader))
}

func (s *fakeStore) ObserveBye(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.observed = append(s.observed, "bye/"+id)
}

func (s *fakeStore) takeObserved() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.observed
	s.observed = nil
	return out
}

// testKey is the data key of every test Monitor.
var testKey = seal.Key{1, 2, 3}

func testKeys() []seal.Key { return []seal.Key{testKey} }

type fakeHost struct{ snap hostinfo.Snapshot }

func (h *fakeHost) Sample() hostinfo.Snapshot { return h.snap }

// sent is what a fake Send saw.
type sent struct {
	to  string
	hb  heartbeat
	len int
}

type harness struct {
	m     *Monitor
	clock *fakeClock
	store *fakeStore
	host  *fakeHost

	mu   sync.Mutex
	sent []sent // guarded by mu
}

func (h *harness) takeSent() []sent {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.sent
	h.sent = nil
	return out
}

var (
	self  = &raftstore.Node{ID: "id-a", Name: "a", MeshIP: netip.MustParseAddr("172.24.0.1")}
	nodeB = &raftstore.Node{ID: "id-b", Name: "b", MeshIP: netip.MustParseAddr("172.24.0.2")}
	nodeC = &raftstore.Node{ID: "id-c", Name: "c", MeshIP: netip.MustParseAddr("172.24.0.3")}
)

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{
		clock: &fakeClock{t: epoch},
		store: newFakeStore(self, nodeB, nodeC),
		host:  &fakeHost{hostinfo.Snapshot{CPUPercent: 3, MemTotalBytes: 8 << 30, MemUsedBytes: 1 << 30}},
	}
	m, err := New(Config{
		Name: self.Name, NodeID: self.ID, MeshIP: self.MeshIP, Version: "v-test",
		HeartbeatInterval: 500 * time.Millisecond, // events tick every 100 ms
		Now:               h.clock.Now,
	}, Deps{
		Store: h.store,
		Host:  h.host,
		Send: func(to *memberlist.Node, msg []byte) error {
			stamp, body, err := openFrame([]seal.Key{seal.Derive(testKey, "heartbeat")}, self.MeshIP, msg)
			if err != nil {
				t.Errorf("sent a frame that does not open: %v", err)
			}
			hb, err := decodeBeat(body)
			if err != nil {
				t.Errorf("sent an undecodable beat: %v", err)
			}
			hb.Seq = stamp
			h.mu.Lock()
			defer h.mu.Unlock()
			h.sent = append(h.sent, sent{to: to.Name + "@" + to.Address(), hb: hb, len: len(msg)})
			return nil
		},
		Candidates: func() []string { return []string{"198.18.0.1:51820"} },
		DataKeys:   testKeys,
		Log:        slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	return h
}

func member(n *raftstore.Node) *memberlist.Node {
	return &memberlist.Node{Name: n.Name, Addr: net.IP(n.MeshIP.AsSlice()), Port: 7946, PMax: 5}
}

// epoch is the test clock's start; beats' send stamps count from it.
var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// beatFrom delivers a heartbeat from n, sealed, from n's mesh IP. seq
// counts milliseconds from epoch (beats carry their send stamp).
func (h *harness) beatFrom(n *raftstore.Node, seq uint64, has uint64) {
	hb := heartbeat{Name: n.Name, ID: n.ID, Seq: uint64(epoch.UnixMilli()) + seq, Term: 7, Version: "v-" + n.Name,
		Host: hostinfo.Snapshot{MemTotalBytes: 4 << 30}, Cands: []string{n.Name + ":51820"}, has: has}
	h.deliver(&hb, n.MeshIP)
}

// deliver seals hb and hands it to the Monitor as coming from ip.
func (h *harness) deliver(hb *heartbeat, ip netip.Addr) {
	f, err := SealFrame(testKey, ip, hb.Seq, encodeBeat(nil, hb))
	if err != nil {
		panic(err)
	}
	h.m.HandleFrame(f, netip.AddrPortFrom(ip, 7946))
}

func TestNewRejectsMissingFields(t *testing.T) {
	ok := Deps{Store: newFakeStore(), Host: &fakeHost{}, Send: func(*memberlist.Node, []byte) error { return nil }, DataKeys: testKeys, Log: slog.New(slog.DiscardHandler)}
	if _, err := New(Config{Name: "a", NodeID: "id-a", MeshIP: self.MeshIP}, ok); err != nil {
		t.Fatalf("complete config refused: %v", err)
	}
	for name, f := range map[string]func(*Config, *Deps){
		"name":  func(c *Config, _ *Deps) { c.Name = "" },
		"id":    func(c *Config, _ *Deps) { c.NodeID = "" },
		"ip":    func(c *Config, _ *Deps) { c.MeshIP = netip.Addr{} },
		"store": func(_ *Config, d *Deps) { d.Store = nil },
		"host":  func(_ *Config, d *Deps) { d.Host = nil },
		"send":  func(_ *Config, d *Deps) { d.Send = nil },
		"keys":  func(_ *Config, d *Deps) { d.DataKeys = nil },
		"log":   func(_ *Config, d *Deps) { d.Log = nil },
	} {
		c, d := Config{Name: "a", NodeID: "id-a", MeshIP: self.MeshIP}, ok
		f(&c, &d)
		if _, err := New(c, d); err == nil {
			t.Errorf("missing %s accepted", name)
		}
	}
}

// The receiver and classifier on a fake clock: the thresholds are the
// design's (healthy < 10 s, degraded 10–30 s, offline > 30 s), and nothing
// sleeps.
func TestClassifierAgesOnTheClock(t *testing.T) {
	h := newHarness(t)
	m := h.m

	// Before anything: this node is healthy, b is not yet seen by gossip
	// and has sent nothing, aged from this agent's start.
	if s := m.Of(self); s.Health != api.Healthy || s.Reason != "this node" {
		t.Errorf("self: %+v", s)
	}
	if s := m.Of(nodeB); s.Health != api.Degraded || !strings.Contains(s.Reason, "not seen by gossip") || s.Seen {
		t.Errorf("b before gossip: %+v", s)
	}
	h.clock.Advance(31 * time.Second)
	if s := m.Of(nodeB); s.Health != api.Offline || s.Reason != "no heartbeat for 31s" {
		t.Errorf("b silent since start: %+v", s)
	}

	m.NotifyJoin(member(nodeB))
	h.beatFrom(nodeB, 1, beatParts)
	s := m.Of(nodeB)
	if s.Health != api.Healthy || !s.Seen || s.Age != 0 || s.Version != "v-b" || s.Host.MemTotalBytes != 4<<30 || !slices.Equal(s.Cands, []string{"b:51820"}) {
		t.Errorf("b after a full beat: %+v", s)
	}
	if got := m.Candidates("b"); !slices.Equal(got, []string{"b:51820"}) {
		t.Errorf("candidates of b: %v", got)
	}

	// A liveness-only beat keeps what the full one said.
	h.clock.Advance(5 * time.Second)
	h.beatFrom(nodeB, 2, 0)
	if s := m.Of(nodeB); s.Health != api.Healthy || s.Version != "v-b" || s.Age != 0 {
		t.Errorf("b after a tiny beat: %+v", s)
	}
	// A datagram reordered behind it (or replayed) changes nothing.
	h.clock.Advance(time.Second)
	h.beatFrom(nodeB, 1, 0)
	if s := m.Of(nodeB); s.Age != time.Second {
		t.Errorf("reordered beat counted: age %v", s.Age)
	}

	for _, step := range []struct {
		advance time.Duration
		health  string
		reason  string
	}{
		{8 * time.Second, api.Healthy, "heartbeat 9s ago"},
		{time.Second, api.Degraded, "last heartbeat 10s ago"},
		{20 * time.Second, api.Degraded, "last heartbeat 30s ago"},
		{time.Second, api.Offline, "no heartbeat for 31s"},
	} {
		h.clock.Advance(step.advance)
		if s := m.Of(nodeB); s.Health != step.health || s.Reason != step.reason {
			t.Errorf("b: %s (%s), want %s (%s)", s.Health, s.Reason, step.health, step.reason)
		}
	}

	// Gossip's verdicts win over a fresh beat.
	h.beatFrom(nodeB, 3, 0)
	m.NotifyLeave(member(nodeB))
	if s := m.Of(nodeB); s.Health != api.Offline || s.Reason != "confirmed dead by gossip" {
		t.Errorf("b dead: %+v", s)
	}
	m.NotifyJoin(member(nodeB))
	if s := m.Of(nodeB); s.Health != api.Healthy {
		t.Errorf("b back: %+v", s)
	}
	bye := heartbeat{Name: "b", Bye: true, Seq: uint64(epoch.UnixMilli()) + 4}
	h.deliver(&bye, nodeB.MeshIP)
	m.NotifyLeave(member(nodeB))
	if s := m.Of(nodeB); s.Health != api.Offline || s.Reason != "left the cluster gracefully" {
		t.Errorf("b left: %+v", s)
	}

	// A node that joined after this agent started is aged from its join.
	late := &raftstore.Node{ID: "id-d", Name: "d", JoinedAt: h.clock.Now().Add(-2 * time.Second)}
	m.NotifyJoin(member(late))
	if s := m.Of(late); s.Health != api.Healthy || s.Reason != "heartbeat 2s ago" {
		t.Errorf("new node: %+v", s)
	}

	// Raft's part of every accepted beat went to the store, and the
	// goodbye as one.
	if got := h.store.takeObserved(); len(got) != 4 || got[0] != "id-b/7/false" || got[3] != "bye/id-b" {
		t.Errorf("observed beats: %v", got)
	}
}

// The sender sends to its own copies of the members, never to itself, a
// full beat first and after a join, and only the liveness part otherwise.
func TestSenderSendsToMembersCopies(t *testing.T) {
	h := newHarness(t)
	m := h.m
	m.NotifyJoin(member(self))
	m.NotifyJoin(member(nodeB))
	m.NotifyJoin(member(nodeC))
	m.fullBeat.Store(false) // the joins above asked for a full beat; the first one is anyway

	var s sendState
	m.beat(&s)
	got := h.takeSent()
	if len(got) != 2 || got[0].to != "b@172.24.0.2:7946" || got[1].to != "c@172.24.0.3:7946" {
		t.Fatalf("first beat went to %+v", got)
	}
	full := got[0].hb
	if full.has != beatParts || full.Version != "v-test" || full.Term != 7 || !full.Leader || full.Host.CPUPercent != 3 || len(full.Cands) != 1 {
		t.Errorf("first beat is not full: %+v", full)
	}
	if st := m.Of(self); !st.Seen || st.Host.CPUPercent != 3 {
		t.Errorf("own beat not recorded: %+v", st)
	}

	// Idle: nothing moved, so only the liveness part travels.
	m.beat(&s)
	got = h.takeSent()
	if len(got) != 2 || got[0].hb.has != 0 || got[0].len > 16+maxFrameOverhead {
		t.Errorf("idle beat: %+v", got)
	}
	// Host metrics past the deadband ride along.
	h.host.snap.CPUPercent = 50
	m.beat(&s)
	if got = h.takeSent(); len(got) != 2 || got[0].hb.has != beatHost {
		t.Errorf("beat after a CPU jump: %+v", got)
	}

	// c leaves: no more beats to it. A member joins: the next beat is full.
	m.NotifyLeave(member(nodeC))
	m.NotifyJoin(member(&raftstore.Node{Name: "d", MeshIP: netip.MustParseAddr("172.24.0.4")}))
	m.beat(&s)
	got = h.takeSent()
	if len(got) != 2 || got[0].to != "b@172.24.0.2:7946" || got[1].to != "d@172.24.0.4:7946" || got[1].hb.has != beatParts {
		t.Errorf("beat after join and leave: %+v", got)
	}

	// The sixth beat is full again without a join.
	m.beat(&s)
	m.beat(&s)
	h.takeSent()
	m.beat(&s) // the seventh
	if got = h.takeSent(); got[0].hb.Seq != uint64(epoch.UnixMilli())+6 || got[0].hb.has != beatParts {
		t.Errorf("seventh beat: %+v", got[0].hb)
	}

	m.Goodbye()
	got = h.takeSent()
	if len(got) != 2 || !got[0].hb.Bye || got[0].hb.has != 0 {
		t.Errorf("goodbye: %+v", got)
	}
}

// The recorder writes one event per transition once it held for the
// dwell time, as measured on the Monitor's clock.
func TestRunEventsRecordsTransitionsAfterDwell(t *testing.T) {
	h := newHarness(t)
	m := h.m
	for _, n := range []*raftstore.Node{self, nodeB, nodeC} {
		m.NotifyJoin(member(n))
	}
	h.beatFrom(nodeB, 1, beatParts)
	h.beatFrom(nodeC, 1, beatParts)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.RunEvents(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunEvents: %v", err)
		}
	}()

	waitFor := func(what string, f func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !f(); {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; events %+v", what, h.store.events())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	settle := func() { time.Sleep(350 * time.Millisecond) } // a few ticks of the loop

	// b goes silent; c keeps beating.
	h.clock.Advance(12 * time.Second)
	h.beatFrom(nodeC, 2, 0)
	settle()
	if evs := h.store.events(); len(evs) != 0 {
		t.Fatalf("recorded before the dwell time passed: %+v", evs)
	}
	h.clock.Advance(DefaultDwell)
	h.beatFrom(nodeC, 3, 0)
	waitFor("b degraded", func() bool { return len(h.store.events()) == 1 })
	if e := h.store.events()[0]; e.Kind != raftstore.EventHealthChanged || e.Node != "b" || e.From != api.Healthy || e.To != api.Degraded {
		t.Errorf("event %+v", e)
	}
	settle()
	if evs := h.store.events(); len(evs) != 1 {
		t.Errorf("a held state recorded again: %+v", evs)
	}

	// b comes back: one event back to healthy.
	h.beatFrom(nodeB, 2, 0)
	settle()
	h.clock.Advance(DefaultDwell)
	h.beatFrom(nodeB, 3, 0)
	h.beatFrom(nodeC, 4, 0)
	waitFor("b healthy", func() bool { return len(h.store.events()) == 2 })
	if got := LastRecorded(&raftstore.State{Events: h.store.events()}); got["b"] != api.Healthy || len(got) != 1 {
		t.Errorf("last recorded: %v", got)
	}
}

func TestStartCloseIdempotent(t *testing.T) {
	h := newHarness(t)
	if err := h.m.Close(); err != nil { // never started
		t.Fatal(err)
	}
	h.m.Start(context.Background()) // after Close: does nothing
	h.m.Close()

	h = newHarness(t)
	h.m.NotifyJoin(member(nodeB))
	h.m.Start(context.Background())
	deadline := time.Now().Add(5 * time.Second)
	for len(h.takeSent()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no heartbeat sent")
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.m.Close()
	h.m.Close()
	h.takeSent()
	time.Sleep(600 * time.Millisecond)
	if got := h.takeSent(); len(got) != 0 {
		t.Errorf("sent after Close: %+v", got)
	}
}

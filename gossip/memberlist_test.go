package gossip

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/goleak"

	"github.com/runos/runos-agent/mesh"
)

// event is the last thing a recorder heard about a node.
type event int

const (
	joined event = iota + 1
	left         // left or failed: memberlist reports both through NotifyLeave
	updated
)

// recorder is a memberlist.EventDelegate that remembers the last event for
// each node. memberlist calls delegates synchronously, so it must never
// block (a channel could fill up and stall gossip).
//
// It records the callback, not Node.State: memberlist v0.7.0 hands
// delegates the Node embedded in its nodeState, whose own State field
// shadows Node.State, so Node.State reads StateAlive even in NotifyLeave.
type recorder struct {
	mu   sync.Mutex
	last map[string]event
}

func newRecorder() *recorder { return &recorder{last: map[string]event{}} }

func (r *recorder) set(n *memberlist.Node, e event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last[n.Name] = e
}

func (r *recorder) NotifyJoin(n *memberlist.Node)   { r.set(n, joined) }
func (r *recorder) NotifyLeave(n *memberlist.Node)  { r.set(n, left) }
func (r *recorder) NotifyUpdate(n *memberlist.Node) { r.set(n, updated) }

func (r *recorder) is(name string, want event) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last[name] == want
}

// hasMembers reports whether m's live member list is exactly names.
func hasMembers(m *memberlist.Memberlist, names ...string) bool {
	got := map[string]bool{}
	for _, n := range m.Members() {
		got[n.Name] = true
	}
	if len(got) != len(names) {
		return false
	}
	for _, n := range names {
		if !got[n] {
			return false
		}
	}
	return true
}

type member struct {
	name string
	t    *Transport
	ml   *memberlist.Memberlist
	ev   *recorder
	kr   *memberlist.Keyring // the keyring memberlist encrypts with (nil: none)
}

// testKey is the cluster's gossip key in these tests.
var testKey = bytes.Repeat([]byte{7}, 32)

func startMember(t *testing.T, name string) *member {
	t.Helper()
	return startMemberKeyed(t, name, testKey)
}

// startMemberKeyed starts a member whose keyring holds key; a nil key
// starts one with no keyring at all, as a stranger's would be.
func startMemberKeyed(t *testing.T, name string, key []byte) *member {
	t.Helper()
	tr, err := NewTransport(TransportConfig{Net: mesh.NewHostNet(loopback), BindAddr: loopback, Sources: loopbackSources}, nil)
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t).With("node", name)
	cfg, err := MemberlistConfig(name, tr, [][]byte{bytes.Repeat([]byte{1}, 32)}, log)
	if err != nil {
		tr.Shutdown()
		t.Fatal(err)
	}
	cfg.Keyring = nil
	cfg.GossipVerifyIncoming, cfg.GossipVerifyOutgoing = false, false
	if key != nil {
		cfg, err = MemberlistConfig(name, tr, [][]byte{key}, log)
		if err != nil {
			tr.Shutdown()
			t.Fatal(err)
		}
	}
	// Loopback timings so that failure detection takes a second, not ten.
	cfg.ProbeInterval = 100 * time.Millisecond
	cfg.ProbeTimeout = 50 * time.Millisecond
	cfg.GossipInterval = 20 * time.Millisecond
	cfg.SuspicionMult = 2
	cfg.TCPTimeout = 2 * time.Second
	ev := newRecorder()
	cfg.Events = ev
	ml, err := memberlist.Create(cfg)
	if err != nil {
		tr.Shutdown() // Create does not own the transport until it succeeds
		t.Fatal(err)
	}
	return &member{name: name, t: tr, ml: ml, ev: ev, kr: cfg.Keyring}
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func TestMemberlistOverMesh(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var ms []*member
	for i := range 3 {
		ms = append(ms, startMember(t, fmt.Sprintf("node-%d", i)))
	}
	defer func() {
		for _, m := range ms {
			_ = m.ml.Shutdown() // idempotent
		}
	}()
	a, b, c := ms[0], ms[1], ms[2]

	if got := a.ml.LocalNode().Address(); got != a.t.Addr().String() {
		t.Fatalf("advertised %s, want %s", got, a.t.Addr())
	}

	for _, m := range ms[1:] {
		if _, err := m.ml.Join([]string{a.t.Addr().String()}); err != nil {
			t.Fatalf("%s join: %v", m.name, err)
		}
	}
	waitFor(ctx, t, "all members to see each other alive", func() bool {
		for _, m := range ms {
			if !hasMembers(m.ml, a.name, b.name, c.name) {
				return false
			}
			for _, o := range ms {
				if o != m && !m.ev.is(o.name, joined) {
					return false
				}
			}
		}
		return true
	})

	// A graceful leave is announced and propagates by gossip.
	if err := c.ml.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.ml.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "node-2's leave to reach the others", func() bool {
		return a.ev.is(c.name, left) && b.ev.is(c.name, left) &&
			hasMembers(a.ml, a.name, b.name) && hasMembers(b.ml, a.name, b.name)
	})

	// A crash is not announced: a's failure detector must find it, which
	// takes probes over the transport's UDP and TCP paths timing out.
	if err := b.ml.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "node-1 to be detected dead", func() bool {
		return a.ev.is(b.name, left) && hasMembers(a.ml, a.name)
	})
}

// A node without the cluster's gossip key, or with another key, cannot
// join, and the members never list it.
func TestMemberlistRefusesStrangers(t *testing.T) {
	defer goleak.VerifyNone(t)
	a := startMember(t, "member")
	defer a.ml.Shutdown()
	for _, tc := range []struct {
		name string
		key  []byte
	}{
		{"no-key", nil},
		{"wrong-key", bytes.Repeat([]byte{9}, 32)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startMemberKeyed(t, "stranger-"+tc.name, tc.key)
			defer m.ml.Shutdown()
			if n, err := m.ml.Join([]string{a.t.Addr().String()}); err == nil || n != 0 {
				t.Errorf("stranger joined: %d contacted, err %v", n, err)
			}
			if !hasMembers(a.ml, "member") {
				t.Errorf("member lists %v", a.ml.Members())
			}
		})
	}
}

// A key rotation: members holding both keys talk to members on either.
func TestMemberlistKeyringRotation(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	newKey := bytes.Repeat([]byte{8}, 32)
	a := startMember(t, "old")
	defer a.ml.Shutdown()
	b := startMemberKeyed(t, "new", newKey)
	defer b.ml.Shutdown()
	if _, err := b.ml.Join([]string{a.t.Addr().String()}); err == nil {
		t.Fatal("joined across different keys")
	}
	// b learns the old key as a secondary: it now opens a's messages,
	// and a opens b's once a learns the new one.
	if err := b.kr.AddKey(testKey); err != nil {
		t.Fatal(err)
	}
	if err := a.kr.AddKey(newKey); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ml.Join([]string{a.t.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "both members to see each other", func() bool {
		return hasMembers(a.ml, "old", "new") && hasMembers(b.ml, "old", "new")
	})
}

package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeDevice records what the reconciler sets.
type fakeDevice struct {
	mu   sync.Mutex
	sets [][]Peer // guarded by mu
	src  *fakeSource
}

func (d *fakeDevice) SetPeers(peers []Peer) error {
	d.mu.Lock()
	d.sets = append(d.sets, peers)
	d.mu.Unlock()
	d.src.mu.Lock()
	d.src.trace = append(d.src.trace, "device")
	d.src.mu.Unlock()
	return nil
}

// peers is the last set, by mesh IP, and how many sets there were.
func (d *fakeDevice) peers() (map[netip.Addr]Peer, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[netip.Addr]Peer{}
	if len(d.sets) == 0 {
		return out, 0
	}
	for _, p := range d.sets[len(d.sets)-1] {
		out[p.AllowedIPs[0].Addr()] = p
	}
	return out, len(d.sets)
}

// fakeSource is the Raft state: a view that changes, a Changed channel,
// gossiped candidates, and a record of the hooks' calls.
type fakeSource struct {
	mu          sync.Mutex // guards all below
	view        View
	changed     chan struct{}
	views       int
	candidates  map[string][]string
	underlayErr error
	underlay    [][]Member
	saves       int
	trace       []string
	now         time.Time
}

func (s *fakeSource) View() View {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.views++
	return View{Self: s.view.Self, Members: slices.Clone(s.view.Members)}
}

func (s *fakeSource) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *fakeSource) set(self bool, members ...Member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.view = View{Self: self, Members: members}
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *fakeSource) advance(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = s.now.Add(d)
}

func (s *fakeSource) calls() (views, saves int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.views, s.saves
}

type rig struct {
	t    *testing.T
	src  *fakeSource
	dev  *fakeDevice
	r    *Reconciler
	logs *logBuffer
}

// logBuffer collects log lines; slog's handler serialises its writes.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder // guarded by mu
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), msg)
}

func newRig(t *testing.T, self bool, members ...Member) *rig {
	t.Helper()
	src := &fakeSource{changed: make(chan struct{}), candidates: map[string][]string{}, now: time.Unix(1e9, 0)}
	src.view = View{Self: self, Members: members}
	dev := &fakeDevice{src: src}
	logs := &logBuffer{}
	r, err := NewReconciler(ReconcilerConfig{
		Device:   dev,
		View:     src.View,
		Changed:  src.Changed,
		Endpoint: func(k Key) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("100::1"), uint16(k[0])) },
		Underlay: func(ms []Member) error {
			src.mu.Lock()
			defer src.mu.Unlock()
			if src.underlayErr != nil {
				return src.underlayErr
			}
			src.underlay = append(src.underlay, ms)
			src.trace = append(src.trace, "underlay")
			return nil
		},
		Candidates: func(name string) []string {
			src.mu.Lock()
			defer src.mu.Unlock()
			return src.candidates[name]
		},
		Save: func() error {
			src.mu.Lock()
			defer src.mu.Unlock()
			src.saves++
			return nil
		},
		Interval: time.Hour, // only changes and Wake drive these tests
		Now: func() time.Time {
			src.mu.Lock()
			defer src.mu.Unlock()
			return src.now
		},
	}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	rg := &rig{t: t, src: src, dev: dev, r: r, logs: logs}
	rg.settle()
	return rg
}

// settle returns once the reconciler has finished a pass that began after
// settle was called.
func (rg *rig) settle() {
	rg.t.Helper()
	for range 2 {
		n, _ := rg.src.calls()
		rg.r.Wake()
		waitFor(rg.t, "a pass", func() error {
			if v, _ := rg.src.calls(); v <= n {
				return errors.New("no pass")
			}
			return nil
		})
	}
}

func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(time.Millisecond)
	}
}

func member(t *testing.T, i byte) Member {
	t.Helper()
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return Member{
		ID: fmt.Sprintf("id%d", i), Name: fmt.Sprintf("n%d", i), PublicKey: k.PublicKey().String(),
		Address:   netip.AddrFrom4([4]byte{172, 24, 0, i}),
		Endpoints: []string{fmt.Sprintf("192.0.2.%d:51820", i)},
	}
}

func ip(i byte) netip.Addr { return netip.AddrFrom4([4]byte{172, 24, 0, i}) }

func (rg *rig) wantPeers(ips ...netip.Addr) map[netip.Addr]Peer {
	rg.t.Helper()
	got, _ := rg.dev.peers()
	var have []netip.Addr
	for a := range got {
		have = append(have, a)
	}
	slices.SortFunc(have, netip.Addr.Compare)
	if !slices.Equal(have, ips) {
		rg.t.Fatalf("peers %v, want %v", have, ips)
	}
	return got
}

func TestReconcilerAppliesTheView(t *testing.T) {
	a, b := member(t, 2), member(t, 3)
	b.Routed = netip.MustParsePrefix("172.25.3.0/24")
	b.Carried = []netip.Prefix{netip.MustParsePrefix("172.24.200.2/32")}
	b.Relay = true
	rg := newRig(t, true, a, b)
	got := rg.wantPeers(ip(2), ip(3))
	pb := got[ip(3)]
	key, _ := ParseKey(b.PublicKey)
	if pb.PublicKey != key || pb.PersistentKeepalive != PersistentKeepalive ||
		!slices.Equal(pb.AllowedIPs, []netip.Prefix{netip.MustParsePrefix("172.24.0.3/32"), b.Routed, b.Carried[0]}) ||
		pb.Endpoint != netip.AddrPortFrom(netip.MustParseAddr("100::1"), uint16(key[0])) {
		t.Fatalf("peer for b: %+v", pb)
	}
	rg.src.mu.Lock()
	trace, underlay, saves := slices.Clone(rg.src.trace), rg.src.underlay, rg.src.saves
	rg.src.mu.Unlock()
	if !slices.Equal(trace, []string{"underlay", "device"}) || saves != 1 {
		t.Fatalf("calls %v, %d saves: want the underlay before the device, then one save", trace, saves)
	}
	if len(underlay) != 1 || !reflect.DeepEqual(underlay[0], []Member{a, b}) {
		t.Fatalf("underlay got %+v", underlay)
	}
	// Nothing changed: nothing is set again.
	rg.settle()
	if _, n := rg.dev.peers(); n != 1 {
		t.Fatalf("%d sets for one view", n)
	}
	// A join is applied at the state change, without a Wake.
	c := member(t, 4)
	rg.src.set(true, a, b, c)
	waitFor(t, "join applied", func() error {
		if got, _ := rg.dev.peers(); len(got) != 3 {
			return fmt.Errorf("%d peers", len(got))
		}
		return nil
	})
}

func TestReconcilerRemovedMemberLingers(t *testing.T) {
	a, b, c := member(t, 2), member(t, 3), member(t, 4)
	rg := newRig(t, true, a, b, c)
	rg.src.set(true, a)
	rg.settle()
	rg.wantPeers(ip(2), ip(3), ip(4))
	// c comes back within the grace: it stays, and no longer lingers.
	rg.src.advance(2 * time.Second)
	rg.src.set(true, a, c)
	rg.settle()
	rg.wantPeers(ip(2), ip(3), ip(4))
	rg.src.advance(DefaultRemovalGrace)
	rg.settle()
	rg.wantPeers(ip(2), ip(4))
	rg.src.advance(time.Hour)
	rg.settle()
	rg.wantPeers(ip(2), ip(4))
	if _, saves := rg.src.calls(); saves != 3 {
		t.Fatalf("%d saves, want one per applied view", saves)
	}
}

func TestReconcilerCatchingUpLeavesPeersAlone(t *testing.T) {
	rg := newRig(t, false, member(t, 2))
	rg.src.set(false, member(t, 3))
	rg.settle()
	if _, n := rg.dev.peers(); n != 0 {
		t.Fatal("peers set from a view that lacks this node")
	}
	if _, saves := rg.src.calls(); saves != 0 {
		t.Fatal("a catching-up view was saved")
	}
}

func TestReconcilerRemovedNodeDropsEveryPeer(t *testing.T) {
	rg := newRig(t, true, member(t, 2), member(t, 3))
	rg.src.set(false, member(t, 2), member(t, 3))
	rg.settle()
	rg.wantPeers()
	if _, n := rg.dev.peers(); n != 2 {
		t.Fatalf("%d sets", n)
	}
	if _, saves := rg.src.calls(); saves != 1 {
		t.Fatalf("%d saves: the removal must not be saved", saves)
	}
	rg.settle()
	if n := rg.logs.count("this node has been removed from the cluster"); n != 1 {
		t.Fatalf("removal logged %d times", n)
	}
}

func TestReconcilerAddsGossipedCandidates(t *testing.T) {
	a := member(t, 2)
	rg := newRig(t, true, a)
	rg.src.mu.Lock()
	rg.src.candidates[a.Name] = []string{a.Endpoints[0], "198.51.100.7:4000"}
	rg.src.mu.Unlock()
	rg.settle()
	rg.src.mu.Lock()
	defer rg.src.mu.Unlock()
	last := rg.src.underlay[len(rg.src.underlay)-1]
	if len(rg.src.underlay) != 2 || !slices.Equal(last[0].Endpoints, []string{a.Endpoints[0], "198.51.100.7:4000"}) {
		t.Fatalf("underlay got %+v", rg.src.underlay)
	}
}

func TestReconcilerRetriesAFailedApply(t *testing.T) {
	a := member(t, 2)
	rg := newRig(t, true)
	rg.src.mu.Lock()
	rg.src.underlayErr = errors.New("socket gone")
	rg.src.mu.Unlock()
	rg.src.set(true, a)
	rg.settle()
	// The device is set all the same (a removal must not wait for the
	// underlay); the apply counts as failed: not saved, and retried.
	rg.wantPeers(ip(2))
	if _, saves := rg.src.calls(); saves != 1 {
		t.Fatalf("%d saves: a failed apply must not be saved", saves)
	}
	rg.src.mu.Lock()
	rg.src.underlayErr = nil
	rg.src.mu.Unlock()
	rg.settle()
	rg.wantPeers(ip(2))
}

func TestReconcilerSkipsABadKey(t *testing.T) {
	a, b := member(t, 2), member(t, 3)
	b.PublicKey = "not a key"
	rg := newRig(t, true, a, b)
	rg.wantPeers(ip(2))
	if n := rg.logs.count("bad public key"); n != 1 {
		t.Fatalf("bad key logged %d times", n)
	}
}

func TestReconcilerApplyOnce(t *testing.T) {
	src := &fakeSource{}
	dev := &fakeDevice{src: src}
	r, err := NewReconciler(ReconcilerConfig{Device: dev, View: src.View, Changed: src.Changed,
		Underlay: func([]Member) error {
			src.mu.Lock()
			defer src.mu.Unlock()
			src.trace = append(src.trace, "underlay")
			return nil
		}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Apply([]Member{member(t, 2)}); err != nil {
		t.Fatal(err)
	}
	if got, n := dev.peers(); n != 1 || len(got) != 1 || !slices.Equal(src.trace, []string{"underlay", "device"}) { // one goroutine: no lock needed
		t.Fatalf("%d sets, %v", n, src.trace)
	}
	if _, err := NewReconciler(ReconcilerConfig{View: src.View, Changed: src.Changed}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("no Device accepted")
	}
}

// Attack: one member's record makes the whole peer list unusable (a key
// or an address that another member has, which the device would refuse as
// a whole). That member is left out and counted; the others are applied,
// and a later change (a removal) still takes effect.
func TestReconcilerOneBadMemberBlocksNothing(t *testing.T) {
	a, b, c, d := member(t, 2), member(t, 3), member(t, 4), member(t, 5)
	c.PublicKey = a.PublicKey // a duplicate key
	d.Address = b.Address     // an address another claims
	rg := newRig(t, true, a, b, c, d)
	rg.wantPeers(ip(2), ip(3))
	if n := rg.r.Skipped(); n < 2 {
		t.Fatalf("skipped %d, want the two bad members counted", n)
	}
	// a is removed: once its grace is over, c's key is its own.
	rg.src.set(true, b, c, d)
	rg.src.advance(DefaultRemovalGrace + time.Second)
	rg.settle()
	rg.wantPeers(ip(3), ip(4))
}

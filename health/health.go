// Package health owns node health: the heartbeat every agent sends every
// member as a sealed datagram on the gossip port (its binary wire format in
// beatwire.go, the seal in frame.go, the binding to its sender in
// receive.go), the receiver that keeps the last beat of every node, the
// classifier that turns a beat's age and gossip's view into healthy
// (< 10 s), degraded (10–30 s) or offline (> 30 s), and the recorder that
// turns transitions into Raft events while this node leads. Ages are read
// from this node's own clock (Config.Now), so clock skew between machines
// does not matter and tests need not sleep.
//
// A Monitor receives beats from the gossip transport (HandleFrame) and is
// memberlist's EventDelegate (it keeps copies of the members it sends to);
// it hands Raft's part of each bound beat to the store (ObserveBeat),
// which is how Raft's idle traffic rides the health plane.
package health

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/runos/runos-agent/hostinfo"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// Health thresholds from the RunOS design: a heartbeat every 5 s; healthy
// while the last one is under 10 s old, offline past 30 s.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultHealthyWithin     = 10 * time.Second
	DefaultOfflineAfter      = 30 * time.Second
	// DefaultDwell is how long a new health state must hold before the
	// leader records a transition: a node flapping between alive and
	// suspect does not flood the event log.
	DefaultDwell = 2 * time.Second
)

// Config is this node's identity and the health timers. Zero durations
// keep the defaults above; tests shorten them.
type Config struct {
	Name   string // this node's name; required
	NodeID string // this node's ID (its Raft server ID); required
	// MeshIP is this node's mesh IP, where its beats come from (the gossip
	// socket's address); required. Beats are sealed for it.
	MeshIP  netip.Addr
	Version string // the agent version heartbeats carry

	HeartbeatInterval time.Duration
	HealthyWithin     time.Duration
	OfflineAfter      time.Duration
	Dwell             time.Duration

	// Since is when this agent started: a node whose first heartbeat has
	// not arrived is aged from it (or from its joining, if later). Zero:
	// the time New is called.
	Since time.Time
	// Now is the clock for beat ages and dwell times; nil: time.Now.
	Now func() time.Time
}

// Store is what health needs of the Raft store; *raftstore.Store is one.
type Store interface {
	// State is the local replica of the cluster state (nodes, events).
	State() (*raftstore.State, uint64)
	// Changed is closed at the next change of State.
	Changed() <-chan struct{}
	// RecordEvent commits an event through the leader.
	RecordEvent(ctx context.Context, e raftstore.Event) error
	// Beat is Raft's part of this node's heartbeat.
	Beat() (term uint64, leader bool)
	// KnowsLeader reports whether Raft follows a leader (or leads).
	KnowsLeader() bool
	// ObserveBeat takes Raft's part of another node's heartbeat, once
	// the beat is bound to that node.
	ObserveBeat(nodeID string, term uint64, leader, noLeader bool)
	// ObserveBye takes another node's goodbye heartbeat, once bound to
	// that node: a leader that leaves is replaced at once.
	ObserveBye(nodeID string)
}

var _ Store = (*raftstore.Store)(nil)

// HostSampler samples this machine for heartbeats; *hostinfo.Sampler is one.
type HostSampler interface {
	Sample() hostinfo.Snapshot
}

var _ HostSampler = (*hostinfo.Sampler)(nil)

// Deps are the components a Monitor works with.
type Deps struct {
	Store Store       // required
	Host  HostSampler // required
	// Send sends one datagram (a sealed frame) to a member's gossip
	// address from this node's gossip socket. to is a copy owned by the
	// Monitor, never a node memberlist is updating. Required.
	Send func(to *memberlist.Node, msg []byte) error
	// DataKeys are the cluster data keys this node holds, newest first:
	// beats are sealed with the first, opened with any. Called for every
	// beat, so a rotation takes effect at once. Required.
	DataKeys func() []seal.Key
	// MeshBytes is the overlay's total bytes received and sent, carried in
	// heartbeats; nil or an error leaves them out.
	MeshBytes func() (rx, tx uint64, err error)
	// Candidates is this node's current underlay candidates; nil: none.
	Candidates func() []string
	// OnCandidates is called (from memberlist's goroutine) when another
	// node's heartbeat announced candidates it had not announced before.
	OnCandidates func()
	Log          *slog.Logger // required
}

// Monitor sends this node's heartbeats, receives the others', classifies
// every node and, as a leader task, records health transitions.
type Monitor struct {
	cfg   Config
	deps  Deps
	log   *slog.Logger
	now   func() time.Time
	since time.Time
	th    thresholds

	beats   beats
	members members
	// fullBeat asks the next heartbeat to carry every part (a member
	// joined and knows nothing of this node yet).
	fullBeat atomic.Bool
	// stamp is the last send stamp (sendStamp).
	stamp atomic.Uint64

	keys   derivedKeys
	idents identIndex
	replay replayGuard
	dropMu sync.Mutex
	drops  map[string]uint64 // by reason; guarded by dropMu

	startOnce sync.Once
	closeOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
}

var (
	_ memberlist.Delegate      = (*Monitor)(nil)
	_ memberlist.EventDelegate = (*Monitor)(nil)
)

// New returns a Monitor. It receives beats at once (once memberlist is
// created with it as delegate); Start sends this node's.
func New(cfg Config, deps Deps) (*Monitor, error) {
	switch {
	case cfg.Name == "" || cfg.NodeID == "" || !cfg.MeshIP.IsValid():
		return nil, errors.New("health: Name, NodeID and MeshIP are required")
	case deps.Store == nil || deps.Host == nil || deps.Send == nil || deps.DataKeys == nil:
		return nil, errors.New("health: Store, Host, Send and DataKeys are required")
	case deps.Log == nil:
		return nil, errors.New("health: logger is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.HealthyWithin <= 0 {
		cfg.HealthyWithin = DefaultHealthyWithin
	}
	if cfg.OfflineAfter <= 0 {
		cfg.OfflineAfter = DefaultOfflineAfter
	}
	if cfg.Dwell <= 0 {
		cfg.Dwell = DefaultDwell
	}
	m := &Monitor{
		cfg:   cfg,
		deps:  deps,
		log:   deps.Log,
		now:   cfg.Now,
		since: cfg.Since,
		th:    thresholds{healthyWithin: cfg.HealthyWithin, offlineAfter: cfg.OfflineAfter},
		done:  make(chan struct{}),
	}
	if m.since.IsZero() {
		m.since = m.now()
	}
	return m, nil
}

// Start sends a heartbeat to every member every interval until Close.
func (m *Monitor) Start(ctx context.Context) {
	m.startOnce.Do(func() {
		ctx, m.cancel = context.WithCancel(ctx)
		go func() {
			defer close(m.done)
			m.heartbeatLoop(ctx)
		}()
	})
}

// Close stops the heartbeats and waits for the loop. It is idempotent and
// safe without Start. It sends no goodbye: see Goodbye.
func (m *Monitor) Close() error {
	m.closeOnce.Do(func() {
		m.startOnce.Do(func() {}) // a later Start does nothing
		if m.cancel != nil {
			m.cancel()
			<-m.done
		}
	})
	return nil
}

// Goodbye tells every member that this node is leaving on purpose, so they
// show it offline at once rather than after the heartbeat ages run out. A
// crash sends none.
func (m *Monitor) Goodbye() {
	m.sendToMembers(heartbeat{Name: m.cfg.Name, ID: m.cfg.NodeID, Seq: m.sendStamp(), Bye: true})
}

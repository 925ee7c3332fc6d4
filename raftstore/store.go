package raftstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/runos/runos-agent/mesh"
)

// DefaultPort is Raft's port on the mesh IP.
const DefaultPort = 7947

// ForwardFunc sends a command to the leader (identified by its node ID) and
// returns the leader's result. The agent implements it over the node API.
type ForwardFunc func(ctx context.Context, leaderID string, cmd *Command) (*Result, error)

// Config configures a Store.
type Config struct {
	Dir    string         // required: the log (wal/) and snapshots/ live here
	NodeID string         // required: this node's ID (the Raft server ID)
	Addr   netip.AddrPort // required: this node's Raft address on the mesh
	Net    mesh.Net       // required: the overlay Raft talks over
	// ServerTLS and ClientTLS are required: Raft's connections are mutual
	// TLS, and these configs decide who is a member (the agent builds
	// them with pki.AddressedConfig; see StreamConfig).
	ServerTLS *tls.Config
	ClientTLS *tls.Config
	// Sources are the peer addresses Raft serves (default: MemberSources).
	Sources mesh.Sources
	// Forward is required: followers hand writes to the leader through it.
	Forward ForwardFunc
	// Peers, when set, lets a waiting write replace a leader that does not
	// answer (failover.go). It needs QuietFresh: with Raft's own short
	// timers there is nothing to speed up. Nil: Raft's timers only.
	Peers Peers
	// Alive reports whether a node is up (gossip's view). Required; the
	// leader uses it to choose voters.
	Alive func(nodeID string) bool
	// MaxVoters caps the voter set (odd; default 5).
	MaxVoters int
	// DeadVoterGrace is how long a voter may be down before the leader
	// demotes it and promotes a live non-voter (default 30s).
	DeadVoterGrace time.Duration
	// RemovalGrace is how long a removed node stays in the Raft
	// configuration (default 3s), so it receives its own removal.
	RemovalGrace time.Duration
	// ReconcileInterval is how often the leader re-checks membership
	// (default 2s); Hint wakes it sooner.
	ReconcileInterval time.Duration
	// Raft timing; zero values take hashicorp/raft's defaults.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// CommitTimeout is how long the leader waits without new writes before
	// it sends followers an AppendEntries carrying the commit index (raft:
	// 50 ms). Followers apply the last write of a burst that much later.
	CommitTimeout time.Duration
	// QuietFresh, when set, lets the health plane stand in for Raft's idle
	// traffic (see quietTransport): a follower whose health heartbeat is
	// younger than QuietFresh and reports the leader's term is not sent
	// repeated empty AppendEntries, and the leader's health heartbeats
	// reset followers' election timers. HeartbeatTimeout must then exceed
	// the health heartbeat interval. Zero: plain Raft traffic.
	QuietFresh time.Duration
	// SoloHeartbeatTimeout, when set, is Raft's heartbeat and election
	// timeout while the configuration has a single voter (a new cluster, a
	// one-node cluster): HeartbeatTimeout applies only once there are
	// other voters to hear from. It is also the leader lease, so it must
	// exceed HeartbeatTimeout/5 (Raft's longest heartbeat gap).
	SoloHeartbeatTimeout time.Duration
}

// Store is the node's replica of the cluster state.
type Store struct {
	cfg    Config
	log    *slog.Logger
	fsm    *FSM
	raft   *raft.Raft
	logs   *logStore
	stream *StreamLayer
	trans  *raft.NetworkTransport
	quiet  *quietTransport // nil unless Config.QuietFresh

	hint chan struct{}
	// closing quiets raft's shutdown noise (see hclogWriter).
	closing *atomic.Bool

	applyObserver atomic.Pointer[func(time.Duration)]

	// life ends at Close; failover rounds run under it.
	life     context.Context
	stopLife context.CancelFunc
	fo       failover
	// lastLeader is the leader this node last followed, and its term
	// (failover.go).
	lastLeader atomic.Pointer[Suspicion]

	startOnce sync.Once
	closeOnce sync.Once
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu        sync.Mutex
	downSince map[raft.ServerID]time.Time // guarded by mu; leader's view of down servers
	goneSince map[raft.ServerID]time.Time // guarded by mu; servers whose node left the state
}

// Bootstrap writes the initial single-voter configuration into dir, as init
// does for the first node. It fails if dir already holds Raft state.
func Bootstrap(dir, nodeID string, addr netip.AddrPort) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	logs, err := openLog(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		return fmt.Errorf("raftstore: open log: %w", err)
	}
	defer logs.Close()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
	if err != nil {
		return err
	}
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(nodeID)
	conf.Logger = hclog.NewNullLogger()
	_, trans := raft.NewInmemTransport(raft.ServerAddress(addr.String()))
	return raft.BootstrapCluster(conf, logs, logs, snaps, trans, raft.Configuration{
		Servers: []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(nodeID), Address: raft.ServerAddress(addr.String())}},
	})
}

// New opens the Raft data in cfg.Dir and starts Raft. The node takes part in
// the cluster as soon as it returns; Start adds the leader's duties.
func New(cfg Config, log *slog.Logger) (*Store, error) {
	switch {
	case cfg.Dir == "":
		return nil, errors.New("raftstore: Dir is required")
	case cfg.NodeID == "":
		return nil, errors.New("raftstore: NodeID is required")
	case !cfg.Addr.IsValid():
		return nil, errors.New("raftstore: Addr is required")
	case cfg.Net == nil:
		return nil, errors.New("raftstore: Net is required")
	case cfg.ServerTLS == nil || cfg.ClientTLS == nil:
		return nil, errors.New("raftstore: ServerTLS and ClientTLS are required")
	case cfg.Forward == nil:
		return nil, errors.New("raftstore: Forward is required")
	case cfg.Alive == nil:
		return nil, errors.New("raftstore: Alive is required")
	}
	if cfg.Sources.IsZero() {
		cfg.Sources = MemberSources()
	}
	if cfg.MaxVoters <= 0 {
		cfg.MaxVoters = 5
	}
	if cfg.MaxVoters%2 == 0 {
		cfg.MaxVoters--
	}
	if cfg.DeadVoterGrace <= 0 {
		cfg.DeadVoterGrace = 30 * time.Second
	}
	if cfg.RemovalGrace <= 0 {
		cfg.RemovalGrace = 3 * time.Second
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = 2 * time.Second
	}
	if log == nil {
		return nil, errors.New("raftstore: logger is required")
	}
	log = log.With("component", "raft")
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	closing := new(atomic.Bool)
	hlog := newHCLog(log, closing)

	logs, err := openLog(cfg.Dir, log)
	if err != nil {
		return nil, fmt.Errorf("raftstore: open log: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hlog)
	if err != nil {
		logs.Close()
		return nil, err
	}
	stream, err := NewStreamLayer(StreamConfig{
		Net: cfg.Net, Addr: cfg.Addr, Sources: cfg.Sources,
		ServerTLS: cfg.ServerTLS, ClientTLS: cfg.ClientTLS,
	})
	if err != nil {
		logs.Close()
		return nil, err
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  hlog,
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	if cfg.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = cfg.HeartbeatTimeout
		rc.LeaderLeaseTimeout = cfg.HeartbeatTimeout / 2
	}
	if solo := cfg.SoloHeartbeatTimeout; solo > 0 {
		if solo > rc.HeartbeatTimeout || solo <= rc.HeartbeatTimeout/5 {
			logs.Close()
			return nil, fmt.Errorf("raftstore: SoloHeartbeatTimeout %v must be in (%v, %v]", solo, rc.HeartbeatTimeout/5, rc.HeartbeatTimeout)
		}
		rc.LeaderLeaseTimeout = solo
	}
	if cfg.ElectionTimeout > 0 {
		rc.ElectionTimeout = cfg.ElectionTimeout
	}
	if cfg.CommitTimeout > 0 {
		rc.CommitTimeout = cfg.CommitTimeout
	}
	// Small snapshots, taken often enough that a restart replays little.
	rc.SnapshotThreshold = 1024
	rc.TrailingLogs = 2048

	fsm := NewFSM()
	rtrans := pipelineSafe(trans)
	var quiet *quietTransport
	if cfg.QuietFresh > 0 {
		quiet = newQuietTransport(trans, cfg.QuietFresh)
		rtrans = quiet
	}
	// The leader reads the entry before each follower's next one on every
	// AppendEntries, idle repeats included (CommitTimeout, answered by the
	// quiet transport): from a cache of the newest entries instead of a
	// segment read and a decode each time.
	cached, err := raft.NewLogCache(logCacheSize, logs)
	if err != nil {
		trans.Close()
		logs.Close()
		return nil, err
	}
	r, err := raft.NewRaft(rc, fsm, cached, logs, snaps, rtrans)
	if err != nil {
		trans.Close()
		logs.Close()
		return nil, fmt.Errorf("raftstore: start raft: %w", err)
	}
	if cfg.QuietFresh <= 0 {
		cfg.Peers = nil
	}
	life, stopLife := context.WithCancel(context.Background())
	return &Store{
		life:      life,
		stopLife:  stopLife,
		cfg:       cfg,
		log:       log,
		fsm:       fsm,
		raft:      r,
		logs:      logs,
		stream:    stream,
		trans:     trans,
		quiet:     quiet,
		hint:      make(chan struct{}, 1),
		closing:   closing,
		downSince: map[raft.ServerID]time.Time{},
		goneSince: map[raft.ServerID]time.Time{},
	}, nil
}

// logCacheSize is how many of the newest log entries stay in memory as well
// as on disk. Most commands are well under a kilobyte; the rare large ones
// (sealed Kubernetes material) are replaced by the next 64 writes.
const logCacheSize = 64

// Start keeps Raft's timing in step with the configuration until Close.
// The leader's duties (ManageVoters) are run by the owner of leadership.
func (s *Store) Start(ctx context.Context) {
	s.startOnce.Do(func() {
		ctx, s.cancel = context.WithCancel(ctx)
		if s.cfg.SoloHeartbeatTimeout > 0 {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.timingLoop(ctx)
			}()
		}
	})
}

// timingLoop keeps Raft's timeouts short while this node's configuration
// has a single voter and long once it has others: a new or one-node cluster
// elects itself at once, while a real cluster's followers, which hear
// from the leader only every health heartbeat, wait long enough not to
// depose it for one lost heartbeat.
func (s *Store) timingLoop(ctx context.Context) {
	var applied time.Duration
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		want := s.cfg.SoloHeartbeatTimeout
		if f := s.raft.GetConfiguration(); f.Error() == nil {
			voters := 0
			for _, srv := range f.Configuration().Servers {
				if srv.Suffrage == raft.Voter {
					voters++
				}
			}
			if voters > 1 {
				want = s.cfg.HeartbeatTimeout
			}
		}
		if want != applied {
			rc := s.raft.ReloadableConfig()
			rc.HeartbeatTimeout, rc.ElectionTimeout = want, want
			if err := s.raft.ReloadConfig(rc); err != nil {
				s.log.Warn("raft timing not changed", "heartbeat_timeout", want, "err", err)
			} else {
				s.log.Debug("raft timing", "heartbeat_timeout", want)
				applied = want
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close stops Raft and releases the data dir. It is idempotent.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		s.stopLife()
		s.closeFailover()
		s.wg.Wait()
		// Cut the network first: replication to a peer that is down may
		// sit in a dial, and raft's Shutdown waits for it.
		s.closing.Store(true)
		s.stream.Close()
		err = s.raft.Shutdown().Error()
		if cerr := s.trans.Close(); err == nil {
			err = cerr
		}
		if cerr := s.logs.Close(); err == nil {
			err = cerr
		}
	})
	return err
}

// Hint asks the leader to re-check membership now (gossip saw a change).
func (s *Store) Hint() {
	select {
	case s.hint <- struct{}{}:
	default:
	}
}

// State returns a copy of the local state and the index it reflects. It may
// lag the leader (stale reads are allowed and labelled by the index).
func (s *Store) State() (*State, uint64) { return s.fsm.State() }

// Changed returns a channel closed at the next state change.
func (s *Store) Changed() <-chan struct{} { return s.fsm.Changed() }

// LeadershipChanges delivers true when this node becomes the leader and
// false when it stops; a slow reader gets the latest value. It has one
// reader: the agent's leader loop.
func (s *Store) LeadershipChanges() <-chan bool { return s.raft.LeaderCh() }

// IsLeader reports whether this node is the Raft leader.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// Node returns a copy of one node of the local state.
func (s *Store) Node(id string) (*Node, bool) { return s.fsm.Node(id) }

// Beat is what this node's health heartbeats say about its Raft state.
func (s *Store) Beat() (term uint64, leader bool) {
	return s.raft.CurrentTerm(), s.raft.State() == raft.Leader
}

// KnowsLeader reports whether this node leads or follows a known leader.
func (s *Store) KnowsLeader() bool {
	_, id := s.raft.LeaderWithID()
	return id != ""
}

// ObserveBeat takes Raft's part of a health heartbeat from node nodeID (see
// quietTransport). It does nothing unless Config.QuietFresh is set.
//
// The caller has bound the beat to nodeID (sealed, from its mesh IP), but a
// beat is still only a claim, so it never drives Raft: it is handed to
// Raft's heartbeat handler only when it repeats what Raft already knows
// (the sender leads our current term and is a voter), where it does
// nothing but keep the election timer quiet. It can never raise the term
// or install a leader; those come over Raft's own wire. Everything else
// only feeds the quiet transport's freshness bookkeeping.
func (s *Store) ObserveBeat(nodeID string, term uint64, leader, noLeader bool) {
	if s.quiet == nil || nodeID == "" || nodeID == s.cfg.NodeID {
		return
	}
	id := raft.ServerID(nodeID)
	cur := s.raft.CurrentTerm()
	var addr raft.ServerAddress
	if leader && term == cur && term != 0 {
		if la, lid := s.raft.LeaderWithID(); lid == id && s.isVoter(id) {
			addr = la
			s.followed(nodeID, term)
		}
	}
	s.quiet.observeBeat(id, addr, term, cur, noLeader)
}

// isVoter reports whether id is a voter in the latest Raft configuration.
func (s *Store) isVoter(id raft.ServerID) bool {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if srv.ID == id {
			return srv.Suffrage == raft.Voter
		}
	}
	return false
}

// QuietStats counts the empty AppendEntries answered locally and those sent.
func (s *Store) QuietStats() (suppressed, sent uint64) {
	if s.quiet == nil {
		return 0, 0
	}
	return s.quiet.stats()
}

// LeaderID is the current leader's node ID, or "" when there is none.
func (s *Store) LeaderID() string {
	_, id := s.raft.LeaderWithID()
	return string(id)
}

// NewCommandID returns a random command ID.
func NewCommandID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var errNoLeader = errors.New("no raft leader")

// forwardAttemptTimeout bounds one forwarded write; Apply retries after it.
const forwardAttemptTimeout = 3 * time.Second

// ErrNotLeader is returned by ApplyLocal on a follower.
var ErrNotLeader = errors.New("not the raft leader")

// Apply commits cmd through the leader, from any node, and returns its
// result. If the leader fails mid-write it retries with the same command ID
// until ctx ends, so the command is applied exactly once.
func (s *Store) Apply(ctx context.Context, cmd *Command) (*Result, error) {
	if cmd.ID == "" {
		cmd.ID = NewCommandID()
	}
	if cmd.Time.IsZero() {
		cmd.Time = time.Now().UTC()
	}
	backoff := 20 * time.Millisecond
	var lastErr error
	var noLeaderSince time.Time
	for {
		var res *Result
		var err error
		leader := s.LeaderID()
		if s.IsLeader() {
			res, err = s.ApplyLocal(ctx, cmd)
		} else if leader != "" && leader != s.cfg.NodeID {
			// A leader that just died still looks like the leader until
			// Raft's timer fires; forward checks it when the write waits
			// (failover.go) and each attempt is bounded, so the retry
			// reaches its successor.
			res, err = s.forward(ctx, leader, cmd)
		} else {
			err = errNoLeader
			if noLeaderSince.IsZero() {
				noLeaderSince = time.Now()
			}
			s.noLeader(noLeaderSince)
		}
		if err == nil {
			return res, nil
		}
		if errors.Is(err, raft.ErrRaftShutdown) {
			return nil, err
		}
		lastErr = err
		// The next attempt comes after the backoff, or as soon as the
		// leader changes.
		if s.wait(ctx, backoff, leader) != nil {
			return nil, fmt.Errorf("raftstore: write not committed: %w (last error: %v)", ctx.Err(), lastErr)
		}
		backoff = min(backoff*2, time.Second)
	}
}

// ApplyLocal commits cmd if this node is the leader; the node API calls it
// for forwarded writes.
func (s *Store) ApplyLocal(ctx context.Context, cmd *Command) (*Result, error) {
	if s.raft.State() != raft.Leader {
		return nil, ErrNotLeader
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if cmd.Op == OpReadIndex {
		return s.readIndex(timeout)
	}
	if s.removesSelf(cmd) && s.handOver() {
		return nil, ErrNotLeader // the caller retries at the new leader (handover.go)
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	f := s.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		return nil, err
	}
	if obs := s.applyObserver.Load(); obs != nil {
		(*obs)(time.Since(t0))
	}
	res, ok := f.Response().(*Result)
	if !ok {
		return nil, fmt.Errorf("raftstore: unexpected apply response %T", f.Response())
	}
	return res, nil
}

// ObserveApply makes every committed leader-side write report how long
// it took from submission until this node applied it (metrics).
func (s *Store) ObserveApply(f func(time.Duration)) { s.applyObserver.Store(&f) }

// Status is what `runos-agent status` shows about Raft.
type Status struct {
	State        string   `json:"state"`
	Leader       string   `json:"leader"` // node ID
	Term         uint64   `json:"term"`
	AppliedIndex uint64   `json:"applied_index"`
	CommitIndex  uint64   `json:"commit_index"`
	Voters       []string `json:"voters"`    // node IDs
	NonVoters    []string `json:"nonvoters"` // node IDs
}

// Status reports this replica's Raft view.
func (s *Store) Status() Status {
	st := Status{
		State:        s.raft.State().String(),
		Leader:       s.LeaderID(),
		Term:         s.raft.CurrentTerm(),
		AppliedIndex: s.raft.AppliedIndex(),
		CommitIndex:  s.raft.CommitIndex(),
		Voters:       []string{},
		NonVoters:    []string{},
	}
	if f := s.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			if srv.Suffrage == raft.Voter {
				st.Voters = append(st.Voters, string(srv.ID))
			} else {
				st.NonVoters = append(st.NonVoters, string(srv.ID))
			}
		}
	}
	slices.Sort(st.Voters)
	slices.Sort(st.NonVoters)
	return st
}

// hclogWriter carries hashicorp/raft's lines into slog at their level.
// While the store closes, raft reports its own listener and peers going
// away as errors; those are expected, so they drop to debug.
type hclogWriter struct {
	log     *slog.Logger
	closing *atomic.Bool
}

func newHCLog(log *slog.Logger, closing *atomic.Bool) hclog.Logger {
	lvl := hclog.Info
	if !log.Enabled(context.Background(), slog.LevelInfo) {
		lvl = hclog.Warn
	}
	return hclog.New(&hclog.LoggerOptions{
		Level:           lvl,
		Output:          hclogWriter{log, closing},
		DisableTime:     true,
		IncludeLocation: false,
	})
}

// routinePipeline reports whether line is Raft telling of a pipelining
// episode: it starts and ends one per burst of writes (at info), and the
// quiet transport ends it once the follower is idle (an error to Raft;
// quietpipe.go).
func routinePipeline(line []byte) bool {
	for _, s := range []string{"pipelining replication", "aborting pipeline replication", errQuietIdle.Error()} {
		if bytes.Contains(line, []byte(s)) {
			return true
		}
	}
	return false
}

func (w hclogWriter) Write(p []byte) (int, error) {
	line := bytes.TrimSpace(p)
	level := slog.LevelInfo
	for tag, l := range map[string]slog.Level{"[ERROR]": slog.LevelError, "[WARN]": slog.LevelWarn, "[INFO]": slog.LevelInfo, "[DEBUG]": slog.LevelDebug, "[TRACE]": slog.LevelDebug} {
		if bytes.HasPrefix(line, []byte(tag)) {
			level = l
			line = bytes.TrimSpace(line[len(tag):])
			break
		}
	}
	if (w.closing != nil && w.closing.Load()) || routinePipeline(line) {
		level = slog.LevelDebug
	}
	w.log.Log(context.Background(), level, string(line))
	return len(p), nil
}

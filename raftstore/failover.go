package raftstore

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Failover on demand (see timing.go for why Raft's own timers are slow).
//
// Nobody needs a fast failover while nothing is written; someone does the
// moment a write waits. When a write forwarded to the leader fails, or has
// no answer after slowForward, this node checks the leader directly (a probe
// over the mesh: its node API and its echo) and at the same time asks every
// other voter to check it too. If a quorum of voters finds the leader
// unreachable (or no longer leading its term), the most up-to-date of them
// that still follows it starts an election at once: it sends itself Raft's
// TimeoutNow, as a leader handing over would, so its vote requests carry
// Raft's leadership-transfer flag.
//
// Why not Raft's pre-vote: hashicorp/raft refuses a vote, and a pre-vote,
// to anyone while it knows a leader, however long ago it heard from it, and
// forgets its leader only when its own heartbeat timer fires. That timer
// cannot be shortened below the leader lease (LeaderLeaseTimeout, 3 s: it
// is not reloadable) and followers hear the leader only every health
// heartbeat (5 s), so a pre-vote after a crash would be refused for
// seconds. The quorum check takes pre-vote's place: a voter that can still
// reach the leader does not confirm, so one follower cut off from a live
// leader (a false alarm) changes nothing, no term moves. Raft's own timers
// and pre-vote still work as before underneath. Safety never depends on any
// of this: each voter still grants one vote per term to an up-to-date log.
//
// Nothing here sends anything while no write waits: the probes and checks
// are made only for a waiting write (or a leader's goodbye, ObserveBye).

// Failover timing.
const (
	// slowForward: a forwarded write without an answer this long makes
	// this node check the leader. Writes take milliseconds; a slow one
	// only costs a probe (rounds are at most one per roundEvery).
	slowForward = 250 * time.Millisecond
	// probeTimeout bounds a probe of the leader: a leader whose node API
	// and echo both stay silent this long is unreachable. The echo answers
	// in one round trip, so a slow path (a relay, a far site) is not
	// mistaken for a dead leader.
	probeTimeout = 750 * time.Millisecond
	// checkTimeout bounds asking another voter to check (its own probe and
	// the request).
	checkTimeout = probeTimeout + 500*time.Millisecond
	// roundEvery: a leader found alive is not checked again sooner.
	roundEvery = time.Second
	// confirmFresh: how long this node's finding that a leader is
	// unreachable lets another voter ask it to campaign.
	confirmFresh = 5 * time.Second
	// electionGrace: how long a voter that campaigned on a suspicion,
	// and is still a candidate (or leads), counts as an election under way
	// that other rounds wait for. An election takes round trips; a
	// candidate stuck longer than this lost (say, a log behind another
	// voter's), and waiting for its Raft timer would stall writes for
	// seconds, so a later round may have another voter campaign.
	electionGrace = 2 * time.Second
)

// Peers reaches other members for failover on demand; the agent implements
// it over the node API and the mesh.
type Peers interface {
	// Probe asks node nodeID whether it is alive and leads. It returns by
	// ctx's deadline.
	Probe(ctx context.Context, nodeID string) Probe
	// CheckLeader asks voter nodeID to check the suspected leader itself
	// (its Store.CheckLeader).
	CheckLeader(ctx context.Context, nodeID string, s Suspicion) (Verdict, error)
	// Campaign asks voter nodeID to start an election (its Store.Campaign).
	Campaign(ctx context.Context, nodeID string, s Suspicion) error
}

// Probe is what a probe of a node learned.
type Probe struct {
	// Reached: the node answered over the mesh (its node API or echo).
	Reached bool `json:"reached"`
	// Answered: its node API answered; Term and Leader are its Raft view.
	Answered bool   `json:"answered"`
	Term     uint64 `json:"term"`
	Leader   bool   `json:"leader"`
}

// gone reports whether a probe of the leader of term shows it unreachable
// or no longer leading. A node that answered only its echo is alive (its
// node API may just be slow to reach), and one that knows a newer term
// means the cluster moved on without this node.
func (p Probe) gone(term uint64) bool {
	if !p.Reached {
		return true
	}
	return p.Answered && !p.Leader && p.Term <= term
}

// Suspicion names a leader (node ID) suspected in a term.
type Suspicion struct {
	Leader string `json:"leader"`
	Term   uint64 `json:"term"`
}

// Verdict is a voter's answer to a suspicion.
type Verdict struct {
	// Unreachable: this voter found the leader unreachable, or not leading
	// the term (and knows no newer term or other leader).
	Unreachable bool `json:"unreachable"`
	// CanCampaign: a voter that is a follower and either still follows
	// the suspected leader in its term, or knows no leader in that term or
	// a later one (an election after the suspicion failed): a TimeoutNow
	// makes it a candidate.
	CanCampaign bool `json:"can_campaign"`
	// Electing: this voter campaigned on the suspicion within
	// electionGrace and is a candidate or leads (a Raft timer's candidacy
	// does not count: voters that still follow the leader refuse it).
	// Concurrent rounds on two nodes otherwise both campaign: the second
	// sees the first, now a candidate, unable to campaign and picks
	// itself, splitting the vote (seen: term + 2 under load).
	Electing bool `json:"electing,omitempty"`
	// The voter's last log entry: voters grant only to an up-to-date log.
	LastTerm  uint64 `json:"last_term"`
	LastIndex uint64 `json:"last_index"`
}

// FailoverStats counts failover rounds on this node.
type FailoverStats struct {
	Rounds      uint64 // leader checks started here
	Alive       uint64 // ... that found the leader alive (or replaced already)
	Unconfirmed uint64 // ... unreachable from here, but not from a quorum
	Elections   uint64 // elections this node started on a confirmed suspicion
	// Leadership transfers this node started (before a stop or its own
	// removal), by outcome.
	HandedOver, HandOverFailed uint64
}

var (
	errNotConfirmed   = errors.New("raftstore: this node has not found the leader unreachable")
	errCannotCampaign = errors.New("raftstore: this node does not follow the suspected leader in its term")
)

// failover is the Store's failover state.
type failover struct {
	mu sync.Mutex
	// running: suspicions being checked; checked: when a round last
	// ended without an election. Guarded by mu.
	running map[Suspicion]bool
	checked map[Suspicion]time.Time
	// confirmed: when this node found a suspected leader unreachable;
	// guarded by mu.
	confirmed map[Suspicion]time.Time
	// campaigned is the last suspicion this node campaigned on, and when
	// (once per electionGrace); guarded by mu.
	campaigned   Suspicion
	campaignedAt time.Time
	stats        FailoverStats // guarded by mu
	// closed: Close has begun, no new rounds; guarded by mu.
	closed bool
	rounds sync.WaitGroup
}

// initLocked makes the maps, and forgets old suspicions (one per suspected
// leader and term: only the current ones matter).
func (f *failover) initLocked() {
	if f.running == nil {
		f.running, f.checked, f.confirmed = map[Suspicion]bool{}, map[Suspicion]time.Time{}, map[Suspicion]time.Time{}
	}
	if len(f.checked) > 64 {
		clear(f.checked)
	}
	if len(f.confirmed) > 64 {
		clear(f.confirmed)
	}
}

// forward hands cmd to the leader, and checks the leader when the write
// fails or waits longer than slowForward. A waiting forward is abandoned
// (the caller retries with the same command ID) once the leader changes.
func (s *Store) forward(ctx context.Context, leader string, cmd *Command) (*Result, error) {
	actx, cancel := context.WithTimeout(ctx, forwardAttemptTimeout)
	defer cancel()
	if s.cfg.Peers == nil {
		return s.cfg.Forward(actx, leader, cmd)
	}
	term := s.raft.CurrentTerm()
	s.followed(leader, term)
	slow := time.AfterFunc(slowForward, func() {
		s.suspect(leader, term)
		s.awaitLeaderChange(actx, leader)
		cancel()
	})
	res, err := s.cfg.Forward(actx, leader, cmd)
	if slow.Stop() && err != nil && ctx.Err() == nil {
		s.suspect(leader, term)
	}
	return res, err
}

// awaitLeaderChange returns when ctx ends or the leader this node knows
// (itself when it leads, "" for none) is no longer leader. It polls: only
// a waiting write calls it.
func (s *Store) awaitLeaderChange(ctx context.Context, leader string) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for s.LeaderID() == leader {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// wait sleeps d before the next attempt of a write, or less if the leader
// changes meanwhile (from leader, as the attempt saw it).
func (s *Store) wait(ctx context.Context, d time.Duration, leader string) error {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	s.awaitLeaderChange(wctx, leader)
	return ctx.Err()
}

// followed records the leader this node follows.
func (s *Store) followed(leader string, term uint64) {
	if k := s.lastLeader.Load(); k == nil || k.Leader != leader || k.Term != term {
		s.lastLeader.Store(&Suspicion{Leader: leader, Term: term})
	}
}

// noLeader is called while a write finds no leader: after slowForward,
// the leader this node followed last is checked. Raft's own timer may have
// made this node drop it while the other voters still follow it (and
// refuse this node's pre-votes): their check confirms it gone and one of
// them campaigns.
func (s *Store) noLeader(since time.Time) {
	if time.Since(since) < slowForward {
		return
	}
	if k := s.lastLeader.Load(); k != nil {
		s.suspect(k.Leader, k.Term)
	}
}

// ObserveBye takes a goodbye heartbeat from node nodeID: if it is the
// leader this node follows, it stops now (its handover failed, or it had
// no one to hand over to), so it is checked at once rather than at the
// next write.
func (s *Store) ObserveBye(nodeID string) {
	if !s.IsLeader() && nodeID != "" && s.LeaderID() == nodeID {
		s.suspect(nodeID, s.raft.CurrentTerm())
	}
}

// suspect starts a round checking leader in term, unless one runs or ran
// lately.
func (s *Store) suspect(leader string, term uint64) {
	if s.cfg.Peers == nil || leader == "" || leader == s.cfg.NodeID {
		return
	}
	k := Suspicion{Leader: leader, Term: term}
	s.fo.mu.Lock()
	if s.fo.closed || s.fo.running[k] || time.Since(s.fo.checked[k]) < roundEvery {
		s.fo.mu.Unlock()
		return
	}
	s.fo.initLocked()
	s.fo.running[k] = true
	s.fo.stats.Rounds++
	s.fo.rounds.Add(1)
	s.fo.mu.Unlock()
	go func() {
		defer s.fo.rounds.Done()
		elected := s.round(k)
		s.fo.mu.Lock()
		delete(s.fo.running, k)
		if !elected {
			s.fo.checked[k] = time.Now()
		}
		s.fo.mu.Unlock()
	}()
}

// round checks leader k.Leader here and at every other voter at once, and
// if a quorum of voters finds it unreachable, has the best of them
// campaign. It reports whether it started an election.
func (s *Store) round(k Suspicion) bool {
	ctx, cancel := context.WithTimeout(s.life, checkTimeout)
	defer cancel()
	voters := s.voterIDs()
	if !slices.Contains(voters, k.Leader) {
		return false
	}
	quorum := len(voters)/2 + 1
	type answer struct {
		id string
		v  Verdict
	}
	answers := make(chan answer, len(voters))
	asked := 0
	for _, id := range voters {
		if id == k.Leader || id == s.cfg.NodeID {
			continue
		}
		asked++
		go func() {
			v, err := s.cfg.Peers.CheckLeader(ctx, id, k)
			if err != nil {
				v = Verdict{}
			}
			answers <- answer{id, v}
		}()
	}
	own := s.check(ctx, k)
	if !own.Unreachable {
		cancel() // the others' checks are moot
		s.count(func(st *FailoverStats) { st.Alive++ })
		return false
	}
	confirmed := map[string]Verdict{}
	if slices.Contains(voters, s.cfg.NodeID) {
		confirmed[s.cfg.NodeID] = own
	}
	electing := own.Electing
	for range asked {
		a := <-answers
		electing = electing || a.v.Electing
		if a.v.Unreachable {
			confirmed[a.id] = a.v
		}
	}
	if s.life.Err() != nil {
		return false // this node stops
	}
	if electing {
		s.log.Info("leader unreachable, and an election is already under way", "leader", k.Leader, "term", k.Term)
		return false
	}
	if len(confirmed) < quorum {
		s.log.Info("leader unreachable from here but not from a quorum of voters: no election", "leader", k.Leader, "term", k.Term, "confirmed", len(confirmed), "quorum", quorum)
		s.count(func(st *FailoverStats) { st.Unconfirmed++ })
		return false
	}
	best := campaigner(confirmed, quorum)
	if best == "" {
		return false
	}
	s.log.Warn("leader unreachable from a quorum of voters: starting an election", "leader", k.Leader, "term", k.Term, "candidate", best)
	var err error
	if best == s.cfg.NodeID {
		err = s.Campaign(k)
	} else {
		err = s.cfg.Peers.Campaign(ctx, best, k)
	}
	if err != nil {
		s.log.Warn("election on a confirmed suspicion not started", "candidate", best, "err", err)
		return false
	}
	return true
}

// campaigner picks, among the confirming voters that can campaign, the
// one with the most up-to-date log, the lowest ID among equals (concurrent
// rounds on different nodes pick the same one), provided a quorum of the
// confirming voters would grant it their vote: voters refuse a candidate
// whose log is behind theirs. "" if none qualifies.
func campaigner(confirmed map[string]Verdict, quorum int) string {
	behind := func(a, b Verdict) bool { // a's log is behind b's
		return a.LastTerm < b.LastTerm || (a.LastTerm == b.LastTerm && a.LastIndex < b.LastIndex)
	}
	ids := slices.Sorted(maps.Keys(confirmed))
	slices.SortStableFunc(ids, func(a, b string) int {
		switch va, vb := confirmed[a], confirmed[b]; {
		case behind(vb, va):
			return -1
		case behind(va, vb):
			return 1
		}
		return 0
	})
	for _, v := range confirmed {
		if v.Electing {
			return "" // one election at a time
		}
	}
	for _, id := range ids {
		c := confirmed[id]
		if !c.CanCampaign {
			continue
		}
		grant := 0
		for _, v := range confirmed {
			if !behind(c, v) {
				grant++
			}
		}
		if grant >= quorum {
			return id
		}
	}
	return ""
}

// CheckLeader answers another node's suspicion: this node probes the
// leader itself (the node API's check).
func (s *Store) CheckLeader(ctx context.Context, k Suspicion) Verdict {
	if s.cfg.Peers == nil {
		return Verdict{}
	}
	return s.check(ctx, k)
}

// check probes k.Leader unless this node knows better (it leads, or
// follows another leader), and records a finding that it is unreachable.
func (s *Store) check(ctx context.Context, k Suspicion) Verdict {
	var v Verdict
	v.LastTerm, v.LastIndex = s.lastEntry()
	s.fo.mu.Lock()
	v.Electing = s.electingLocked(k)
	s.fo.mu.Unlock()
	if k.Leader == s.cfg.NodeID || s.IsLeader() {
		return v
	}
	if lid := s.LeaderID(); lid != "" && lid != k.Leader {
		return v // a newer leader: the asker will hear of it
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	p := s.cfg.Peers.Probe(pctx, k.Leader)
	cancel()
	if errors.Is(ctx.Err(), context.Canceled) {
		return v // the asker went away, or this node stops: no finding
	}
	if !p.gone(k.Term) {
		return v
	}
	v.Unreachable = true
	s.fo.mu.Lock()
	s.fo.initLocked()
	s.fo.confirmed[k] = time.Now()
	s.fo.mu.Unlock()
	v.CanCampaign = s.canCampaign(k)
	return v
}

// electingLocked reports whether this node's own election on k is under
// way (see Verdict.Electing). s.fo.mu is held.
func (s *Store) electingLocked(k Suspicion) bool {
	if s.fo.campaigned != k || time.Since(s.fo.campaignedAt) >= electionGrace {
		return false
	}
	st := s.raft.State()
	return st == raft.Candidate || st == raft.Leader
}

// canCampaign reports whether a TimeoutNow would make this node a
// candidate that may replace k.Leader: a voter and a follower that still
// follows k.Leader in k.Term, or knows no leader in k.Term or later. The
// second case is an election after the suspicion that went nowhere: a
// voter that granted another's vote and then took its own TimeoutNow
// (rounds on two nodes that picked differently while a log still grew)
// becomes a candidate whose log is behind, which unseats the new leader
// and cannot win; without this, only Raft's timers would end that.
func (s *Store) canCampaign(k Suspicion) bool {
	return k.campaignable(s.raft.State(), s.isVoter(raft.ServerID(s.cfg.NodeID)), s.raft.CurrentTerm(), s.LeaderID())
}

// campaignable is canCampaign for a node in Raft state st, a voter or not,
// in term, following leader ("" for none).
func (k Suspicion) campaignable(st raft.RaftState, voter bool, term uint64, leader string) bool {
	if st != raft.Follower || !voter {
		return false
	}
	return (term == k.Term && leader == k.Leader) || (term >= k.Term && leader == "")
}

// Campaign starts an election on a suspicion this node confirmed lately
// (the node API's campaign, or this node's own round): it sends its own
// Raft a TimeoutNow, as a leader handing over would. Its vote requests then
// carry the leadership-transfer flag, which voters grant while they still
// know the old leader. The TimeoutNow goes to this node's own Raft
// listener over the mesh (routed locally). Once per suspicion.
func (s *Store) Campaign(k Suspicion) error {
	s.fo.mu.Lock()
	at, ok := s.fo.confirmed[k]
	switch {
	case !ok || time.Since(at) > confirmFresh:
		s.fo.mu.Unlock()
		return errNotConfirmed
	case s.fo.campaigned == k && time.Since(s.fo.campaignedAt) < electionGrace:
		s.fo.mu.Unlock()
		return nil
	case !s.canCampaign(k):
		s.fo.mu.Unlock()
		return errCannotCampaign
	}
	s.fo.campaigned, s.fo.campaignedAt = k, time.Now()
	s.fo.mu.Unlock()
	self := raft.ServerAddress(s.cfg.Addr.String())
	err := s.trans.TimeoutNow(raft.ServerID(s.cfg.NodeID), self, &raft.TimeoutNowRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(s.cfg.NodeID), Addr: []byte(self)},
	}, &raft.TimeoutNowResponse{})
	s.fo.mu.Lock()
	if err != nil {
		s.fo.campaigned = Suspicion{} // a later round may try again
	} else {
		s.fo.stats.Elections++
	}
	s.fo.mu.Unlock()
	return err
}

// RaftProbe is this node's answer to a probe (the node API's).
func (s *Store) RaftProbe() Probe {
	term, leader := s.Beat()
	return Probe{Reached: true, Answered: true, Term: term, Leader: leader}
}

// FailoverStats counts this node's failover rounds.
func (s *Store) FailoverStats() FailoverStats {
	s.fo.mu.Lock()
	defer s.fo.mu.Unlock()
	return s.fo.stats
}

func (s *Store) count(f func(*FailoverStats)) {
	s.fo.mu.Lock()
	f(&s.fo.stats)
	s.fo.mu.Unlock()
}

// closeFailover stops new rounds and waits for those running (their
// context ends with s.life).
func (s *Store) closeFailover() {
	s.fo.mu.Lock()
	s.fo.closed = true
	s.fo.mu.Unlock()
	s.fo.rounds.Wait()
}

// voterIDs are the voters of the latest configuration.
func (s *Store) voterIDs() []string {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var out []string
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter {
			out = append(out, string(srv.ID))
		}
	}
	return out
}

// lastEntry is the term and index of this node's last log entry (or
// snapshot), which voters compare with a candidate's.
func (s *Store) lastEntry() (term, index uint64) {
	st := s.raft.Stats()
	num := func(k string) uint64 { n, _ := strconv.ParseUint(st[k], 10, 64); return n }
	term, index = num("last_log_term"), num("last_log_index")
	if si := num("last_snapshot_index"); si > index {
		term, index = num("last_snapshot_term"), si
	}
	return term, index
}

package raftstore

import (
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// quietTransport makes an idle cluster's Raft silent on the wire.
//
// hashicorp/raft keeps every follower busy while nothing happens: the
// leader heartbeats each one every HeartbeatTimeout/10 and re-sends an empty
// AppendEntries every CommitTimeout to refresh the commit index. On a
// 5-node cluster that was several MB per hour per node: most of the control
// traffic budget. The agents already hear from each other every 5 s on the
// health plane (gossip heartbeats inside WireGuard), and those heartbeats
// carry each node's Raft term and whether it leads. So:
//
//   - Leader side: an AppendEntries without entries that repeats the last
//     one the follower accepted (same term, previous entry and commit
//     index) is answered here with that follower's last response, as long
//     as its health heartbeat is fresh and reports our term. It would change
//     nothing on the follower but its last-contact time. Everything else
//     (entries, a new commit index, votes, snapshots, the first heartbeat of
//     a term) goes over the wire, and so does everything to a follower
//     whose heartbeats stopped: then Raft behaves exactly as without this.
//   - Follower side: a health heartbeat from the leader becomes a Raft
//     heartbeat handed to Raft's heartbeat handler, as if it had come over
//     the network, so followers keep their leader while the wire is quiet.
//     Only a beat that repeats what Raft knows is handed over: from the
//     leader Raft already follows, in Raft's current term (the store checks
//     it, Store.ObserveBeat). A beat never raises the term or installs a
//     leader, so a follower that has no leader (it just restarted) says so
//     in its beats, and the leader then sends it Raft's heartbeats over the
//     wire until it follows again.
//
// Safety does not depend on any of this: heartbeats carry no entries and no
// commit index, and every write still needs real acknowledgements from a
// quorum. Liveness depends on the health plane instead of Raft's own
// heartbeats, so Raft's HeartbeatTimeout must exceed the heartbeat interval
// (see agent/raft_timing.go). Raft pipelines only while a follower has
// entries to catch up on, and replicates synchronously once it is idle,
// which lets the idle commit refreshes be suppressed here (quietpipe.go).
type quietTransport struct {
	inner *raft.NetworkTransport
	// fresh is how recent a follower's health heartbeat must be for its
	// repeated AppendEntries to be answered locally.
	fresh time.Duration
	now   func() time.Time

	mu sync.Mutex
	// peers are what this node knows of each server, by Raft ID; guarded
	// by mu.
	peers map[raft.ServerID]*quietPeer
	// heartbeat is Raft's heartbeat fast path; guarded by mu.
	heartbeat func(raft.RPC)
	// suppressed and sent count AppendEntries without entries; guarded by mu.
	suppressed, sent uint64
	// pipelines counts the network pipelines opened, pipelined the appends
	// sent through them (quietpipe.go); guarded by mu.
	pipelines, pipelined uint64
}

// maxBeatTermAhead bounds how far above our term a beat's term may be
// and still be recorded: Raft terms move one election at a time, so a
// peer a little ahead is real (it saw an election we have not), and one
// far ahead is a lie.
const maxBeatTermAhead = 2

type quietPeer struct {
	beatAt time.Time // last health heartbeat from the peer
	term   uint64    // the Raft term it reported then
	// leaderless: the peer said it follows no leader; its idle traffic
	// then goes over the wire so that it hears one.
	leaderless bool
	// busy: the last append that went to the peer over the wire carried
	// entries, so Raft may pipeline to it (quietpipe.go).
	busy bool
	// The last entry-less AppendEntries of each kind the peer accepted over
	// the wire, with its answer. Raft interleaves two kinds: heartbeats
	// (no previous entry, no commit index) and commit refreshes.
	heartbeat, refresh repeatable
}

type repeatable struct {
	req  *raft.AppendEntriesRequest // nil: nothing to repeat
	resp raft.AppendEntriesResponse
}

// kind picks the repeatable of args' kind.
func (p *quietPeer) kind(args *raft.AppendEntriesRequest) *repeatable {
	if args.PrevLogEntry == 0 && args.LeaderCommitIndex == 0 {
		return &p.heartbeat
	}
	return &p.refresh
}

var (
	_ raft.Transport   = (*quietTransport)(nil)
	_ raft.WithClose   = (*quietTransport)(nil)
	_ raft.WithPreVote = (*quietTransport)(nil)
)

func newQuietTransport(inner *raft.NetworkTransport, fresh time.Duration) *quietTransport {
	return &quietTransport{inner: inner, fresh: fresh, now: time.Now, peers: map[raft.ServerID]*quietPeer{}}
}

func (q *quietTransport) peer(id raft.ServerID) *quietPeer {
	p := q.peers[id]
	if p == nil {
		p = &quietPeer{}
		q.peers[id] = p
	}
	return p
}

// observeBeat records a health heartbeat from server id, which reported
// term (ours is ourTerm) and whether it follows no leader. A non-empty
// leaderAddr says the store checked that id is the leader Raft follows in
// ourTerm, at that address: the beat then becomes a Raft heartbeat.
func (q *quietTransport) observeBeat(id raft.ServerID, leaderAddr raft.ServerAddress, term, ourTerm uint64, leaderless bool) {
	if term > ourTerm && term-ourTerm > maxBeatTermAhead {
		return
	}
	q.mu.Lock()
	p := q.peer(id)
	p.beatAt, p.term, p.leaderless = q.now(), term, leaderless
	hb := q.heartbeat
	q.mu.Unlock()
	if leaderAddr == "" || hb == nil || term != ourTerm || term == 0 {
		return
	}
	// The shape NetworkTransport recognises as a heartbeat, so Raft treats
	// it exactly like one off the wire: it resets the election timer. The
	// term and leader are the ones Raft already has, so nothing else
	// changes; should Raft have moved on meanwhile, it refuses the older
	// term.
	hb(raft.RPC{
		Command: &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(id), Addr: []byte(leaderAddr)},
			Term:      term,
			Leader:    []byte(leaderAddr),
		},
		RespChan: make(chan raft.RPCResponse, 1),
	})
}

// lastBeat is when server id's last health heartbeat came (zero: none).
func (q *quietTransport) lastBeat(id raft.ServerID) time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	if p := q.peers[id]; p != nil {
		return p.beatAt
	}
	return time.Time{}
}

func (q *quietTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if len(args.Entries) > 0 {
		q.mu.Lock()
		if p := q.peers[id]; p != nil {
			p.refresh.req = nil
		}
		q.mu.Unlock()
		err := q.inner.AppendEntries(id, target, args, resp)
		q.mu.Lock()
		q.peer(id).busy = err == nil && resp.Success
		q.mu.Unlock()
		return err
	}
	q.mu.Lock()
	if p := q.peers[id]; p != nil && q.repeats(p, args) {
		*resp = p.kind(args).resp
		q.suppressed++
		q.mu.Unlock()
		return nil
	}
	q.sent++
	q.mu.Unlock()

	err := q.inner.AppendEntries(id, target, args, resp)

	q.mu.Lock()
	k := q.peer(id).kind(args)
	if err == nil && resp.Success && resp.Term == args.Term {
		last := *args
		k.req, k.resp = &last, *resp
	} else {
		k.req = nil
	}
	q.mu.Unlock()
	return err
}

// repeats reports whether args would only repeat what p last accepted of
// its kind, and p's health heartbeat says it is alive, in args' term and
// following a leader.
func (q *quietTransport) repeats(p *quietPeer, args *raft.AppendEntriesRequest) bool {
	l := p.kind(args).req
	return l != nil && l.Term == args.Term && l.PrevLogEntry == args.PrevLogEntry && l.PrevLogTerm == args.PrevLogTerm &&
		l.LeaderCommitIndex == args.LeaderCommitIndex &&
		p.term == args.Term && !p.leaderless && !p.beatAt.IsZero() && (staleBeatsAnswered || q.now().Sub(p.beatAt) < q.fresh)
}

func (q *quietTransport) stats() (suppressed, sent uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.suppressed, q.sent
}

func (q *quietTransport) SetHeartbeatHandler(cb func(raft.RPC)) {
	q.mu.Lock()
	q.heartbeat = cb
	q.mu.Unlock()
	q.inner.SetHeartbeatHandler(cb)
}

func (q *quietTransport) Consumer() <-chan raft.RPC              { return q.inner.Consumer() }
func (q *quietTransport) LocalAddr() raft.ServerAddress          { return q.inner.LocalAddr() }
func (q *quietTransport) DecodePeer(b []byte) raft.ServerAddress { return q.inner.DecodePeer(b) }
func (q *quietTransport) EncodePeer(id raft.ServerID, a raft.ServerAddress) []byte {
	return q.inner.EncodePeer(id, a)
}
func (q *quietTransport) Close() error { return q.inner.Close() }

func (q *quietTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return q.inner.RequestVote(id, target, args, resp)
}

func (q *quietTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return q.inner.RequestPreVote(id, target, args, resp)
}

func (q *quietTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	return q.inner.InstallSnapshot(id, target, args, resp, data)
}

func (q *quietTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return q.inner.TimeoutNow(id, target, args, resp)
}

package agent

import "time"

// Production Raft timing, chosen for an idle cluster's footprint (see
// BenchmarkFootprint in e2e and README "Health and metrics").
//
// hashicorp/raft keeps followers busy while nothing happens: heartbeats
// every HeartbeatTimeout/10 and a commit-index refresh every CommitTimeout.
// At 5 idle nodes that was 4 MB/h per follower and 17 MB/h on the leader,
// inside WireGuard. The health plane already carries each node's term and
// leadership every 5 s, so the Raft store stands it in for those repeats
// (raftstore.quietTransport): an idle cluster sends no Raft traffic at all.
//
//   - HeartbeatTimeout 11 s: followers keep their leader from its health
//     heartbeats (every 5 s) and tolerate one lost; a dead leader is
//     replaced 11-22 s after it stops, within the 30 s after which the
//     others show it offline. A freshly started single node elects itself
//     as late.
//   - CommitTimeout 250 ms: followers apply the last write of a burst up to
//     0.25-0.5 s after the leader. The refreshes that repeat themselves
//     are answered locally, so a short timeout costs no traffic.
const (
	raftHeartbeatTimeout = 11 * time.Second
	raftElectionTimeout  = 11 * time.Second
	raftCommitTimeout    = 250 * time.Millisecond
)

func (a *Agent) raftHeartbeat() time.Duration {
	if a.tuning.RaftHeartbeat > 0 {
		return a.tuning.RaftHeartbeat
	}
	return raftHeartbeatTimeout
}

func (a *Agent) raftElection() time.Duration {
	if a.tuning.RaftElection > 0 {
		return a.tuning.RaftElection
	}
	return raftElectionTimeout
}

// raftCommitTimeout keeps raft's 50 ms for tests that shorten Raft's timers.
func (a *Agent) raftCommitTimeout() time.Duration {
	if a.tuning.RaftHeartbeat > 0 {
		return 0
	}
	return raftCommitTimeout
}

// raftQuietFresh is how recent a follower's health heartbeat must be for
// the leader to skip Raft's repeated messages to it: the Raft heartbeat
// timeout, which must leave room for a lost health heartbeat (tests with
// Raft timers shorter than that run plain Raft).
func (a *Agent) raftQuietFresh() time.Duration {
	if hb := a.raftHeartbeat(); hb >= 2*a.heartbeatInterval() {
		return hb
	}
	return 0
}

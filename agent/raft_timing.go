package agent

import "time"

// Production Raft timing, chosen for an idle cluster's footprint (see
// BenchmarkFootprint in e2e and README "Health and metrics").
//
// hashicorp/raft's defaults send every follower two streams of
// AppendEntries while idle: heartbeats every HeartbeatTimeout/10 (1 s: every
// 100-200 ms) and a commit-index refresh every CommitTimeout (50 ms: every
// 50-100 ms). At 5 idle nodes that was ~29 MB/h per follower inside wg0 and
// ~1.4 % of a core per agent, more than everything else together.
//
//   - HeartbeatTimeout 3 s: heartbeats every 0.3-0.6 s; a dead leader is
//     replaced 3-6 s after it stops (was 1-2 s), still well inside the 10 s
//     after which the others show it degraded. A freshly started single
//     node elects itself as late.
//   - CommitTimeout 1 s: followers apply the last write of a burst up to
//     1-2 s after the leader (was 50-100 ms). It must stay under the 3 s a
//     removed node lingers to learn its own removal.
const (
	raftHeartbeatTimeout = 3 * time.Second
	raftElectionTimeout  = 3 * time.Second
	raftCommitTimeout    = time.Second
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

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
//   - HeartbeatTimeout 8 s: followers keep their leader from its health
//     heartbeats (every 5 s). A dead leader is replaced 8-24 s after it
//     stops (Raft's follower timer fires every 8-16 s and acts once the
//     leader has been silent 8 s), before the others show it offline at
//     30 s. A single lost heartbeat can make a follower ask for a pre-vote,
//     which the others refuse while they still hear the leader: no term
//     change, no disruption.
//   - 3 s while the configuration has a single voter (a new cluster, a
//     one-node cluster). Switching to it wakes Raft's follower timer, and a
//     node that has never heard a leader campaigns at once: `run` after
//     `init` takes a token 0.13 s after it starts (measured). This is
//     also the leader lease, well above the leader's longest heartbeat gap
//     (8 s / 5), which the quiet transport answers locally.
//   - CommitTimeout 250 ms: followers apply the last write of a burst
//     0.35 s after the leader on average, 0.5 s at most
//     (BenchmarkFollowerApplyLag). The refreshes that repeat themselves
//     are answered locally, so a short timeout costs no traffic.
const (
	raftHeartbeatTimeout = 8 * time.Second
	raftElectionTimeout  = 8 * time.Second
	raftCommitTimeout    = 250 * time.Millisecond
	raftSoloTimeout      = 3 * time.Second
)

// writeTimeout is how long a write from the CLI, UI or a joiner may wait:
// long enough to ride out a leader failover (up to 24 s, see above).
const writeTimeout = 40 * time.Second

// raftSolo is the timeout while this node is the only voter (production
// timing only; tests' short timers need no switch).
func (a *Agent) raftSolo() time.Duration {
	if a.tuning.RaftHeartbeat > 0 || a.raftQuietFresh() == 0 {
		return 0
	}
	return raftSoloTimeout
}

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
	if hb := a.raftHeartbeat(); hb > a.heartbeatInterval()+a.heartbeatInterval()/2 {
		return hb
	}
	return 0
}

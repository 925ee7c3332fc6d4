package raftstore

import "time"

// Production Raft timing, chosen for an idle cluster's footprint (see
// BenchmarkFootprint in e2e and README "Health and metrics").
//
// hashicorp/raft keeps followers busy while nothing happens: heartbeats
// every HeartbeatTimeout/10 and a commit-index refresh every CommitTimeout.
// At 5 idle nodes that was 4 MB/h per follower and 17 MB/h on the leader,
// inside WireGuard. The health plane already carries each node's term and
// leadership every 5 s, so the store stands it in for those repeats
// (quietTransport): an idle cluster sends no Raft traffic at all.
//
//   - HeartbeatTimeout 8 s: followers keep their leader from its health
//     heartbeats (every 5 s). Left to Raft's timer, a dead leader is
//     replaced 8-24 s after it stops (the follower timer fires every 8-16 s
//     and acts once the leader has been silent 8 s). A single lost
//     heartbeat can make a follower ask for a pre-vote, which the others
//     refuse while they still hear the leader: no term change, no
//     disruption.
//   - Failover on demand (failover.go) makes that wait rare: nobody needs
//     a new leader while nothing is written. A write that waits on a
//     leader (a forward failing, or unanswered for 0.25 s) has the node
//     probe the leader (0.75 s) while every other voter does the same;
//     when a quorum of voters finds it unreachable, the most up-to-date
//     of them that still follows it starts an election at once (a
//     TimeoutNow to itself): kill -9 of the leader to a write committed
//     through a survivor takes about 1.0 s (BenchmarkLeaderFailover, in
//     process and in the kernel lab). Idle, nothing changes: no probe is
//     sent while no write waits. A follower that merely lost its own link
//     to a live leader finds no quorum agreeing: no election.
//   - Planned stops cost nothing: a leader that stops (SIGTERM, `run`
//     exiting) first hands leadership over (HandOverLeadership: Raft's
//     leadership transfer, the next term, no timer): the next write
//     through a survivor commits about 30 ms after the signal
//     (BenchmarkLeaderStop). Should the handover fail, the leader's
//     goodbye heartbeat starts the same check at once (ObserveBye).
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
	DefaultHeartbeatTimeout     = 8 * time.Second
	DefaultElectionTimeout      = 8 * time.Second
	DefaultCommitTimeout        = 250 * time.Millisecond
	DefaultSoloHeartbeatTimeout = 3 * time.Second
)

// Timing is the part of Config that sets Raft's timers.
type Timing struct {
	HeartbeatTimeout     time.Duration
	ElectionTimeout      time.Duration
	CommitTimeout        time.Duration
	QuietFresh           time.Duration
	SoloHeartbeatTimeout time.Duration
}

// TimingFor is the production timing above for a node whose health
// heartbeats come every beat. A non-zero heartbeat or election (tests'
// short timers) replaces that timer; a short heartbeat also keeps Raft's
// own commit timeout and has no single-voter switch. The health plane
// stands in for Raft's idle traffic only when the heartbeat timeout leaves
// room for a lost health heartbeat (QuietFresh is then the heartbeat
// timeout; zero otherwise: plain Raft).
func TimingFor(heartbeat, election, beat time.Duration) Timing {
	t := Timing{
		HeartbeatTimeout:     DefaultHeartbeatTimeout,
		ElectionTimeout:      DefaultElectionTimeout,
		CommitTimeout:        DefaultCommitTimeout,
		SoloHeartbeatTimeout: DefaultSoloHeartbeatTimeout,
	}
	if heartbeat > 0 {
		t.HeartbeatTimeout, t.CommitTimeout, t.SoloHeartbeatTimeout = heartbeat, 0, 0
	}
	if election > 0 {
		t.ElectionTimeout = election
	}
	if t.HeartbeatTimeout > beat+beat/2 {
		t.QuietFresh = t.HeartbeatTimeout
	} else {
		t.SoloHeartbeatTimeout = 0
	}
	return t
}

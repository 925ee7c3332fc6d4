package raftstore

import (
	"math"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// A health beat reaches Raft's heartbeat handler only when the store
// vouched for it (leaderAddr set: the leader Raft follows, in its term),
// never with another term; a term far above ours is not even recorded.
func TestQuietObserveBeatSanity(t *testing.T) {
	now := time.Unix(1000, 0)
	q := &quietTransport{fresh: time.Second, now: func() time.Time { return now }, peers: map[raft.ServerID]*quietPeer{}}
	var handed []*raft.AppendEntriesRequest
	q.heartbeat = func(rpc raft.RPC) { handed = append(handed, rpc.Command.(*raft.AppendEntriesRequest)) }

	q.observeBeat("b", "", 5, 5, false) // a claim the store did not vouch for
	q.observeBeat("b", "10.0.0.2:7947", 6, 5, false)
	q.observeBeat("b", "10.0.0.2:7947", math.MaxUint64, 5, false)
	if len(handed) != 0 {
		t.Fatalf("handed to Raft: %+v", handed)
	}
	if p := q.peers["b"]; p == nil || p.term != 6 {
		t.Fatalf("a term one ahead is not recorded: %+v", p)
	}
	q.observeBeat("b", "", math.MaxUint64, 5, false)
	q.observeBeat("b", "", 5+maxBeatTermAhead+1, 5, false)
	if p := q.peers["b"]; p.term != 6 {
		t.Fatalf("a term far ahead was recorded: %d", p.term)
	}

	q.observeBeat("b", "10.0.0.2:7947", 5, 5, false)
	if len(handed) != 1 || handed[0].Term != 5 || string(handed[0].Leader) != "10.0.0.2:7947" {
		t.Fatalf("vouched beat: %+v", handed)
	}
}

// A peer that says it follows no leader gets its idle traffic over the
// wire, so that it hears the leader.
func TestQuietRepeatsNotForLeaderlessPeer(t *testing.T) {
	now := time.Unix(1000, 0)
	q := &quietTransport{fresh: time.Second, now: func() time.Time { return now }, peers: map[raft.ServerID]*quietPeer{}}
	args := &raft.AppendEntriesRequest{Term: 5}
	p := q.peer("b")
	p.heartbeat.req = args
	q.observeBeat("b", "", 5, 5, false)
	if !q.repeats(p, args) {
		t.Fatal("a fresh, following peer's repeated heartbeat is not answered locally")
	}
	q.observeBeat("b", "", 5, 5, true)
	if q.repeats(p, args) {
		t.Fatal("a leaderless peer's heartbeat answered locally")
	}
}

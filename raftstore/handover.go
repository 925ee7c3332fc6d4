package raftstore

import (
	"time"

	"github.com/hashicorp/raft"
)

// A leader that applied its own removal is cut off at once: every member
// drops its WireGuard peer, and it drops theirs, so it can neither replicate
// nor hand leadership over, and the rest wait out a full election (about
// 13 s with production timing). So the leader hands leadership to the most
// up-to-date voter BEFORE it applies such a removal, and the write goes to
// the new leader through the usual retry (ErrNotLeader).

// removesSelf reports whether cmd removes this node (directly or as a cloud
// command).
func (s *Store) removesSelf(cmd *Command) bool {
	if cmd.Op == OpCloudExec && cmd.Cloud != nil && cmd.Cloud.Inner != nil {
		cmd = cmd.Cloud.Inner
	}
	if cmd.Op != OpRemoveNode || cmd.RemoveNode == nil {
		return false
	}
	st, _ := s.fsm.State()
	n := st.NodeByName(cmd.RemoveNode.Name)
	return n != nil && n.ID == s.cfg.NodeID
}

// handOver transfers leadership before this leader applies its own
// removal. It reports false when there is no one to hand over to (the only
// voter): the removal then applies here, as it always did.
func (s *Store) handOver() bool {
	return s.transfer("this node's removal", 0)
}

// HandOverLeadership hands leadership to another live voter before this
// node stops on purpose (SIGTERM, `run` exiting, a reboot), waiting at most
// wait: the others then need no election timeout, and the node's last
// writes are not stranded. It reports whether leadership moved; a follower
// has nothing to do.
func (s *Store) HandOverLeadership(wait time.Duration) bool {
	if !s.IsLeader() {
		return false
	}
	return s.transfer("this node's stop", wait)
}

// transfer hands leadership to a voter gossip sees alive, the one whose
// health heartbeat came last (Raft first brings it up to date, then sends
// it TimeoutNow: it is elected with the next term, no timer involved).
// wait bounds it (0: Raft's own bound, the election timeout); a transfer
// still running then ends with Raft.
func (s *Store) transfer(why string, wait time.Duration) bool {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	var target *raft.Server
	var targetBeat time.Time
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage != raft.Voter || srv.ID == raft.ServerID(s.cfg.NodeID) || !s.cfg.Alive(string(srv.ID)) {
			continue
		}
		var beat time.Time
		if s.quiet != nil {
			beat = s.quiet.lastBeat(srv.ID)
		}
		if target == nil || beat.After(targetBeat) {
			target, targetBeat = &srv, beat
		}
	}
	if target == nil {
		return false
	}
	t0 := time.Now()
	done := make(chan error, 1)
	go func() { done <- s.raft.LeadershipTransferToServer(target.ID, target.Address).Error() }()
	var timeout <-chan time.Time
	if wait > 0 {
		timer := time.NewTimer(wait)
		defer timer.Stop()
		timeout = timer.C
	}
	moved := false
	defer func() {
		s.count(func(st *FailoverStats) {
			if moved {
				st.HandedOver++
			} else {
				st.HandOverFailed++
			}
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			s.log.Warn("hand over leadership before "+why, "to", target.ID, "err", err)
			moved = s.raft.State() != raft.Leader
			return moved
		}
	case <-timeout:
		s.log.Warn("hand over leadership before "+why+": no new leader in time", "to", target.ID, "waited", wait)
		return false
	}
	s.log.Info("handed leadership over before "+why, "to", target.ID, "took", time.Since(t0))
	moved = true
	return true
}

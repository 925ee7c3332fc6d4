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
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	others := 0
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter && srv.ID != raft.ServerID(s.cfg.NodeID) {
			others++
		}
	}
	if others == 0 {
		return false
	}
	t0 := time.Now()
	if err := s.raft.LeadershipTransfer().Error(); err != nil {
		s.log.Warn("hand over leadership before this node's removal", "err", err)
		return s.raft.State() != raft.Leader
	}
	s.log.Info("handed leadership over before this node's removal", "took", time.Since(t0))
	return true
}

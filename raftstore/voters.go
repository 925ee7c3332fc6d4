package raftstore

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// ManageVoters is a leader task (see package leader): while ctx lives (this
// node leads) it keeps the Raft configuration in line with the state: every
// node in the state is a server, removed nodes are not, and up to MaxVoters
// (odd) live servers vote. Gossip events wake it through Hint; the ticker
// catches anything a hint missed.
func (s *Store) ManageVoters(ctx context.Context) error {
	s.recordEvent(ctx, Event{Kind: EventLeaderChanged, Node: s.nodeName(s.cfg.NodeID)})
	defer func() {
		// Down times are this leadership's observations; the next leader
		// starts its grace periods afresh.
		s.mu.Lock()
		clear(s.downSince)
		s.mu.Unlock()
	}()
	t := time.NewTicker(s.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		if err := s.reconcileMembership(time.Now()); err != nil {
			s.log.Warn("membership reconcile failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.hint:
		case <-s.fsm.Changed():
		}
	}
}

// plan is one step of membership change the leader should make.
type membershipPlan struct {
	add     []raft.Server // as non-voters
	remove  []raft.ServerID
	promote []raft.ServerID
	demote  []raft.ServerID
}

// planMembership decides the changes from the current configuration, the
// state's nodes (ID -> raft address), who is up, and who has been down past
// the grace period. It is pure so the voter rules can be table-tested.
func planMembership(self raft.ServerID, servers []raft.Server, nodes map[raft.ServerID]raft.ServerAddress,
	up, deadLong, removable func(raft.ServerID) bool, maxVoters int) membershipPlan {
	var p membershipPlan
	inConf := map[raft.ServerID]raft.Server{}
	for _, srv := range servers {
		inConf[srv.ID] = srv
		if _, ok := nodes[srv.ID]; !ok {
			switch {
			case removable(srv.ID):
				p.remove = append(p.remove, srv.ID)
			case srv.Suffrage == raft.Voter:
				// A removed node that still lingers must stop counting
				// toward quorum at once: it is about to go silent.
				p.demote = append(p.demote, srv.ID)
			}
		}
	}
	for id, addr := range nodes {
		// A node joins the configuration once gossip sees it running: a
		// joined machine that never starts (or not yet) would only be a
		// replication target that fails every few milliseconds.
		if _, ok := inConf[id]; !ok && up(id) {
			p.add = append(p.add, raft.Server{Suffrage: raft.Nonvoter, ID: id, Address: addr})
		}
	}
	slices.SortFunc(p.add, func(a, b raft.Server) int { return compareIDs(a.ID, b.ID) })

	// A server counts toward the voter target while it is up or has not yet
	// been down past the grace period, so one missed heartbeat does not
	// reshuffle the voters. The leader is always up.
	var voters, liveNonvoters []raft.ServerID
	eligible := 0
	for _, srv := range servers {
		if _, ok := nodes[srv.ID]; !ok {
			continue
		}
		isUp := srv.ID == self || up(srv.ID)
		stays := isUp || !deadLong(srv.ID)
		if stays {
			eligible++
		}
		switch {
		case srv.Suffrage == raft.Voter && stays:
			voters = append(voters, srv.ID)
		case srv.Suffrage == raft.Voter:
			p.demote = append(p.demote, srv.ID)
		case isUp:
			liveNonvoters = append(liveNonvoters, srv.ID)
		}
	}
	target := min(maxVoters, eligible)
	if target%2 == 0 {
		target--
	}
	target = max(target, 1)
	slices.SortFunc(liveNonvoters, compareIDs)
	for len(voters) < target && len(liveNonvoters) > 0 {
		p.promote = append(p.promote, liveNonvoters[0])
		voters = append(voters, liveNonvoters[0])
		liveNonvoters = liveNonvoters[1:]
	}
	// Too many voters (an even count after a demotion, or more than the
	// cap): demote the surplus, down ones first, never the leader.
	if len(voters) > target {
		slices.SortFunc(voters, func(a, b raft.ServerID) int {
			ua, ub := a == self || up(a), b == self || up(b)
			if ua != ub {
				if !ua {
					return -1
				}
				return 1
			}
			return -compareIDs(a, b)
		})
		surplus := len(voters) - target
		for _, id := range voters {
			if surplus == 0 {
				break
			}
			if id != self {
				p.demote = append(p.demote, id)
				surplus--
			}
		}
	}
	slices.SortFunc(p.remove, compareIDs)
	return p
}

func compareIDs(a, b raft.ServerID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *Store) reconcileMembership(now time.Time) error {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	servers := f.Configuration().Servers
	clusterID, ips := s.fsm.meshIPs()
	if clusterID == "" {
		return nil // not bootstrapped yet: the config is init's
	}
	nodes := make(map[raft.ServerID]raft.ServerAddress, len(ips))
	for id, ip := range ips {
		nodes[raft.ServerID(id)] = raft.ServerAddress(netip.AddrPortFrom(ip, s.cfg.Addr.Port()).String())
	}
	self := raft.ServerID(s.cfg.NodeID)

	s.mu.Lock()
	upNow := map[raft.ServerID]bool{}
	for _, srv := range servers {
		if _, ok := nodes[srv.ID]; !ok {
			if _, ok := s.goneSince[srv.ID]; !ok {
				s.goneSince[srv.ID] = now
			}
		} else {
			delete(s.goneSince, srv.ID)
		}
		if srv.ID == self || s.cfg.Alive(string(srv.ID)) {
			upNow[srv.ID] = true
			delete(s.downSince, srv.ID)
		} else if _, ok := s.downSince[srv.ID]; !ok {
			s.downSince[srv.ID] = now
		}
	}
	for id := range nodes {
		if _, inConf := upNow[id]; !inConf && s.cfg.Alive(string(id)) {
			upNow[id] = true // a node not yet in the configuration
		}
	}
	goneSince := maps.Clone(s.goneSince)
	downSince := make(map[raft.ServerID]time.Time, len(s.downSince))
	for id, t := range s.downSince {
		downSince[id] = t
	}
	s.mu.Unlock()

	p := planMembership(self, servers, nodes,
		func(id raft.ServerID) bool { return upNow[id] },
		func(id raft.ServerID) bool {
			t, ok := downSince[id]
			return ok && now.Sub(t) >= s.cfg.DeadVoterGrace
		},
		// A removed node stays in the configuration for a moment, so the
		// entry that removes it still reaches it and it learns its fate.
		func(id raft.ServerID) bool {
			t, ok := goneSince[id]
			return ok && now.Sub(t) >= s.cfg.RemovalGrace
		}, s.cfg.MaxVoters)

	if len(p.add)+len(p.remove)+len(p.promote)+len(p.demote) > 0 {
		s.log.Debug("membership plan", "up", upNow, "add", p.add, "remove", p.remove, "promote", p.promote, "demote", p.demote)
	}
	const timeout = 10 * time.Second
	for _, id := range p.remove {
		s.log.Info("removing server of a removed node", "node_id", id)
		if err := s.raft.RemoveServer(id, 0, timeout).Error(); err != nil {
			return fmt.Errorf("remove %s: %w", id, err)
		}
	}
	for _, srv := range p.add {
		s.log.Info("adding non-voter", "node_id", srv.ID, "addr", srv.Address)
		if err := s.raft.AddNonvoter(srv.ID, srv.Address, 0, timeout).Error(); err != nil {
			return fmt.Errorf("add %s: %w", srv.ID, err)
		}
	}
	// Promote before demoting so the voter count never dips below what
	// quorum needs.
	for _, id := range p.promote {
		s.log.Info("promoting to voter", "node_id", id)
		if err := s.raft.AddVoter(id, nodes[id], 0, timeout).Error(); err != nil {
			return fmt.Errorf("promote %s: %w", id, err)
		}
		s.recordEvent(context.Background(), Event{Kind: EventVoterPromoted, Node: s.nodeName(string(id))})
	}
	for _, id := range p.demote {
		s.log.Info("demoting voter", "node_id", id, "down_since", downSince[id])
		if err := s.raft.DemoteVoter(id, 0, timeout).Error(); err != nil {
			return fmt.Errorf("demote %s: %w", id, err)
		}
		if _, ok := nodes[id]; ok {
			s.recordEvent(context.Background(), Event{Kind: EventVoterDemoted, Node: s.nodeName(string(id))})
		}
	}
	return nil
}

// recordEvent commits an event to the cluster's history; best effort, a
// lost event must never block the leader's duties.
func (s *Store) recordEvent(ctx context.Context, e Event) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.ApplyLocal(ctx, &Command{ID: NewCommandID(), Time: time.Now().UTC(), Op: OpEvent, Event: &e}); err != nil {
		s.log.Debug("event not recorded", "kind", e.Kind, "err", err)
	}
}

// RecordEvent commits an event observed by this node (health, paths)
// through the leader.
func (s *Store) RecordEvent(ctx context.Context, e Event) error {
	res, err := s.Apply(ctx, &Command{Op: OpEvent, Event: &e})
	if err != nil {
		return err
	}
	return res.Error()
}

func (s *Store) nodeName(id string) string {
	if n, ok := s.fsm.Node(id); ok {
		return n.Name
	}
	return id
}

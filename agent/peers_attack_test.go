package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/runos/runos-agent/raftstore"
)

// Attack: a member advertises 0.0.0.0:9 as its endpoint. On the old code
// nat.SetPeers then refused every peer list, so later changes never reached
// WireGuard: a `node remove` of another node left its peer in place on
// every member. Now the bad endpoint is skipped and the removal applies.
func TestAttackBadEndpointBlocksNoPeerChange(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	var liar, victim *Agent
	liarIdx := -1
	for i, a := range c.agents {
		if a == l {
			continue
		}
		if liar == nil {
			liar, liarIdx = a, i
		} else {
			victim = a
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := liar.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpUpdateNode, UpdateNode: &raftstore.UpdateNodeCmd{
		NodeID: liar.cfg.NodeID, Endpoints: []string{"0.0.0.0:9", "224.0.0.1:51820", "127.0.0.1:0"}}})
	if err == nil {
		err = res.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
	// Let every member try the poisoned list before the removal.
	eventually(t, "members see the bad endpoints", func() error {
		for _, a := range c.agents {
			if n, ok := a.store.Node(liar.cfg.NodeID); !ok || len(n.Endpoints) != 3 {
				return errors.New("not yet")
			}
		}
		return nil
	})
	// A real agent republishes its true endpoints within a refresh; the
	// attacker does not. Stopping the liar keeps its record poisoned.
	c.stop(liarIdx)
	if n, _ := l.store.Node(liar.cfg.NodeID); len(n.Endpoints) != 3 {
		t.Skipf("the liar republished its endpoints before it stopped: %v", n.Endpoints)
	}
	// With the liar down, the victim's ack is needed for quorum: removed,
	// it drops every peer at once, and the leader of one of three voters
	// can commit nothing more (the removal's key rotation, which
	// RemoveNode waits for, included). Let the leader demote the stopped
	// liar (DeadVoterGrace) and with it the surplus voter, so it votes
	// alone, as it would with a node down for good.
	eventually(t, "the leader is the only voter", func() error {
		l := c.waitLeader()
		if v := l.store.Status().Voters; !slices.Equal(v, []string{l.cfg.NodeID}) {
			return fmt.Errorf("voters %v", v)
		}
		return nil
	})
	if err := c.waitLeader().RemoveNode(ctx, victim.Name()); err != nil {
		t.Fatal(err)
	}
	victimKey := victim.wgKey.PublicKey()
	for _, a := range []*Agent{c.waitLeader()} {
		eventually(t, a.Name()+" drops the removed node's peer", func() error {
			stats, err := a.dev.Stats()
			if err != nil {
				return err
			}
			for _, p := range stats {
				if p.PublicKey == victimKey {
					return errors.New("peer still configured")
				}
			}
			return nil
		})
	}
}

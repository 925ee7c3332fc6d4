package agent

import (
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/runos/runos-agent/gossip"
	"github.com/runos/runos-agent/health"
	"github.com/runos/runos-agent/hostinfo"
)

// newHealth builds the heartbeat sender and receiver. It needs the store
// and the device; the gossip transport, created after it, is reached
// through a.transport only when a heartbeat is sent. Heartbeats are sealed
// datagrams of their own on the gossip socket (routeBeats), not memberlist
// messages: memberlist gives no sender address, and the receiver binds
// every beat to the mesh IP of the node it names.
func (a *Agent) newHealth() (*health.Monitor, error) {
	return health.New(health.Config{
		Name:              a.cfg.Name,
		NodeID:            a.cfg.NodeID,
		MeshIP:            a.cfg.MeshIP,
		Version:           Version,
		HeartbeatInterval: a.tuning.HeartbeatInterval,
		HealthyWithin:     a.tuning.HealthyWithin,
		OfflineAfter:      a.tuning.OfflineAfter,
		Dwell:             a.tuning.HealthDwell,
		Since:             a.startedAt,
		Now:               a.now,
	}, health.Deps{
		Store: a.store,
		Host:  hostinfo.NewSampler(a.dir),
		Send: func(to *memberlist.Node, msg []byte) error {
			_, err := a.transport.WriteToAddress(msg, memberlist.Address{Addr: to.Address(), Name: to.Name})
			return err
		},
		DataKeys: a.dataKeys,
		MeshBytes: func() (rx, tx uint64, err error) {
			stats, err := a.dev.Stats()
			for _, p := range stats {
				rx += p.RxBytes
				tx += p.TxBytes
			}
			return rx, tx, err
		},
		Candidates:   a.ownCandidates,
		OnCandidates: a.wake,
		Log:          a.log.With("component", "health"),
	})
}

// routeBeats hands the sealed heartbeats arriving on the gossip socket to
// health, with their source address.
func (a *Agent) routeBeats(t *gossip.Transport) {
	t.HandlePrefix(health.FramePrefix, a.health.HandleFrame)
}

func (a *Agent) heartbeatInterval() time.Duration {
	if a.tuning.HeartbeatInterval > 0 {
		return a.tuning.HeartbeatInterval
	}
	return health.DefaultHeartbeatInterval
}

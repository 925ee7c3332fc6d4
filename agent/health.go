package agent

import (
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/runos/runos-agent/health"
	"github.com/runos/runos-agent/hostinfo"
)

// newHealth builds the heartbeat sender and receiver. It needs the store
// and the device; memberlist, created after it (it is memberlist's
// delegate), is reached through a.ml only when a heartbeat is sent.
func (a *Agent) newHealth() (*health.Monitor, error) {
	return health.New(health.Config{
		Name:              a.cfg.Name,
		NodeID:            a.cfg.NodeID,
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
			return a.ml.SendBestEffort(to, msg)
		},
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

func (a *Agent) heartbeatInterval() time.Duration {
	if a.tuning.HeartbeatInterval > 0 {
		return a.tuning.HeartbeatInterval
	}
	return health.DefaultHeartbeatInterval
}

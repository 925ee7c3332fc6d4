package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/raftstore"
)

// failoverPeers is raftstore.Peers over the node API and the mesh echo:
// failover on demand (raftstore/failover.go) probes a leader and asks the
// other voters about it only while a write waits.
type failoverPeers struct{ a *Agent }

var _ raftstore.Peers = failoverPeers{}

// echoRetry is how often a probe resends its echo: a lost datagram is not
// a dead node.
const echoRetry = 150 * time.Millisecond

// Probe asks the node's node API whether it leads and, at the same time,
// pings its echo. The node API's answer decides; without one, an echo
// that came back means the node is alive (a slow path: its node API may
// need a new TLS connection, several round trips), and an echo refused
// (the process is gone, its host answered with an ICMP unreachable) or
// silent until ctx's deadline means it is not.
func (p failoverPeers) Probe(ctx context.Context, nodeID string) raftstore.Probe {
	n := p.a.nodeByID(nodeID)
	if n == nil {
		return raftstore.Probe{}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	api := make(chan raftstore.Probe, 1)
	go func() {
		v, err := p.a.nodeClient.Probe(ctx, n.Name)
		if err != nil {
			v = raftstore.Probe{}
		}
		api <- v
	}()
	echo := make(chan bool, 1)
	go func() { echo <- p.a.echoAlive(ctx, n.MeshIP) }()
	var reached, apiDone, echoDone bool
	for !apiDone || !echoDone {
		select {
		case v := <-api:
			if v.Answered {
				return v
			}
			apiDone = true
		case ok := <-echo:
			reached, echoDone = ok, true
			if ok {
				// Alive; give its node API the rest of the time to say
				// whether it still leads.
				continue
			}
			return raftstore.Probe{}
		case <-ctx.Done():
			return raftstore.Probe{Reached: reached}
		}
	}
	return raftstore.Probe{Reached: reached}
}

// echoAlive pings ip's mesh echo until an answer (true), a refusal or
// ctx's end (false).
func (a *Agent) echoAlive(ctx context.Context, ip netip.Addr) bool {
	for seq := 0; ctx.Err() == nil; seq++ {
		tctx, cancel := context.WithTimeout(ctx, echoRetry)
		_, err := mesh.Ping(tctx, a.dev.Net(), netip.AddrPortFrom(ip, meshPingPort), seq)
		cancel()
		if err == nil {
			return true
		}
		if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
			return false // refused: nothing listens there any more
		}
	}
	return false
}

func (p failoverPeers) CheckLeader(ctx context.Context, nodeID string, s raftstore.Suspicion) (raftstore.Verdict, error) {
	n := p.a.nodeByID(nodeID)
	if n == nil {
		return raftstore.Verdict{}, fmt.Errorf("node %s is not in the local state", nodeID)
	}
	return p.a.nodeClient.CheckLeader(ctx, n.Name, s)
}

func (p failoverPeers) Campaign(ctx context.Context, nodeID string, s raftstore.Suspicion) error {
	n := p.a.nodeByID(nodeID)
	if n == nil {
		return fmt.Errorf("node %s is not in the local state", nodeID)
	}
	return p.a.nodeClient.Campaign(ctx, n.Name, s)
}

func (a *Agent) nodeByID(id string) *raftstore.Node {
	for _, n := range a.knownNodes() {
		if n.ID == id {
			return n
		}
	}
	return nil
}

package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"

	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/mesh"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
)

// The node API (mesh IP, mTLS) and the join endpoint (underlay TCP, TLS)
// are package httpapi's handlers; the agent gives them listeners.

var (
	_ httpapi.Node   = (*raftstore.Store)(nil)
	_ httpapi.Joiner = (*Agent)(nil)
)

func (a *Agent) startNodeAPI() error {
	h, err := httpapi.NewNodeHandler(a.store, a)
	if err != nil {
		return err
	}
	ln, err := a.dev.Net().Listen("tcp", netip.AddrPortFrom(a.cfg.MeshIP, NodeAPIPort).String())
	if err != nil {
		return fmt.Errorf("node api: %w", err)
	}
	// Members only: other sources (pods, wg1) never reach TLS, and the
	// rest must present their own recorded certificate (allowPeerCert).
	a.nodeAPIListener = mesh.FilterListener(ln, raftstore.MemberSources())
	a.serve(tls.NewListener(a.nodeAPIListener, a.mtlsServer), h, "node-api")
	return nil
}

// startJoinEndpoint serves joins on the underlay TCP port (the number of the
// WireGuard UDP port). TLS with this node's certificate: the joiner pins the
// CA fingerprint from its token.
func (a *Agent) startJoinEndpoint() error {
	h, err := httpapi.NewJoinHandler(a, httpapi.JoinLimits{})
	if err != nil {
		return err
	}
	tlsConf, err := pki.ServerConfig(a.nodeCert, a.nodeKey, a.caCert)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(a.joinListenHost(), fmt.Sprint(a.cfg.ListenPort)))
	if err != nil {
		return fmt.Errorf("join endpoint: %w", err)
	}
	a.serve(tls.NewListener(ln, tlsConf), h, "join")
	return nil
}

// joinListenHost keeps the join endpoint on loopback when the node only
// advertises loopback endpoints (dev clusters, tests), on the first of them,
// which is where joiners are sent (in-process clusters give each node its
// own 127/8 address); otherwise every address, as peers may come from any
// network.
func (a *Agent) joinListenHost() string {
	first := "127.0.0.1"
	for i, ep := range a.cfg.Endpoints {
		host, _, _ := net.SplitHostPort(ep)
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.IsLoopback() {
			return ""
		}
		if i == 0 {
			first = ip.String()
		}
	}
	return first
}

func (a *Agent) serve(ln net.Listener, h http.Handler, name string) {
	srv := httpapi.NewServer(h, a.log.With("server", name))
	a.servers = append(a.servers, srv)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("server stopped", "server", name, "err", err)
		}
	}()
}

// forward hands a write to the leader's node API. The store retries on any
// error with the same command ID, so a lost answer never double-applies.
func (a *Agent) forward(ctx context.Context, leaderID string, cmd *raftstore.Command) (*raftstore.Result, error) {
	leader := a.nodeByID(leaderID)
	if leader == nil {
		return nil, fmt.Errorf("leader %s is not in the local state yet", leaderID)
	}
	return a.nodeClient.Apply(ctx, leader.Name, cmd)
}

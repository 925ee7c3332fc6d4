package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
)

// The node API listens on the mesh IP with mutual TLS: only nodes of the
// cluster state reach it. Today it carries forwarded Raft writes.

func (a *Agent) startNodeAPI() error {
	ln, err := a.dev.Net().Listen("tcp", netip.AddrPortFrom(a.cfg.MeshIP, NodeAPIPort).String())
	if err != nil {
		return fmt.Errorf("node api: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/raft/apply", a.handleForwardedApply)
	a.serve(tls.NewListener(ln, a.mtlsServer), mux, "node-api")
	return nil
}

// startJoinEndpoint serves joins on the underlay TCP port (the number of the
// WireGuard UDP port). TLS with this node's certificate: the joiner pins the
// CA fingerprint from its token.
func (a *Agent) startJoinEndpoint() error {
	tlsConf, err := pki.ServerConfig(a.nodeCert, a.nodeKey, a.caCert)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(a.joinListenHost(), fmt.Sprint(a.cfg.ListenPort)))
	if err != nil {
		return fmt.Errorf("join endpoint: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", a.handleJoin)
	a.serve(tls.NewListener(ln, tlsConf), mux, "join")
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
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.With("server", name).Handler(), slog.LevelDebug),
	}
	a.servers = append(a.servers, srv)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("server stopped", "server", name, "err", err)
		}
	}()
}

func (a *Agent) handleForwardedApply(w http.ResponseWriter, r *http.Request) {
	var cmd raftstore.Command
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&cmd); err != nil {
		httpError(w, http.StatusBadRequest, err)
		return
	}
	if cmd.ID == "" || cmd.Time.IsZero() {
		httpError(w, http.StatusBadRequest, errors.New("forwarded command lacks id or time"))
		return
	}
	res, err := a.store.ApplyLocal(r.Context(), &cmd)
	if err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, raftstore.ErrNotLeader) {
			code = http.StatusMisdirectedRequest
		}
		httpError(w, code, err)
		return
	}
	writeJSONResponse(w, http.StatusOK, res)
}

// forward hands a write to the leader's node API. The store retries on any
// error with the same command ID, so a lost answer never double-applies.
func (a *Agent) forward(ctx context.Context, leaderID string, cmd *raftstore.Command) (*raftstore.Result, error) {
	var leader *raftstore.Node
	for _, n := range a.knownNodes() {
		if n.ID == leaderID {
			leader = n
		}
	}
	if leader == nil {
		return nil, fmt.Errorf("leader %s is not in the local state yet", leaderID)
	}
	body, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("https://%s:%d/v1/raft/apply", leader.Name, NodeAPIPort)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := a.forwarder.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("leader %s: %s: %s", leader.Name, resp.Status, bytes.TrimSpace(raw))
	}
	var res raftstore.Result
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

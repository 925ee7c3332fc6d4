package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudlink"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/raftstore"
)

// The cloud link (issue 5). Every node runs a cloudlink.Link; the leader
// loop runs its session (RunSession) while this node leads, so only the
// leader holds one. Nothing local waits for it.

// cloudHost is what the link sees of the agent.
type cloudHost struct{ a *Agent }

var _ cloudlink.Host = cloudHost{}

func (h cloudHost) State() (*raftstore.State, uint64) { return h.a.store.State() }
func (h cloudHost) Changed() <-chan struct{}          { return h.a.store.Changed() }
func (h cloudHost) Nodes() []api.Node                 { return h.a.Nodes().Nodes }
func (h cloudHost) Apply(ctx context.Context, cmd *raftstore.Command) (*raftstore.Result, error) {
	return h.a.store.Apply(ctx, cmd)
}

func (a *Agent) startCloudLink(ctx context.Context) error {
	l, err := cloudlink.New(cloudlink.Config{
		Host:       cloudHost{a},
		DataKey:    a.keys,
		NodeName:   a.cfg.Name,
		Version:    Version,
		BackoffMax: a.tuning.CloudBackoffMax,
		JoinToken: func(id, secret string) (string, string) {
			tok := datadir.Token{CAFingerprint: a.cfg.CAFingerprint, ID: id, Secret: secret}.String()
			return tok, fmt.Sprintf("runos-agent join --data-dir /var/lib/runos-agent --name NODE_NAME --token %s %s", tok, a.cfg.Endpoints[0])
		},
	}, a.log)
	if err != nil {
		return err
	}
	a.cloud = l
	l.Start(ctx)
	a.closers = append(a.closers, l.Close)
	return nil
}

// CloudStatus reports the cloud link honestly: the link's own state
// (connecting, connected or backoff only while its session runs, i.e.
// while this node leads; standby otherwise), the leader named, and the
// shared cursor from the state.
func (a *Agent) CloudStatus() *api.CloudStatus {
	st, idx := a.store.State()
	ls := a.cloud.Status()
	out := &api.CloudStatus{
		State: ls.State, Since: ls.Since, NextRetry: ls.NextRetry, LastError: ls.LastError,
		AckIndex: st.Cloud.AckIndex, AckTime: st.Cloud.AckTime, Index: idx,
		BytesSent: ls.BytesSent, BytesReceived: ls.BytesReceived,
	}
	if leader := a.store.LeaderID(); leader != "" {
		if n, ok := st.Nodes[leader]; ok {
			out.Holder = n.Name
		}
	}
	reg := st.Cloud.Registration
	if reg == nil {
		out.State = cloudlink.StateOff
		return out
	}
	out.Registered, out.URL, out.CloudClusterID, out.RegisteredAt = true, reg.URL, reg.CloudClusterID, reg.RegisteredAt
	out.Allow, out.RotatePending = reg.Allow, st.Cloud.RotateCredential
	if out.Allow == "" {
		out.Allow = raftstore.CloudAllowDeploy // registered before levels existed
	}
	if out.State == cloudlink.StateOff {
		// The link read a newer state, without the registration (a
		// disconnect a moment ago); the link reports a fresh one itself.
		out.State, out.Since = cloudlink.StateStandby, reg.RegisteredAt
	}
	cursor := st.Cloud.AckIndex
	if ls.State == cloudlink.StateConnected && ls.Cursor > cursor {
		cursor = ls.Cursor
	}
	if cursor < reg.Index {
		// Nothing confirmed since registration: the first session sends
		// a full resync, which covers everything before.
		cursor = reg.Index
	}
	out.Pending = st.Cloud.Pending(cursor)
	return out
}

// CloudConnect registers the cluster with a cloud and stores the result in
// Raft, so whichever node leads (now or later) holds the session.
func (a *Agent) CloudConnect(ctx context.Context, req api.CloudConnectRequest) (*api.CloudStatus, error) {
	if req.URL == "" || req.Token == "" {
		return nil, fmt.Errorf("%w: url and token are required", httpapi.ErrBadRequest)
	}
	allow, err := raftstore.ParseCloudAllow(req.Allow)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", httpapi.ErrBadRequest, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		return nil, err
	}
	if st, _ := a.store.State(); st.Cloud.Registration != nil {
		return nil, fmt.Errorf("%w: already connected to %s (run `runos-agent cloud disconnect` first)", httpapi.ErrBadRequest, st.Cloud.Registration.URL)
	}
	reg, err := cloudlink.Register(ctx, req.URL, req.Token, a.cfg.ClusterID, a.keys)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", httpapi.ErrBadRequest, err)
	}
	reg.Allow = allow
	res, err := a.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpCloudRegister, Cloud: &raftstore.CloudCmd{Register: reg}})
	if err == nil {
		err = res.Error()
	}
	if err != nil {
		return nil, err
	}
	a.log.Info("registered with the cloud", "url", reg.URL, "cloud_cluster", reg.CloudClusterID, "allow", allow)
	a.waitApplied(ctx, res.Index)
	return a.CloudStatus(), nil
}

// waitApplied waits (bounded by ctx) until this replica has applied index,
// so what the caller reads next reflects its own write: a follower applies
// a committed write up to the leader's commit timeout later.
func (a *Agent) waitApplied(ctx context.Context, index uint64) {
	for {
		changed := a.store.Changed()
		if _, idx := a.store.State(); idx >= index {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// CloudDisconnect forgets the registration; the leader's session ends.
func (a *Agent) CloudDisconnect(ctx context.Context) (*api.CloudStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if st, _ := a.store.State(); st.Cloud.Registration == nil {
		return nil, fmt.Errorf("%w: not connected to a cloud", httpapi.ErrBadRequest)
	}
	res, err := a.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpCloudDisconnect, Cloud: &raftstore.CloudCmd{}})
	if err == nil {
		err = res.Error()
	}
	if err != nil {
		return nil, err
	}
	a.waitApplied(ctx, res.Index)
	return a.CloudStatus(), nil
}

// CloudAllow changes what the cloud may do. Only a local caller can: the
// op is not one a cloud command may carry.
func (a *Agent) CloudAllow(ctx context.Context, req api.CloudAllowRequest) (*api.CloudStatus, error) {
	if req.Allow == "" {
		return nil, fmt.Errorf("%w: allow is required (read, deploy or admin)", httpapi.ErrBadRequest)
	}
	allow, err := raftstore.ParseCloudAllow(req.Allow)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", httpapi.ErrBadRequest, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if st, _ := a.store.State(); st.Cloud.Registration == nil {
		return nil, fmt.Errorf("%w: not connected to a cloud", httpapi.ErrBadRequest)
	}
	res, err := a.store.Apply(ctx, &raftstore.Command{Op: raftstore.OpCloudAllow, Cloud: &raftstore.CloudCmd{Allow: allow}})
	if err == nil {
		err = res.Error()
	}
	if err != nil {
		return nil, err
	}
	a.log.Info("cloud permission changed", "allow", allow)
	a.waitApplied(ctx, res.Index)
	return a.CloudStatus(), nil
}

//go:build jepsen

package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/httpapi"
	"github.com/runos/runos-agent/raftstore"
)

// The test register through the local API (raftstore/register.go): only
// in builds with the jepsen tag.

var _ httpapi.Registers = (*Agent)(nil)

// WriteRegister writes a test register through the leader, as every
// write from the local API goes (forwarded from a follower, retried
// with the same command ID, deduplicated by the state machine).
func (a *Agent) WriteRegister(ctx context.Context, req api.RegisterRequest) (*api.Register, error) {
	if req.Key == "" {
		return nil, fmt.Errorf("%w: key is required", httpapi.ErrBadRequest)
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	res, err := a.store.Apply(ctx, &raftstore.Command{Time: time.Now().UTC(), Op: raftstore.OpTestRegister,
		Register: &raftstore.RegisterCmd{Key: req.Key, Value: req.Value, Expect: req.Expect}})
	if err != nil {
		return nil, err
	}
	if err := res.Error(); err != nil {
		return nil, err
	}
	var out raftstore.RegisterResult
	if err := json.Unmarshal(res.Data, &out); err != nil {
		return nil, fmt.Errorf("register result: %w", err)
	}
	return &api.Register{Key: req.Key, Value: out.Value, OK: out.OK, Index: res.Index}, nil
}

// ReadRegister reads a test register from this node's copy.
func (a *Agent) ReadRegister(key string) *api.Register {
	st, idx := a.store.State()
	out := &api.Register{Key: key, OK: true, Index: idx}
	if r := st.Registers[key]; r != nil {
		out.Value = r.Value
	}
	return out
}

// TestState is this node's whole state machine and its index.
func (a *Agent) TestState() (*api.TestState, error) {
	b, idx, err := a.store.FullState()
	if err != nil {
		return nil, err
	}
	return &api.TestState{Index: idx, State: b}, nil
}

//go:build jepsen

package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
)

// The test register (raftstore/register.go), served only by agents built
// with the jepsen tag: the fault-injection campaign's key/value workload.

// RegisterRequest is POST /v1/test/register: write Value to Key, or with
// Expect set, compare-and-set.
type RegisterRequest struct {
	Key    string `json:"key"`
	Value  int64  `json:"value"`
	Expect *int64 `json:"expect,omitempty"`
}

// Register is a register's value (GET /v1/test/register/{key}) or a
// write's outcome: OK false when a compare-and-set found another value.
// Index is the log index the answer reflects (reads) or the write's own.
type Register struct {
	Key   string `json:"key"`
	Value int64  `json:"value"`
	OK    bool   `json:"ok"`
	Index uint64 `json:"index"`
}

// WriteRegister writes (or compares-and-sets) a test register.
func (c *Client) WriteRegister(ctx context.Context, req RegisterRequest) (*Register, error) {
	var out Register
	return &out, c.do(ctx, http.MethodPost, "/v1/test/register", req, &out)
}

// ReadRegister reads a test register, from this agent's copy (Stale) or
// through the leader (Consistent).
func (c *Client) ReadRegister(ctx context.Context, key string, opts ...ReadOption) (*Register, error) {
	var out Register
	return &out, c.do(ctx, http.MethodGet, readPath("/v1/test/register/"+url.PathEscape(key), opts), nil, &out)
}

// TestState is GET /v1/test/state: the node's whole state machine (the
// deduplication records included) and the index it reflects, for the
// campaign's convergence check.
type TestState struct {
	Index uint64          `json:"index"`
	State json.RawMessage `json:"state"`
}

// TestState fetches the node's whole state.
func (c *Client) TestState(ctx context.Context) (*TestState, error) {
	var out TestState
	return &out, c.do(ctx, http.MethodGet, "/v1/test/state", nil, &out)
}

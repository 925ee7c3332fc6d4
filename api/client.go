package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// SocketName is the local API's unix socket inside the data dir.
const SocketName = "agent.sock"

// Client talks to a running agent through its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent whose data dir is dataDir.
func NewClient(dataDir string) *Client {
	sock := filepath.Join(dataDir, SocketName)
	return &Client{
		socket: sock,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, "unix", sock)
				if err != nil {
					return nil, dialError{err}
				}
				return c, nil
			},
		}},
	}
}

// CloseIdleConnections closes the client's idle connections to the agent
// (a client that is done with an agent that keeps running).
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// dialError marks a failure to connect to the socket: the request was
// never sent.
type dialError struct{ err error }

func (e dialError) Error() string { return e.err.Error() }
func (e dialError) Unwrap() error { return e.err }

// ErrAgentNotRunning means nothing answers on the socket.
var ErrAgentNotRunning = errors.New("agent is not running")

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return err
	}
	return c.doRequest(req, out)
}

// doRequest sends req to the agent and decodes its JSON answer into out
// (nil: ignored).
func (c *Client) doRequest(req *http.Request, out any) error {
	resp, err := c.http.Do(req)
	if err != nil {
		// Only a request that never reached the agent is "not
		// running": one that did may have been carried out before the
		// agent stopped (a write is then indeterminate), even if the
		// socket is gone by now.
		var de dialError
		if errors.As(err, &de) && (errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)) {
			return fmt.Errorf("%w: nothing listens on %s (start it with `runos-agent run`)", ErrAgentNotRunning, c.socket)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("agent answered %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// ReadOption says how fresh a read must be.
type ReadOption int

const (
	// Stale, the default, answers from the agent's own copy of the
	// cluster state: at once and without a quorum, but possibly behind
	// writes acknowledged elsewhere (by the index it reports).
	Stale ReadOption = iota
	// Consistent answers only once the agent has caught up with the
	// leader's commit index (a ReadIndex read through the leader), so the
	// answer reflects every write acknowledged before the call; without a
	// leader and a quorum the agent answers an error (503) instead.
	Consistent
)

// readPath adds ?consistent=1 to path when any option asks for it.
func readPath(path string, opts []ReadOption) string {
	if slices.Contains(opts, Consistent) {
		return path + "?consistent=1"
	}
	return path
}

// Status fetches the agent's status.
func (c *Client) Status(ctx context.Context, opts ...ReadOption) (*Status, error) {
	var s Status
	return &s, c.do(ctx, http.MethodGet, readPath("/v1/status", opts), nil, &s)
}

// Nodes lists the cluster's nodes, from the agent's local state unless
// Consistent is given.
func (c *Client) Nodes(ctx context.Context, opts ...ReadOption) (*NodesResponse, error) {
	var n NodesResponse
	return &n, c.do(ctx, http.MethodGet, readPath("/v1/nodes", opts), nil, &n)
}

// CreateToken creates a join token.
func (c *Client) CreateToken(ctx context.Context, req TokenRequest) (*Token, error) {
	var t Token
	return &t, c.do(ctx, http.MethodPost, "/v1/tokens", req, &t)
}

// RemoveNode removes a node from the cluster by name.
func (c *Client) RemoveNode(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/nodes/"+url.PathEscape(name), nil, nil)
}

// Events returns events after seq; with wait > 0 the agent holds the request
// until one arrives or wait passes.
func (c *Client) Events(ctx context.Context, after uint64, wait time.Duration) (*EventsResponse, error) {
	var e EventsResponse
	path := fmt.Sprintf("/v1/events?after=%d", after)
	if wait > 0 {
		path += "&wait=" + url.QueryEscape(wait.String())
	}
	return &e, c.do(ctx, http.MethodGet, path, nil, &e)
}

// Netcheck probes the underlay through the agent's socket.
func (c *Client) Netcheck(ctx context.Context, stun []string) (*Netcheck, error) {
	q := url.Values{"stun": stun}
	var n Netcheck
	return &n, c.do(ctx, http.MethodGet, "/v1/netcheck?"+q.Encode(), nil, &n)
}

// Ping sends one echo to a node over the mesh.
func (c *Client) Ping(ctx context.Context, node string, seq int) (*PingResult, error) {
	var p PingResult
	return &p, c.do(ctx, http.MethodGet, fmt.Sprintf("/v1/ping?node=%s&seq=%d", url.QueryEscape(node), seq), nil, &p)
}

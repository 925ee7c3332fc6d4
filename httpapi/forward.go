package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/runos/runos-agent/raftstore"
)

// Writes forwarded from a follower travel in batches: NodeClient.Apply
// queues the command for its leader and one of a few senders per leader
// posts whatever has queued as one request, which the leader commits in
// parallel (raft groups them into one log append and one fsync). With one
// writer a batch is that one command and leaves at once; under load, the
// commands that arrive while a batch is in flight make the next one. One
// request per command cost each write a request's worth of TLS records,
// WireGuard packets and handler work, which is what held 64 writers
// through a follower to a fraction of the leader's rate.
//
// Every command keeps its own fate: the leader answers each one (result,
// or an error with the status the one-command endpoint would have given),
// and the caller's retry with the same command ID is what makes a lost
// answer safe, as before: the state machine answers a repeated ID with its
// first result.

const (
	// maxBatch bounds the commands in one forwarded batch.
	maxBatch = 256
	// maxBatchBytes bounds a batch's encoded commands; a larger command
	// travels alone (and the leader refuses it past maxCommand).
	maxBatchBytes = 4 << 20
	// defaultSenders is how many batches may be in flight to one leader:
	// while one is committed, the next one fills.
	defaultSenders = 2
	// batchTimeout bounds a batch whose callers set no deadline.
	batchTimeout = 15 * time.Second
	// noBatchRetry is how long a leader without the batch endpoint (an
	// older agent, during an upgrade) is sent one command per request
	// before the batch endpoint is tried again.
	noBatchRetry = time.Minute
)

type batchRequest struct {
	Commands []json.RawMessage `json:"commands"`
}

// batchOutcome is one command's answer: a result, or the status and
// message /v1/raft/apply would have answered it with.
type batchOutcome struct {
	Result *raftstore.Result `json:"result,omitempty"`
	Status int               `json:"status,omitempty"`
	Error  string            `json:"error,omitempty"`
}

type batchResponse struct {
	Results []batchOutcome `json:"results"`
}

// serveApplyBatch commits each command of a batch as ApplyLocal, all at
// once, and answers each in order.
func serveApplyBatch(n Node) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req batchRequest
		if !decodeBody(w, r, &req, maxBatchBytes+64<<10) {
			return
		}
		if len(req.Commands) == 0 || len(req.Commands) > maxBatch {
			WriteError(w, badRequest("a batch holds 1 to %d commands, not %d", maxBatch, len(req.Commands)))
			return
		}
		out := batchResponse{Results: make([]batchOutcome, len(req.Commands))}
		var wg sync.WaitGroup
		for i, raw := range req.Commands {
			cmd, err := decodeForwarded(raw)
			if err != nil {
				out.Results[i] = failed(err)
				continue
			}
			wg.Go(func() {
				res, err := n.ApplyLocal(r.Context(), cmd)
				if err != nil {
					out.Results[i] = failed(Classify(err, ErrUnavailable))
					return
				}
				out.Results[i] = batchOutcome{Result: res}
			})
		}
		wg.Wait()
		WriteJSON(w, http.StatusOK, out)
	}
}

func failed(err error) batchOutcome {
	return batchOutcome{Status: StatusFor(err), Error: err.Error()}
}

// decodeForwarded checks a forwarded command as both endpoints do.
func decodeForwarded(raw []byte) (*raftstore.Command, error) {
	if len(raw) > maxCommand {
		return nil, badRequest("forwarded command of %d bytes exceeds %d", len(raw), maxCommand)
	}
	var cmd raftstore.Command
	if err := json.Unmarshal(raw, &cmd); err != nil {
		return nil, Classify(err, ErrBadRequest)
	}
	if cmd.ID == "" || cmd.Time.IsZero() {
		return nil, badRequest("forwarded command lacks id or time")
	}
	return &cmd, nil
}

// pendingApply is one caller's command waiting for its batch.
type pendingApply struct {
	ctx  context.Context
	body json.RawMessage
	done chan applyOutcome // buffered: a sender never waits for a caller who left
}

type applyOutcome struct {
	res *raftstore.Result
	err error
}

// applyQueue is the commands waiting for one leader.
type applyQueue struct {
	pending []*pendingApply
	senders int // goroutines sending this queue's batches
}

// Apply hands cmd to the leader, named leader, to commit, in a batch with
// whatever else this node forwards there meanwhile. The URL carries the
// node's name so TLS checks its certificate against the name the cluster CA
// signed into it. An error says the command may or may not have been
// committed: the caller retries with the same command ID.
func (c *NodeClient) Apply(ctx context.Context, leader string, cmd *raftstore.Command) (*raftstore.Result, error) {
	body, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	p := &pendingApply{ctx: ctx, body: body, done: make(chan applyOutcome, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errors.New("httpapi: node client closed")
	}
	q := c.queues[leader]
	if q == nil {
		q = &applyQueue{}
		c.queues[leader] = q
	}
	q.pending = append(q.pending, p)
	if q.senders < c.senders {
		q.senders++
		c.wg.Add(1)
		go c.send(leader, q)
	}
	c.mu.Unlock()
	select {
	case o := <-p.done:
		return o.res, o.err
	case <-ctx.Done():
		// A sender skips it if it has not left yet; if it has, the
		// outcome is dropped and the caller's retry finds the result.
		return nil, ctx.Err()
	}
}

// send posts q's batches to leader until the queue is empty.
func (c *NodeClient) send(leader string, q *applyQueue) {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		batch := q.take()
		if len(batch) == 0 {
			q.senders--
			if q.senders == 0 && c.queues[leader] == q {
				delete(c.queues, leader)
			}
			c.mu.Unlock()
			return
		}
		single := time.Now().Before(c.noBatch[leader])
		c.mu.Unlock()
		if !single && c.postBatch(leader, batch) {
			continue
		}
		// The leader has no batch endpoint: one request per command.
		var wg sync.WaitGroup
		for _, p := range batch {
			wg.Go(func() {
				res, err := c.applyOne(p.ctx, leader, p.body)
				p.done <- applyOutcome{res, err}
			})
		}
		wg.Wait()
	}
}

// take removes the next batch from q, dropping commands whose callers
// have given up. Callers hold c.mu.
func (q *applyQueue) take() []*pendingApply {
	var batch []*pendingApply
	size, n := 0, 0
	for _, p := range q.pending {
		if len(batch) == maxBatch || (len(batch) > 0 && size+len(p.body) > maxBatchBytes) {
			break
		}
		n++
		if p.ctx.Err() != nil {
			continue
		}
		batch = append(batch, p)
		size += len(p.body) + 1
	}
	clear(q.pending[:n])
	q.pending = q.pending[n:]
	return batch
}

// postBatch sends batch to leader and answers every caller in it. It
// reports false, answering no one, when the leader has no batch endpoint.
func (c *NodeClient) postBatch(leader string, batch []*pendingApply) bool {
	// The batch lives as long as its most patient caller; Close ends it.
	ctx, cancel := context.WithTimeout(c.ctx, batchTimeout)
	defer cancel()
	var latest time.Time
	for _, p := range batch {
		dl, ok := p.ctx.Deadline()
		if !ok {
			latest = time.Time{}
			break
		}
		latest = later(latest, dl)
	}
	if !latest.IsZero() {
		var cancelDL context.CancelFunc
		ctx, cancelDL = context.WithDeadline(ctx, latest)
		defer cancelDL()
	}

	var body bytes.Buffer
	body.WriteString(`{"commands":[`)
	for i, p := range batch {
		if i > 0 {
			body.WriteByte(',')
		}
		body.Write(p.body)
	}
	body.WriteString(`]}`)
	all := func(err error) bool {
		for _, p := range batch {
			p.done <- applyOutcome{err: err}
		}
		return true
	}

	url := fmt.Sprintf("https://%s:%d/v1/raft/apply-batch", leader, c.port)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, &body)
	if err != nil {
		return all(err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return all(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, int64(len(batch))*maxCommand))
	if err != nil {
		return all(err)
	}
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
		c.mu.Lock()
		c.noBatch[leader] = time.Now().Add(noBatchRetry)
		c.mu.Unlock()
		return false
	}
	if resp.StatusCode != http.StatusOK {
		return all(fmt.Errorf("leader %s: %s: %s", leader, resp.Status, bytes.TrimSpace(raw)))
	}
	var out batchResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return all(err)
	}
	if len(out.Results) != len(batch) {
		return all(fmt.Errorf("leader %s answered %d of %d forwarded commands", leader, len(out.Results), len(batch)))
	}
	for i, p := range batch {
		o := out.Results[i]
		switch {
		case o.Status != 0:
			p.done <- applyOutcome{err: fmt.Errorf("leader %s: %d %s: %s", leader, o.Status, http.StatusText(o.Status), o.Error)}
		case o.Result == nil:
			p.done <- applyOutcome{err: fmt.Errorf("leader %s: no result", leader)}
		default:
			p.done <- applyOutcome{res: o.Result}
		}
	}
	return true
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Close ends the batches in flight and waits for their senders; Apply
// fails afterwards. It is idempotent.
func (c *NodeClient) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return nil
}

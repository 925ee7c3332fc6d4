package raftstore

import (
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Pipelining while there is work, quiet when idle.
//
// Synchronous replication sends a follower the next batch only once it
// acknowledged the last: one round trip and one follower fsync per batch,
// during which new writes pile up. hashicorp/raft's pipeline keeps a batch
// in flight while the previous one is written, but it also sends its commit
// refreshes (every CommitTimeout) through the pipeline, where nothing can
// answer them locally. So the quiet transport offers a pipeline only to a
// follower that is busy (the last append that went over the wire carried
// entries) and ends it once the follower is caught up and idle: when Raft
// would send an entry-less append that repeats the last one the follower
// accepted, with nothing in flight, the pipeline refuses it (errQuietIdle).
// Raft then falls back to synchronous replication, whose repeats are
// answered locally as before (quiet.go), until the next write.
//
// The pipeline's connection is opened only when a batch travels through
// it: an isolated write (one synchronous append, then a commit refresh or
// two) never opens one, so an idle cluster makes no connections.

// errQuietIdle ends a pipeline whose follower is caught up (see above);
// the store's log filter keeps Raft's report of it out of the error log.
var errQuietIdle = errors.New("follower caught up: replicating synchronously, quiet when idle")

// quietPipeline is one pipelining episode to a follower.
type quietPipeline struct {
	q      *quietTransport
	id     raft.ServerID
	target raft.ServerAddress
	// out is what Raft's decoder reads: the inner pipeline's answers, and
	// those of the entry-less appends sent synchronously, in send order.
	out  chan raft.AppendFuture
	done chan struct{} // closed by Close
	wg   sync.WaitGroup

	// inner is the network pipeline, nil until a batch of entries has to
	// travel. It and closed belong to Raft's replication goroutine, the
	// only caller of AppendEntries and Close.
	inner  raft.AppendPipeline
	closed bool

	mu sync.Mutex
	// inflight counts appends sent through inner and not yet passed to
	// out; guarded by mu.
	inflight int
}

// maxPipelined bounds the appends in flight through one pipeline: Raft's
// own bound (NetworkTransport's MaxRPCsInFlight) is lower, this only sizes
// the channel.
const maxPipelined = 128

var _ raft.AppendPipeline = (*quietPipeline)(nil)

// AppendEntriesPipeline offers a pipeline to a follower that is busy; an
// idle one is replicated synchronously, where idle repeats stay local.
func (q *quietTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	q.mu.Lock()
	busy := q.peers[id] != nil && q.peers[id].busy
	q.mu.Unlock()
	if !busy {
		return nil, raft.ErrPipelineReplicationNotSupported
	}
	return &quietPipeline{q: q, id: id, target: target, out: make(chan raft.AppendFuture, maxPipelined), done: make(chan struct{})}, nil
}

// AppendEntries sends args through the pipeline. Raft calls it, and
// Close, from the follower's replication goroutine only.
func (pl *quietPipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	q := pl.q
	if pl.closed {
		return nil, raft.ErrPipelineShutdown
	}
	if len(args.Entries) == 0 {
		pl.mu.Lock()
		idle := pl.inflight == 0
		pl.mu.Unlock()
		q.mu.Lock()
		p := q.peers[pl.id]
		if idle && p != nil && q.repeats(p, args) {
			p.busy = false
			q.mu.Unlock()
			return nil, errQuietIdle
		}
		q.mu.Unlock()
		if pl.inner == nil {
			// A commit refresh after an isolated write: not worth a
			// connection. Nothing is in flight, so its answer comes next.
			start := time.Now()
			if err := q.AppendEntries(pl.id, pl.target, args, resp); err != nil {
				return nil, err
			}
			f := &doneAppend{start: start, req: args, resp: resp}
			pl.out <- f
			return f, nil
		}
	}
	if pl.inner == nil {
		inner, err := q.inner.AppendEntriesPipeline(pl.id, pl.target)
		if err != nil {
			return nil, err
		}
		pl.inner = inner
		q.mu.Lock()
		q.pipelines++
		q.mu.Unlock()
		pl.wg.Add(1)
		go pl.forward(inner)
	}
	q.mu.Lock()
	q.pipelined++
	if len(args.Entries) > 0 {
		q.peer(pl.id).refresh.req = nil
	} else {
		q.sent++
	}
	q.mu.Unlock()
	// Not under mu: a full pipeline waits here for answers, which forward
	// counts off under mu.
	pl.mu.Lock()
	pl.inflight++
	pl.mu.Unlock()
	f, err := pl.inner.AppendEntries(args, resp)
	if err != nil {
		pl.mu.Lock()
		pl.inflight--
		pl.mu.Unlock()
		return nil, err
	}
	return f, nil
}

// forward passes the inner pipeline's answers on in order, recording an
// accepted entry-less append as the one its repeats may be answered with.
func (pl *quietPipeline) forward(inner raft.AppendPipeline) {
	defer pl.wg.Done()
	for {
		select {
		case f := <-inner.Consumer():
			req, resp := f.Request(), f.Response()
			if len(req.Entries) == 0 {
				pl.q.recordRefresh(pl.id, req, resp, f.Error())
			}
			pl.mu.Lock()
			pl.inflight--
			pl.mu.Unlock()
			select {
			case pl.out <- f:
			case <-pl.done:
				return
			}
		case <-pl.done:
			return
		}
	}
}

// recordRefresh keeps an entry-less append the follower accepted, so that
// its repeats are answered locally.
func (q *quietTransport) recordRefresh(id raft.ServerID, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	k := q.peer(id).kind(args)
	if err == nil && resp.Success && resp.Term == args.Term {
		last := *args
		k.req, k.resp = &last, *resp
	} else {
		k.req = nil
	}
}

func (pl *quietPipeline) Consumer() <-chan raft.AppendFuture { return pl.out }

// Close ends the episode and closes the network pipeline, if one opened.
func (pl *quietPipeline) Close() error {
	if pl.closed {
		return nil
	}
	pl.closed = true
	close(pl.done)
	var err error
	if pl.inner != nil {
		err = pl.inner.Close()
	}
	pl.wg.Wait()
	return err
}

// doneAppend is the answer to an append sent synchronously.
type doneAppend struct {
	start time.Time
	req   *raft.AppendEntriesRequest
	resp  *raft.AppendEntriesResponse
}

func (f *doneAppend) Error() error                          { return nil }
func (f *doneAppend) Start() time.Time                      { return f.start }
func (f *doneAppend) Request() *raft.AppendEntriesRequest   { return f.req }
func (f *doneAppend) Response() *raft.AppendEntriesResponse { return f.resp }

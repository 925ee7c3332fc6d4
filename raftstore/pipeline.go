package raftstore

import (
	"sync"

	"github.com/hashicorp/raft"
)

// hashicorp/raft's network pipeline hands each answer to Raft's decoder
// unbuffered (MaxRPCsInFlight 2 makes both of its channels unbuffered).
// The decoder stops reading when a follower rejects an append or reports
// a newer term, while the replication loop may still send: that send
// waits for the pipeline's reader, which waits for the decoder, which is
// gone. Replication to that follower then stops for good (its heartbeats
// go on, so no election heals it) and Raft's Shutdown never returns
// (hashicorp/raft#612; found by the fault campaign). The quiet transport
// drains its pipelines into a buffer (quietpipe.go); pipelineSafe does the
// same for the plain transport (Raft timers too short for the quiet one).

// pipelineSafe wraps t so that its pipelines' answers are drained.
func pipelineSafe(t *raft.NetworkTransport) raft.Transport { return drainingTransport{t} }

type drainingTransport struct{ *raft.NetworkTransport }

var (
	_ raft.WithClose   = drainingTransport{}
	_ raft.WithPreVote = drainingTransport{}
)

func (t drainingTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	inner, err := t.NetworkTransport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	p := &drainingPipeline{inner: inner, out: make(chan raft.AppendFuture, maxPipelined), done: make(chan struct{})}
	p.wg.Go(p.forward)
	return p, nil
}

// drainingPipeline passes the inner pipeline's answers on through a
// buffer as large as any number of appends Raft could send after its
// decoder stopped.
type drainingPipeline struct {
	inner raft.AppendPipeline
	out   chan raft.AppendFuture
	done  chan struct{} // closed by Close
	once  sync.Once
	wg    sync.WaitGroup
}

func (p *drainingPipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	return p.inner.AppendEntries(args, resp)
}

func (p *drainingPipeline) forward() {
	for {
		select {
		case f := <-p.inner.Consumer():
			select {
			case p.out <- f:
			case <-p.done:
				return
			}
		case <-p.done:
			return
		}
	}
}

func (p *drainingPipeline) Consumer() <-chan raft.AppendFuture { return p.out }

func (p *drainingPipeline) Close() error {
	var err error
	p.once.Do(func() {
		close(p.done)
		err = p.inner.Close()
		p.wg.Wait()
	})
	return err
}

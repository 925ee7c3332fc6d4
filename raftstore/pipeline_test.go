package raftstore

import (
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Raft's pipeline decoder stops reading answers as soon as a follower
// rejects an append (or reports a newer term); the replication loop may
// still send before it notices. On hashicorp/raft's own network pipeline
// (answers handed over unbuffered, MaxRPCsInFlight 2) the second such send
// blocks forever: replication to that follower stops for good while its
// heartbeats go on, and Raft's shutdown never returns (hashicorp/raft#612).
// The fault campaign hung on exactly that (a plain-timer cluster's Close,
// after a leader was partitioned away and came back). The store's
// transport must keep accepting sends there.
func TestPipelineSendAfterDecoderStopped(t *testing.T) {
	newTrans := func() *raft.NetworkTransport {
		return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: newTestStreamLayer(t), MaxPool: 3, Timeout: 5 * time.Second, Logger: hclog.NewNullLogger(),
		})
	}
	follower, leader := newTrans(), newTrans()
	t.Cleanup(func() { follower.Close(); leader.Close() })
	// The follower rejects every append (a log gap, a newer term: the
	// decoder stops either way).
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case rpc := <-follower.Consumer():
				rpc.Respond(&raft.AppendEntriesResponse{Term: 1, Success: false}, nil)
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })

	trans := pipelineSafe(leader)
	pl, err := trans.AppendEntriesPipeline("follower", follower.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	req := func() *raft.AppendEntriesRequest {
		return &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{Addr: []byte(leader.LocalAddr())}, Term: 1,
			Entries: []*raft.Log{{Index: 1, Term: 1, Data: []byte("x")}}}
	}
	if _, err := pl.AppendEntries(req(), &raft.AppendEntriesResponse{}); err != nil {
		t.Fatal(err)
	}
	// The decoder reads the rejection and stops reading.
	if f := <-pl.Consumer(); f.Response().Success {
		t.Fatal("the follower accepted")
	}
	// The replication loop sends a few more before it sees that.
	for i := range 4 {
		sent := make(chan error, 1)
		go func() {
			_, err := pl.AppendEntries(req(), &raft.AppendEntriesResponse{})
			sent <- err
		}()
		select {
		case err := <-sent:
			if err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
		case <-time.After(30 * time.Second): // a hang, not a speed limit
			pl.Close()
			<-sent
			t.Fatalf("send %d after the decoder stopped blocked: replication to this follower would stop for good", i)
		}
	}
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
}

package raftstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"github.com/runos/runos-agent/mesh"
)

var streamLoopback = netip.MustParseAddr("127.0.0.1")

// streamSources admits 127.0.0.1 only: a client on another loopback
// address stands for a pod or a wg1 client.
var streamSources = mesh.Sources{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}

// newTestStreamLayer listens on a free loopback port through a HostNet, the
// kernel-mode mesh.Net, speaking plain TCP.
func newTestStreamLayer(t *testing.T) *StreamLayer {
	t.Helper()
	return newTestStreamLayerTLS(t, nil, nil)
}

func newTestStreamLayerTLS(t testing.TB, server, client *tls.Config) *StreamLayer {
	t.Helper()
	s, err := NewStreamLayer(StreamConfig{
		Net: mesh.NewHostNet(streamLoopback), Addr: netip.AddrPortFrom(streamLoopback, 0), Sources: streamSources,
		ServerTLS: server, ClientTLS: client,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// streamLeakCheck ignores goroutines that were running before the test, so
// that it measures this test alone whatever else the package's tests do.
func streamLeakCheck(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func TestNewStreamLayerRejects(t *testing.T) {
	hn := mesh.NewHostNet(streamLoopback)
	free := netip.AddrPortFrom(streamLoopback, 0)
	for _, tc := range []struct {
		name string
		cfg  StreamConfig
	}{
		{"nil net", StreamConfig{Addr: free, Sources: streamSources}},
		{"no address", StreamConfig{Net: hn, Sources: streamSources}},
		{"unspecified address", StreamConfig{Net: hn, Addr: netip.MustParseAddrPort("0.0.0.0:0"), Sources: streamSources}},
		{"no sources", StreamConfig{Net: hn, Addr: free}},
		{"server TLS alone", StreamConfig{Net: hn, Addr: free, Sources: streamSources, ServerTLS: &tls.Config{}}},
		{"client TLS alone", StreamConfig{Net: hn, Addr: free, Sources: streamSources, ClientTLS: &tls.Config{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if s, err := NewStreamLayer(tc.cfg); err == nil {
				s.Close()
				t.Fatal("NewStreamLayer succeeded")
			}
		})
	}
}

func TestStreamLayerAppendEntries(t *testing.T) {
	streamLeakCheck(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	newTrans := func() *raft.NetworkTransport {
		return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream:  newTestStreamLayer(t),
			MaxPool: 2,
			Timeout: 5 * time.Second,
			Logger:  hclog.NewNullLogger(),
		})
	}
	t1, t2 := newTrans(), newTrans()
	defer t1.Close()
	defer t2.Close()

	want := raft.AppendEntriesRequest{
		RPCHeader:         raft.RPCHeader{ID: []byte("n1"), Addr: []byte(t1.LocalAddr())},
		Term:              7,
		PrevLogEntry:      100,
		PrevLogTerm:       6,
		Entries:           []*raft.Log{{Index: 101, Term: 7, Type: raft.LogCommand, Data: []byte("hello")}},
		LeaderCommitIndex: 90,
	}
	served := make(chan error, 1)
	go func() {
		select {
		case rpc := <-t2.Consumer():
			req, ok := rpc.Command.(*raft.AppendEntriesRequest)
			if !ok {
				served <- fmt.Errorf("got %T, want *raft.AppendEntriesRequest", rpc.Command)
				rpc.Respond(nil, errors.New("unexpected RPC"))
				return
			}
			if req.Term != want.Term || len(req.Entries) != 1 || string(req.Entries[0].Data) != "hello" {
				served <- fmt.Errorf("server got %+v", req)
			}
			rpc.Respond(&raft.AppendEntriesResponse{Term: req.Term, LastLog: req.Entries[0].Index, Success: true}, nil)
			served <- nil
		case <-ctx.Done():
			served <- ctx.Err()
		}
	}()

	var resp raft.AppendEntriesResponse
	if err := t1.AppendEntries("n2", t2.LocalAddr(), &want, &resp); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if !resp.Success || resp.LastLog != 101 || resp.Term != 7 {
		t.Fatalf("response %+v", resp)
	}
	// The local address raft advertises is the listener's real port.
	if ap, err := netip.ParseAddrPort(string(t2.LocalAddr())); err != nil || ap.Addr() != streamLoopback || ap.Port() == 0 {
		t.Fatalf("LocalAddr %q", t2.LocalAddr())
	}
}

// countFSM counts applied commands.
type countFSM struct{ n atomic.Int64 }

func (f *countFSM) Apply(*raft.Log) any                 { return f.n.Add(1) }
func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, errors.New("not supported") }
func (f *countFSM) Restore(r io.ReadCloser) error       { return r.Close() }

func TestStreamLayerRaftCluster(t *testing.T) {
	streamLeakCheck(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const n = 3
	var (
		rafts   []*raft.Raft
		fsms    []*countFSM
		servers []raft.Server
		transes []*raft.NetworkTransport
	)
	for i := range n {
		trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream:  newTestStreamLayer(t),
			MaxPool: 2,
			Timeout: 5 * time.Second,
			Logger:  hclog.NewNullLogger(),
		})
		transes = append(transes, trans)
		servers = append(servers, raft.Server{
			Suffrage: raft.Voter,
			ID:       raft.ServerID(fmt.Sprintf("node-%d", i)),
			Address:  trans.LocalAddr(),
		})
	}
	for i := range n {
		// Timings as in hashicorp/raft's own in-memory tests: loopback is fast.
		conf := raft.DefaultConfig()
		conf.LocalID = servers[i].ID
		conf.HeartbeatTimeout = 50 * time.Millisecond
		conf.ElectionTimeout = 50 * time.Millisecond
		conf.LeaderLeaseTimeout = 50 * time.Millisecond
		conf.CommitTimeout = 5 * time.Millisecond
		conf.Logger = hclog.NewNullLogger()
		store := raft.NewInmemStore()
		fsm := &countFSM{}
		r, err := raft.NewRaft(conf, fsm, store, store, raft.NewInmemSnapshotStore(), transes[i])
		if err != nil {
			t.Fatal(err)
		}
		rafts = append(rafts, r)
		fsms = append(fsms, fsm)
	}
	defer func() {
		for _, r := range rafts {
			if err := r.Shutdown().Error(); err != nil {
				t.Error(err)
			}
		}
	}()
	if err := rafts[0].BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		t.Fatal(err)
	}

	var leader *raft.Raft
	streamWait(ctx, t, "a leader elected and known to all", func() bool {
		addr, _ := rafts[0].LeaderWithID()
		if addr == "" {
			return false
		}
		for _, r := range rafts {
			if a, _ := r.LeaderWithID(); a != addr {
				return false
			}
			if r.State() == raft.Leader {
				leader = r
			}
		}
		return leader != nil
	})
	if err := leader.Apply([]byte("x"), 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	streamWait(ctx, t, "the command applied on every node", func() bool {
		for _, f := range fsms {
			if f.n.Load() != 1 {
				return false
			}
		}
		return true
	})
}

func TestStreamLayerClose(t *testing.T) {
	streamLeakCheck(t)
	s1, s2 := newTestStreamLayer(t), newTestStreamLayer(t)
	defer s2.Close()

	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := s1.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	out, err := s2.Dial(raft.ServerAddress(s1.Addr().String()), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	in, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	// A second connection, closed by its user, must not linger in the set.
	other, err := s1.Dial(raft.ServerAddress(s2.Addr().String()), 0)
	if err != nil {
		t.Fatal(err)
	}
	other.Close()
	go func() { // drain s2's accept queue so the closed conn is handled
		if c, err := s2.Accept(); err == nil {
			c.Close()
		}
	}()

	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s1.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// The accepted connection was closed by s1.Close: its reader wakes up.
	_ = in.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := in.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on accepted conn after Close: %v, want net.ErrClosed", err)
	}
	// And the peer sees the hang-up.
	_ = out.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := out.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("peer read after Close: %v, want EOF", err)
	}
	if _, err := s1.Dial(raft.ServerAddress(s2.Addr().String()), time.Second); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Dial after Close: %v, want net.ErrClosed", err)
	}
	if _, err := s1.Accept(); err == nil {
		t.Fatal("Accept after Close succeeded")
	}
}

// streamWait polls cond until it holds or ctx ends.
func streamWait(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

//go:build jepsen

package jepsen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runos/runos-agent/agent"
	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloud"
	"github.com/runos/runos-agent/datadir"
)

// checkTimeout bounds porcupine on one key's history; running out is
// reported as "unknown", never as a pass.
const checkTimeout = time.Minute

// Tuning is the agents' timers for a schedule's tuning name.
func Tuning(name string) agent.Tuning {
	t := agenttest.FastTuning()
	if name == tuningQuiet {
		// A Raft heartbeat timeout well above the 200 ms health beat:
		// the quiet transport answers idle appends and followers keep
		// their leader from its beats (raftstore.TimingFor).
		t.RaftHeartbeat, t.RaftElection = time.Second, time.Second
	}
	return t
}

func heartbeatTimeout(tuning string) time.Duration { return Tuning(tuning).RaftHeartbeat }

// opTimeout is how long a client waits for one operation before it
// counts it as indeterminate. Odd clients are impatient (a little over
// an election); even ones wait past the store's own retry of a forwarded
// write (3 s per attempt), so the retry-with-the-same-ID path, and the
// state machine's deduplication behind it, carry part of the load.
func opTimeout(tuning string, client int) time.Duration {
	if client%2 == 0 {
		return 8 * time.Second
	}
	return 2*heartbeatTimeout(tuning) + time.Second
}

// Run runs schedule s against a fresh cluster and checks the history.
func Run(t *testing.T, s Schedule) *Result {
	t.Helper()
	t.Logf("schedule %s", s)
	t0 := time.Now()
	c := agenttest.Start(t, s.Nodes, agenttest.WithTuning(Tuning(s.Tuning)))
	res := &Result{Schedule: s}
	h := NewHistory()
	keys := make([]string, s.Keys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}

	w := Workload{Clients: s.Clients, Nodes: s.Nodes, Keys: keys, Seed: s.Seed, Dir: func(i int) string { return c.Dirs()[i] },
		Timeout: func(client int) time.Duration { return opTimeout(s.Tuning, client) }}
	var rig *cloudRig
	stopCloud := func() {}
	if s.Cloud {
		rig = startCloudRig(t, c)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { rig.runClient(ctx, h, s.Seed) })
		stopCloud = func() { cancel(); wg.Wait() }
	}
	stop := w.Start(h)
	n := newNemesis(t, c, s, h)
	n.cloud = rig
	n.run(s.Duration)
	stop()
	stopCloud()
	n.recoverAll()
	res.Nemesis = n.log
	res.Deposed = n.deposed

	// Healed: every node is back, every key read through each node.
	c.WaitFormed(s.Nodes)
	res.Unhealed = FinalReads(h, c.Dirs(), keys)
	var recs map[string]*cloud.CommandRecord
	var cloudProblems []string
	if rig != nil {
		recs, cloudProblems = rig.answered()
	}
	final, err := converge(c)
	if err != nil {
		res.Divergence = err.Error()
	}
	res.Elapsed = time.Since(t0)
	Check(res, h.Ops(), keys, final)
	if rig != nil && final != nil {
		v := rig.check(c, final, recs, cloudProblems)
		res.Cloud = &v
	}
	return res
}

// Workload is the clients of a run: Clients goroutines, client i on node
// i%Nodes's local API (its data dir's socket), on Keys.
type Workload struct {
	Clients, Nodes int
	Keys           []string
	Seed           uint64
	Dir            func(node int) string
	Timeout        func(client int) time.Duration
}

// Start runs the clients until the returned stop is called (which waits
// for them).
func (w Workload) Start(h *History) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var next atomic.Int64
	for i := range w.Clients {
		node := i % w.Nodes
		r := rand.New(rand.NewPCG(w.Seed, uint64(1000+i)))
		wg.Go(func() { runClient(ctx, i, node, w.Dir(node), h, w.Keys, r, &next, w.Timeout(i)) })
	}
	return func() { cancel(); wg.Wait() }
}

// FinalReads reads every key through every node with a consistent read
// (into the history) once the cluster healed; it returns the reads that
// failed.
func FinalReads(h *History, dirs []string, keys []string) []string {
	var failed []string
	for i, dir := range dirs {
		cl := api.NewClient(dir)
		for _, k := range keys {
			o := Op{Client: 100 + i, Node: i, Kind: KindRead, Key: k, Call: h.Now()}
			rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			reg, err := cl.ReadRegister(rctx, k, api.Consistent)
			cancel()
			o.Return = h.Now()
			if err != nil {
				o.Status, o.Error = Fail, err.Error()
				failed = append(failed, fmt.Sprintf("final read of %s on node%d: %v", k, i, err))
			} else {
				o.Status, o.Value, o.Index = OK, reg.Value, reg.Index
			}
			h.Add(o)
		}
		cl.CloseIdleConnections()
	}
	return failed
}

func runClient(ctx context.Context, id, node int, dir string, h *History, keys []string, r *rand.Rand, next *atomic.Int64, timeout time.Duration) {
	cl := api.NewClient(dir)
	defer cl.CloseIdleConnections()
	seen := map[string]int64{} // the last value this client read or wrote, by key
	for ctx.Err() == nil {
		o := Op{Client: id, Node: node, Key: keys[r.IntN(len(keys))]}
		p := r.IntN(100)
		octx, cancel := context.WithTimeout(context.Background(), timeout)
		o.Call = h.Now()
		var err error
		switch {
		case p < 35:
			o.Kind, o.Value = KindWrite, next.Add(1)
			var reg *api.Register
			if reg, err = cl.WriteRegister(octx, api.RegisterRequest{Key: o.Key, Value: o.Value}); err == nil {
				o.Index = reg.Index
			}
		case p < 50:
			// Compare with a value this client saw or wrote, or 0.
			o.Kind, o.Value = KindCAS, next.Add(1)
			o.Expect = seen[o.Key]
			exp := o.Expect
			var reg *api.Register
			if reg, err = cl.WriteRegister(octx, api.RegisterRequest{Key: o.Key, Value: o.Value, Expect: &exp}); err == nil {
				o.Index, o.CASOK = reg.Index, reg.OK
			}
		case p < 75:
			o.Kind = KindRead
			var reg *api.Register
			if reg, err = cl.ReadRegister(octx, o.Key, api.Consistent); err == nil {
				o.Value, o.Index = reg.Value, reg.Index
			}
		case p < 95:
			o.Kind = KindStale
			var reg *api.Register
			if reg, err = cl.ReadRegister(octx, o.Key); err == nil {
				o.Value, o.Index = reg.Value, reg.Index
			}
		default:
			o.Kind, o.Key = KindToken, ""
			var tok *api.Token
			if tok, err = cl.CreateToken(octx, api.TokenRequest{}); err == nil {
				var pt datadir.Token
				if pt, err = datadir.ParseToken(tok.Token); err == nil {
					o.Token = pt.ID
				}
			}
		}
		cancel()
		o.Return = h.Now()
		switch {
		case err == nil:
			o.Status = OK
			if o.Kind != KindToken && (o.Kind != KindCAS || o.CASOK) {
				seen[o.Key] = o.Value
			}
		case o.Kind == KindRead || o.Kind == KindStale || errors.Is(err, api.ErrAgentNotRunning):
			// A read changes nothing; a request to a stopped agent
			// never reached it.
			o.Status, o.Error = Fail, short(err)
		default:
			o.Status, o.Error = Info, short(err)
		}
		h.Add(o)
		// Pause a little, longer after a failure (as a user would).
		d := time.Duration(5+r.IntN(20)) * time.Millisecond
		if err != nil {
			d *= 5
		}
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
}

func short(err error) string {
	s := err.Error()
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// converge waits until every running node has applied the same log index
// and holds byte-identical state there (deduplication records included),
// and returns that state.
func converge(c *agenttest.Cluster) (*Final, error) {
	var dirs []string
	for _, a := range c.Running() {
		dirs = append(dirs, c.Dirs()[c.Index(a)])
	}
	return Converge(dirs)
}

// Converge is converge through the nodes' local APIs (GET /v1/test/state).
func Converge(dirs []string) (*Final, error) {
	deadline := time.Now().Add(time.Minute)
	var last string
	clients := make([]*api.Client, len(dirs))
	for i, d := range dirs {
		clients[i] = api.NewClient(d)
		defer clients[i].CloseIdleConnections()
	}
	for time.Now().Before(deadline) {
		states := make([]*api.TestState, len(dirs))
		var err error
		for i, cl := range clients {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			states[i], err = cl.TestState(ctx)
			cancel()
			if err != nil {
				break
			}
		}
		if err != nil {
			last = err.Error()
			time.Sleep(100 * time.Millisecond)
			continue
		}
		same := true
		for i, st := range states[1:] {
			if st.Index != states[0].Index {
				same = false
				last = fmt.Sprintf("%s at index %d, %s at %d", dirs[0], states[0].Index, dirs[i+1], st.Index)
				break
			}
			if !bytes.Equal(st.State, states[0].State) {
				return nil, fmt.Errorf("diverged at index %d: %s and %s differ: %s", st.Index, dirs[0], dirs[i+1], firstDiff(states[0].State, st.State))
			}
		}
		if same {
			var f Final
			if err := json.Unmarshal(states[0].State, &f); err != nil {
				return nil, err
			}
			return &f, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, fmt.Errorf("not converged within a minute: %s", last)
}

func firstDiff(a, b []byte) string {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	lo := max(0, i-80)
	return fmt.Sprintf("…%s… vs …%s…", a[lo:min(len(a), i+80)], b[lo:min(len(b), i+80)])
}

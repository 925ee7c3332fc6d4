//go:build jepsen

package jepsen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloud"
	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/datadir"
)

// cloudRig is a real runos-cloud backend (package cloud) on 127.0.0.1 the
// cluster is connected to, which the nemesis can take down mid-command
// and bring back on the same address and store.
type cloudRig struct {
	t    *testing.T
	dir  string
	addr string
	id   string // the cluster's ID in the cloud

	mu  sync.Mutex
	srv *cloud.Server // nil while down; guarded by mu

	// sent are the commands the cloud client sent, in order; guarded by mu.
	sent []cloudSent
}

type cloudSent struct {
	ID   string `json:"id"`
	Kind string `json:"kind"`
	At   int64  `json:"at"`
}

func startCloudRig(t *testing.T, c *agenttest.Cluster) *cloudRig {
	r := &cloudRig{t: t, dir: t.TempDir(), addr: "127.0.0.1:0"}
	if err := r.up(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.down)
	tok, err := r.server().CreateToken("jepsen", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r.id = tok.ClusterID
	cl := api.NewClient(c.Dirs()[0])
	defer cl.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cl.CloudConnect(ctx, api.CloudConnectRequest{URL: r.server().URL(), Token: tok.Token, Allow: "admin"}); err != nil {
		t.Fatalf("cloud connect: %v", err)
	}
	return r
}

func (r *cloudRig) server() *cloud.Server {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.srv
}

// up starts the backend (again) on its address and store.
func (r *cloudRig) up() error {
	var err error
	for range 50 { // the old listener's port may take a moment to free
		var s *cloud.Server
		if s, err = cloud.New(cloud.Config{DataDir: r.dir, Listen: r.addr}, agenttest.Logger(r.t)); err == nil {
			if err = s.Start(context.Background()); err == nil {
				r.mu.Lock()
				r.srv, r.addr = s, s.Addr()
				r.mu.Unlock()
				return nil
			}
			s.Close()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// down stops the backend: the cluster's session breaks mid-whatever.
func (r *cloudRig) down() {
	r.mu.Lock()
	s := r.srv
	r.srv = nil
	r.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

// send sends one cloud command if the backend is up.
func (r *cloudRig) send(h *History, kind string, args any) {
	s := r.server()
	if s == nil {
		return
	}
	b, _ := json.Marshal(args)
	rec, err := s.SendCommand(r.id, kind, b)
	if err != nil {
		return // the backend went down meanwhile
	}
	r.mu.Lock()
	r.sent = append(r.sent, cloudSent{ID: rec.ID, Kind: kind, At: h.Now()})
	r.mu.Unlock()
}

// runCloudClient sends deploy_service, delete_service and create_token
// commands, a few a second, until ctx ends.
func (r *cloudRig) runClient(ctx context.Context, h *History, seed uint64) {
	rnd := rand.New(rand.NewPCG(seed, 99))
	for ctx.Err() == nil {
		switch p := rnd.IntN(10); {
		case p < 5:
			r.send(h, "deploy_service", cloudproto.DeployServiceArgs{Service: "redis", Tier: "lightweight"})
		case p < 7:
			if osid := r.someService(rnd); osid != "" {
				r.send(h, "delete_service", cloudproto.DeleteWorkloadArgs{OSID: osid})
			}
		default:
			r.send(h, "create_token", cloudproto.CreateTokenArgs{TTL: "1h"})
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(100+rnd.IntN(200)) * time.Millisecond):
		}
	}
}

// someService is an instance a done deploy created, or "".
func (r *cloudRig) someService(rnd *rand.Rand) string {
	s := r.server()
	if s == nil {
		return ""
	}
	list, err := s.Services(r.id, "")
	if err != nil || len(list) == 0 {
		return ""
	}
	return list[rnd.IntN(len(list))].OSID
}

// CloudVerdict is what the cloud checkers found.
type CloudVerdict struct {
	Sent     int `json:"sent"`
	Done     int `json:"done"`
	Failed   int `json:"failed"`
	Replayed int `json:"replayed"` // answers that said "applied before"
	// Errors counts the failed commands' errors (a definite "no", such
	// as deleting an instance a previous command deleted).
	Errors   map[string]int `json:"errors,omitempty"`
	Problems []string       `json:"problems,omitempty"`
}

// answered waits for every command sent to be answered (after the heal,
// with the cloud up) and returns the answers.
func (r *cloudRig) answered() (map[string]*cloud.CommandRecord, []string) {
	var problems []string
	s := r.server()
	if s == nil {
		return nil, []string{"the cloud is down at the end"}
	}
	r.mu.Lock()
	sent := slices.Clone(r.sent)
	r.mu.Unlock()
	recs := map[string]*cloud.CommandRecord{}
	deadline := time.Now().Add(90 * time.Second)
	for _, cmd := range sent {
		for {
			rec, err := s.Command(r.id, cmd.ID)
			if err == nil && rec.State != cloud.CmdPending {
				recs[cmd.ID] = rec
				break
			}
			if time.Now().After(deadline) {
				problems = append(problems, fmt.Sprintf("command %s (%s) never answered: %v", cmd.ID, cmd.Kind, err))
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return recs, problems
}

// check checks, on the converged state after every command was answered,
// that each command applied at most once and none was lost, and that the
// mirror equals the cluster.
func (r *cloudRig) check(c *agenttest.Cluster, f *Final, recs map[string]*cloud.CommandRecord, problems []string) CloudVerdict {
	v := CloudVerdict{Problems: problems}
	r.mu.Lock()
	sent := slices.Clone(r.sent)
	r.mu.Unlock()
	v.Sent = len(sent)
	// At most once: every command ID is recorded done once in the
	// state; every instance in the state was made by a done deploy, and
	// every done deploy's instance is there unless a done delete removed
	// it.
	done := map[string]int{}
	for _, d := range f.Cloud.Done {
		done[d.ID]++
	}
	for id, n := range done {
		if n > 1 {
			v.Problems = append(v.Problems, fmt.Sprintf("cloud command %s applied %d times", id, n))
		}
	}
	deployed, deleted := map[string]string{}, map[string]bool{}
	for _, cmd := range sent {
		rec := recs[cmd.ID]
		if rec == nil {
			continue
		}
		switch {
		case rec.State == cloud.CmdDone:
			v.Done++
		default:
			v.Failed++
			if rec.Result != nil {
				if v.Errors == nil {
					v.Errors = map[string]int{}
				}
				v.Errors[cmd.Kind+": "+errClass(rec.Result.Error)]++
			}
		}
		if rec.Result != nil && rec.Result.Replayed {
			v.Replayed++
		}
		if rec.State != cloud.CmdDone || rec.Result == nil {
			continue
		}
		switch cmd.Kind {
		case "deploy_service":
			var svc api.Service
			if err := json.Unmarshal(rec.Result.Data, &svc); err != nil || svc.OSID == "" {
				v.Problems = append(v.Problems, fmt.Sprintf("deploy %s: result %s", cmd.ID, rec.Result.Data))
				continue
			}
			if other, ok := deployed[svc.OSID]; ok {
				v.Problems = append(v.Problems, fmt.Sprintf("deploys %s and %s both answered %s", other, cmd.ID, svc.OSID))
			}
			deployed[svc.OSID] = cmd.ID
		case "delete_service":
			var a cloudproto.DeleteWorkloadArgs
			_ = json.Unmarshal(rec.Args, &a)
			deleted[a.OSID] = true
		case "create_token":
			var tok api.Token
			if json.Unmarshal(rec.Result.Data, &tok) == nil {
				if pt, err := datadir.ParseToken(tok.Token); err != nil || f.Tokens[pt.ID] == nil {
					v.Problems = append(v.Problems, fmt.Sprintf("create_token %s: its token is not in the state", cmd.ID))
				}
			}
		}
	}
	for osid := range f.Workloads.Services {
		if _, ok := deployed[osid]; !ok {
			v.Problems = append(v.Problems, fmt.Sprintf("instance %s in the state, made by no answered deploy (applied twice?)", osid))
		}
	}
	for osid, id := range deployed {
		if f.Workloads.Services[osid] == nil && !deleted[osid] {
			v.Problems = append(v.Problems, fmt.Sprintf("instance %s of deploy %s lost", osid, id))
		}
	}
	if err := r.mirrorEquals(c); err != nil {
		v.Problems = append(v.Problems, "mirror: "+err.Error())
	}
	return v
}

// mirrorEquals waits until the cloud's mirror equals the leader's state:
// nodes, tokens, instances with their status, and every event.
func (r *cloudRig) mirrorEquals(c *agenttest.Cluster) error {
	deadline := time.Now().Add(time.Minute)
	var last error
	for time.Now().Before(deadline) {
		if last = r.mirrorDiff(c); last == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return last
}

func (r *cloudRig) mirrorDiff(c *agenttest.Cluster) error {
	l := c.Leader()
	if l == nil {
		return errors.New("no leader")
	}
	st, idx := l.Store().State()
	m, err := r.server().MirrorOf(r.id)
	if err != nil {
		return err
	}
	if !m.Cluster.Connected {
		return errors.New("cluster not connected")
	}
	if p := l.CloudStatus().Pending; p != 0 {
		return fmt.Errorf("%d changes pending (state index %d, cloud cursor %d)", p, idx, m.Cluster.Cursor)
	}
	cmp := func(what string, want, got []string) error {
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(want, got) {
			return fmt.Errorf("%s: mirror %v, cluster %v", what, got, want)
		}
		return nil
	}
	var want, got []string
	for _, n := range st.SortedNodes() {
		want = append(want, n.ID+"/"+n.Name+"/"+n.MeshIP.String())
	}
	for _, n := range m.Nodes {
		got = append(got, n.ID+"/"+n.Name+"/"+n.MeshIP)
	}
	if err := cmp("nodes", want, got); err != nil {
		return err
	}
	want, got = nil, nil
	for id := range st.Tokens {
		want = append(want, id)
	}
	for _, t := range m.Tokens {
		got = append(got, t.ID)
	}
	if err := cmp("tokens", want, got); err != nil {
		return err
	}
	want, got = nil, nil
	for _, s := range st.Workloads.Services {
		want = append(want, s.OSID+"/"+s.Status.Phase+"/"+s.Status.Reason)
	}
	for _, s := range m.Services {
		got = append(got, s.OSID+"/"+s.Status+"/"+s.Reason)
	}
	if err := cmp("services", want, got); err != nil {
		return err
	}
	mev := map[string]bool{}
	for _, e := range m.Events {
		mev[fmt.Sprintf("%d/%s/%s", e.Seq, e.Kind, e.Node)] = true
	}
	for _, e := range st.Events {
		if !mev[fmt.Sprintf("%d/%s/%s", e.Seq, e.Kind, e.Node)] {
			return fmt.Errorf("event %d %s/%s: not in the mirror", e.Seq, e.Kind, e.Node)
		}
	}
	return nil
}

// errClass is an error without the IDs in it, for counting.
func errClass(e string) string {
	var b strings.Builder
	for _, w := range strings.Fields(e) {
		if strings.ContainsAny(w, "0123456789") && len(w) > 6 {
			w = "…"
		}
		b.WriteString(w + " ")
	}
	return strings.TrimSpace(b.String())
}

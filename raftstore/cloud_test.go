package raftstore

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

func testReg() *CloudRegistration {
	return &CloudRegistration{URL: "https://127.0.0.1:1", CloudClusterID: "cl-1", CAFingerprint: strings.Repeat("a", 64),
		ClientCertPEM: []byte("cert"), ClientKeySealed: "sealed1:x"}
}

func TestCloudRegisterAckDisconnect(t *testing.T) {
	s := bootstrapped(t)
	bad := s.apply(3, &Command{ID: "r0", Time: t0, Op: OpCloudRegister, Cloud: &CloudCmd{Register: &CloudRegistration{URL: "x"}}})
	if bad.Error() == nil || !strings.Contains(bad.Err, "malformed") {
		t.Fatalf("incomplete registration: %v", bad.Err)
	}
	if res := s.apply(4, &Command{ID: "r1", Time: t0, Op: OpCloudRegister, Cloud: &CloudCmd{Register: testReg()}}); res.Error() != nil {
		t.Fatal(res.Err)
	}
	if r := s.Cloud.Registration; r == nil || r.Index != 4 || !r.RegisteredAt.Equal(t0) {
		t.Fatalf("registration = %+v", r)
	}
	s.apply(5, &Command{ID: "a1", Time: t0, Op: OpCloudAck, Cloud: &CloudCmd{AckIndex: 3}})
	s.apply(6, &Command{ID: "a2", Time: t0, Op: OpCloudAck, Cloud: &CloudCmd{AckIndex: 2}}) // stale: ignored
	if s.Cloud.AckIndex != 3 {
		t.Fatalf("ack = %d, want 3", s.Cloud.AckIndex)
	}
	// Bookkeeping is not a change: the outbox holds bootstrap and token only.
	if got := len(s.Cloud.Changes); got != 2 {
		t.Fatalf("outbox has %d entries, want 2 (bootstrap, token): %+v", got, s.Cloud.Changes)
	}
	v := s.View()
	v.Cloud.Registration.ClientCertPEM[0] = 'X'
	if s.Cloud.Registration.ClientCertPEM[0] != 'c' {
		t.Fatal("view shares the registration")
	}
	s.apply(7, &Command{ID: "d", Time: t0, Op: OpCloudDisconnect, Cloud: &CloudCmd{}})
	if s.Cloud.Registration != nil || s.Cloud.AckIndex != 0 {
		t.Fatal("disconnect kept the registration")
	}
}

func execCmd(cmdID string, inner *Command) *Command {
	return &Command{ID: "cloud-" + cmdID, Time: t0, Op: OpCloudExec, Cloud: &CloudCmd{CommandID: cmdID, Inner: inner}}
}

func TestCloudExecOnceAndReplayRefused(t *testing.T) {
	s := bootstrapped(t)
	s.Cloud.Registration = testReg()
	s.Cloud.Registration.Allow = CloudAllowAdmin
	tok := &Command{Op: OpCreateToken, CreateToken: &CreateTokenCmd{Token: Token{ID: "ct", SecretHash: "h", ExpiresAt: t0.Add(time.Hour), UsesLeft: 1}}}
	if res := s.apply(3, execCmd("c1", tok)); res.Error() != nil {
		t.Fatal(res.Err)
	}
	// The same Raft command again (a forwarded retry): the first result.
	if res := s.apply(4, execCmd("c1", tok)); res.Error() != nil || res.Index != 3 {
		t.Fatalf("retry: %+v", res)
	}
	// A new Raft command with the same cloud command ID: refused.
	replay := execCmd("c1", tok)
	replay.ID = "other"
	res := s.apply(5, replay)
	if !strings.Contains(res.Err, ErrCloudReplay.Error()) {
		t.Fatalf("replay: err = %q", res.Err)
	}
	// Even after the Raft dedup window has long forgotten it.
	for i := range appliedWindow + 10 {
		s.apply(uint64(10+i), &Command{ID: fmt.Sprint("e", i), Time: t0, Op: OpEvent, Event: &Event{Kind: "x"}})
	}
	res = s.apply(100000, execCmd("c1", tok))
	if !strings.Contains(res.Err, ErrCloudReplay.Error()) {
		t.Fatalf("replay after the dedup window: err = %q", res.Err)
	}
	if len(s.Tokens) != 2 {
		t.Fatalf("%d tokens, want 2", len(s.Tokens))
	}
	// Ops the cloud may not send.
	boot := &Command{Op: OpBootstrap, Bootstrap: &BootstrapCmd{}}
	if res := s.apply(100001, execCmd("c2", boot)); !strings.Contains(res.Err, ErrCloudNotAllowed.Error()) {
		t.Fatalf("bootstrap via cloud: %q", res.Err)
	}
	nested := execCmd("c3", execCmd("c4", tok))
	if res := s.apply(100002, nested); !strings.Contains(res.Err, ErrCloudNotAllowed.Error()) {
		t.Fatalf("nested exec: %q", res.Err)
	}
	// A failed command is remembered as failed; its only change is the
	// one that carries its event to the mirror.
	rm := &Command{Op: OpRemoveNode, RemoveNode: &RemoveNodeCmd{Name: "nope"}}
	res = s.apply(100003, execCmd("c5", rm))
	if res.Error() == nil || s.Cloud.Result("c5") == nil || s.Cloud.Result("c5").Err == "" {
		t.Fatalf("failed remove: %+v %+v", res, s.Cloud.Result("c5"))
	}
	if last := s.Cloud.Changes[len(s.Cloud.Changes)-1]; last.Op != OpCloudExec || last.Index != 100003 {
		t.Fatalf("failed command's change = %+v", last)
	}
	if e := s.Events[len(s.Events)-1]; e.Kind != EventCloudCommand || !strings.Contains(e.Detail, "c5 (remove_node) failed: ") {
		t.Fatalf("failed command's event = %+v", e)
	}
	// Remove through the cloud records the event and the change.
	res = s.apply(100004, execCmd("c6", &Command{Op: OpRemoveNode, RemoveNode: &RemoveNodeCmd{Name: "alpha"}}))
	if res.Error() != nil {
		t.Fatal(res.Err)
	}
	last := s.Cloud.Changes[len(s.Cloud.Changes)-1]
	if last.Op != OpRemoveNode || last.Subject != "n1" || last.Index != 100004 {
		t.Fatalf("last change = %+v", last)
	}
	if e := s.Events[len(s.Events)-2]; e.Kind != EventNodeRemoved || e.Seq != 100004 {
		t.Fatalf("removal event = %+v", e)
	}
	if e := s.Events[len(s.Events)-1]; e.Kind != EventCloudCommand || e.Seq != 100004 || e.Detail != "cloud command c6 (remove_node) executed at index 100004" {
		t.Fatalf("last event = %+v", e)
	}
}

// The cloud's level is the FSM's to enforce as well: a leader that
// proposes a command beyond it gets a refusal, remembered and recorded.
func TestCloudExecLevels(t *testing.T) {
	s := bootstrapped(t)
	tok := func() *Command {
		return &Command{Op: OpCreateToken, CreateToken: &CreateTokenCmd{Token: Token{ID: "ct", SecretHash: "h", ExpiresAt: t0.Add(time.Hour), UsesLeft: 1}}}
	}
	del := func() *Command {
		return &Command{Op: OpWorkloadServiceDelete, Workload: &WorkloadCmd{OSID: "redis-aaaaa"}}
	}
	if res := s.apply(3, &Command{ID: "r", Time: t0, Op: OpCloudRegister, Cloud: &CloudCmd{Register: testReg()}}); res.Error() != nil || s.Cloud.Registration.Allow != CloudAllowDeploy {
		t.Fatalf("default level: %v %q", res.Err, s.Cloud.Registration.Allow)
	}
	tokens := len(s.Tokens)
	if res := s.apply(4, execCmd("a", tok())); !strings.Contains(res.Err, "--allow admin") || len(s.Tokens) != tokens {
		t.Fatalf("create_token at deploy: %q", res.Err)
	}
	if r := s.Cloud.Result("a"); r == nil || !strings.Contains(r.Err, "admin") {
		t.Fatalf("refusal not remembered: %+v", r)
	}
	if e := s.Events[len(s.Events)-1]; e.Kind != EventCloudCommand || !strings.Contains(e.Detail, "a (create_token) refused") {
		t.Fatalf("refusal event = %+v", e)
	}
	if res := s.apply(5, execCmd("b", del())); strings.Contains(res.Err, ErrCloudNotAllowed.Error()) || !strings.Contains(res.Err, "no such service") {
		t.Fatalf("workload at deploy: %v", res.Err)
	}
	// The level changes locally, never through the cloud.
	if res := s.apply(6, execCmd("c", &Command{Op: OpCloudAllow, Cloud: &CloudCmd{Allow: CloudAllowAdmin}})); !strings.Contains(res.Err, ErrCloudNotAllowed.Error()) {
		t.Fatalf("cloud_allow from the cloud: %q", res.Err)
	}
	if res := s.apply(7, &Command{ID: "l1", Time: t0, Op: OpCloudAllow, Cloud: &CloudCmd{Allow: "root"}}); res.Error() == nil {
		t.Fatal("unknown level accepted")
	}
	s.apply(8, &Command{ID: "l2", Time: t0, Op: OpCloudAllow, Cloud: &CloudCmd{Allow: CloudAllowRead}})
	if res := s.apply(9, execCmd("d", del())); !strings.Contains(res.Err, "--allow deploy") {
		t.Fatalf("workload at read: %q", res.Err)
	}
	s.apply(10, &Command{ID: "l3", Time: t0, Op: OpCloudAllow, Cloud: &CloudCmd{Allow: CloudAllowAdmin}})
	if res := s.apply(11, execCmd("e", tok())); res.Error() != nil || len(s.Tokens) != tokens+1 {
		t.Fatalf("create_token at admin: %q", res.Err)
	}
	// A command the leader refused: its reason is the result, with an event.
	res := s.apply(12, &Command{ID: "cloud-f", Time: t0, Op: OpCloudExec, Cloud: &CloudCmd{CommandID: "f", Kind: "format_disk", Refused: `unknown command kind "format_disk"`}})
	if res.Err != `unknown command kind "format_disk"` || s.Cloud.Result("f") == nil {
		t.Fatalf("refused by the leader: %+v", res)
	}
	if e := s.Events[len(s.Events)-1]; !strings.Contains(e.Detail, "f (format_disk) refused: unknown command kind") {
		t.Fatalf("event = %+v", e)
	}
}

func TestCloudRotateAndReissue(t *testing.T) {
	s := bootstrapped(t)
	if res := s.apply(3, &Command{ID: "x", Time: t0, Op: OpCloudRotate, Cloud: &CloudCmd{}}); res.Error() == nil {
		t.Fatal("rotation without a registration")
	}
	s.apply(4, &Command{ID: "r", Time: t0, Op: OpCloudRegister, Cloud: &CloudCmd{Register: testReg()}})
	s.apply(5, &Command{ID: "rot", Time: t0, Op: OpCloudRotate, Cloud: &CloudCmd{}})
	if !s.Cloud.RotateCredential {
		t.Fatal("rotation not pending")
	}
	v := s.View()
	stale := *s.Cloud.Registration
	stale.Index = 1 // a registration that is gone
	stale.ClientCertPEM, stale.ClientKeySealed = []byte("cert2"), "sealed1:y"
	if res := s.apply(6, &Command{ID: "i1", Time: t0, Op: OpCloudReissue, Cloud: &CloudCmd{Register: &stale}}); res.Error() == nil {
		t.Fatal("a credential for another registration was stored")
	}
	next := stale
	next.Index = s.Cloud.Registration.Index
	if res := s.apply(7, &Command{ID: "i2", Time: t0, Op: OpCloudReissue, Cloud: &CloudCmd{Register: &next}}); res.Error() != nil {
		t.Fatal(res.Err)
	}
	if r := s.Cloud.Registration; string(r.ClientCertPEM) != "cert2" || r.ClientKeySealed != "sealed1:y" || s.Cloud.RotateCredential || r.URL != testReg().URL {
		t.Fatalf("after reissue: %+v pending %v", r, s.Cloud.RotateCredential)
	}
	if string(v.Cloud.Registration.ClientCertPEM) != "cert" || !v.Cloud.RotateCredential {
		t.Fatal("a view saw the reissue")
	}
	if res := s.apply(8, execCmd("z", &Command{Op: OpCloudRotate, Cloud: &CloudCmd{}})); !strings.Contains(res.Err, ErrCloudNotAllowed.Error()) {
		t.Fatalf("rotation from the cloud: %q", res.Err)
	}
}

func TestCloudDoneWindowBounded(t *testing.T) {
	s := bootstrapped(t)
	for i := range cloudDoneWindow + 5 {
		s.apply(uint64(3+i), execCmd(fmt.Sprint("c", i), &Command{Op: OpRemoveNode, RemoveNode: &RemoveNodeCmd{Name: "nope"}}))
	}
	if len(s.Cloud.Done) != cloudDoneWindow || s.Cloud.Result("c4") != nil || s.Cloud.Result("c5") == nil {
		t.Fatalf("done window: %d entries", len(s.Cloud.Done))
	}
	v := s.View()
	s.apply(1<<20, execCmd("late", &Command{Op: OpRemoveNode, RemoveNode: &RemoveNodeCmd{Name: "nope"}}))
	if v.Cloud.Result("late") != nil || s.Cloud.Result("late") == nil {
		t.Fatal("a view saw a later command")
	}
}

func TestCloudOutboxWindowAndResync(t *testing.T) {
	s := bootstrapped(t)
	for i := range changeWindow + 100 {
		s.apply(uint64(3+i), &Command{ID: fmt.Sprint("e", i), Time: t0, Op: OpEvent, Event: &Event{Kind: "x"}})
	}
	if len(s.Cloud.Changes) != changeWindow {
		t.Fatalf("outbox holds %d, want %d", len(s.Cloud.Changes), changeWindow)
	}
	first := s.Cloud.Changes[0].Index
	if _, ok := s.Cloud.ChangesAfter(first - 2); ok {
		t.Fatal("a cursor older than the window resumes (must resync)")
	}
	ch, ok := s.Cloud.ChangesAfter(first - 1)
	if !ok || len(ch) != changeWindow {
		t.Fatalf("cursor at the window's edge: ok=%v n=%d", ok, len(ch))
	}
	last := s.Cloud.Changes[len(s.Cloud.Changes)-1].Index
	if ch, ok := s.Cloud.ChangesAfter(last - 3); !ok || len(ch) != 3 || ch[0].Index != last-2 {
		t.Fatalf("tail: ok=%v %+v", ok, ch)
	}
	if s.Cloud.Pending(last) != 0 {
		t.Fatal("pending after the last index")
	}
	// A view's outbox is unaffected by later appends, and survives a
	// snapshot round trip.
	v := s.View()
	n := len(v.Cloud.Changes)
	s.apply(1<<20, &Command{ID: "later", Time: t0, Op: OpEvent, Event: &Event{Kind: "x"}})
	if len(v.Cloud.Changes) != n || v.Cloud.Changes[n-1].Index != last {
		t.Fatal("view changed under a later write")
	}
	b, err := json.Marshal(s.Clone())
	if err != nil {
		t.Fatal(err)
	}
	var back State
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Cloud.Trimmed != s.Cloud.Trimmed || len(back.Cloud.Changes) != len(s.Cloud.Changes) {
		t.Fatal("snapshot lost the outbox")
	}
}

func BenchmarkRecordChange(b *testing.B) {
	s := bootstrapped(&testing.T{})
	cmd := &Command{Op: OpEvent, Event: &Event{Kind: "x"}}
	res := &Result{}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		s.recordChange(uint64(i+3), cmd, res)
	}
}

// BenchmarkRecordChangeWorkloadStatus is the outbox's cost of a
// reconciler's status write (the most frequent workload write).
func BenchmarkRecordChangeWorkloadStatus(b *testing.B) {
	for _, changed := range []bool{true, false} {
		b.Run(fmt.Sprintf("changed=%v", changed), func(b *testing.B) {
			s := bootstrapped(&testing.T{})
			cmd := &Command{Op: OpWorkloadStatus, Workload: &WorkloadCmd{OSID: "postgres-aaaaa", Status: &Observed{Phase: PhaseReady}}}
			data, _ := json.Marshal(WorkloadResult{Changed: changed})
			res := &Result{Data: data}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				s.recordChange(uint64(i+3), cmd, res)
			}
		})
	}
}

// Workload writes reach the outbox named by OSID; a status write that
// changed nothing does not.
func TestCloudOutboxWorkloads(t *testing.T) {
	s := bootstrapped(t)
	idx := uint64(10)
	apply := func(c *Command) *Result { idx++; return s.apply(idx, c) }
	last := func() CloudChange { return s.Cloud.Changes[len(s.Cloud.Changes)-1] }
	if r := apply(execCmd("cloud-1", wcmd("c1", OpWorkloadServiceCreate, &WorkloadCmd{Service: svc("postgres-aaaaa")}))); r.Err != "" {
		t.Fatal(r.Err)
	}
	if c := last(); c.Op != OpWorkloadServiceCreate || c.Subject != "postgres-aaaaa" || c.Index != idx {
		t.Fatalf("create change %+v", c)
	}
	st := &Observed{Phase: PhaseApplying, Total: 1, Generation: 1}
	apply(wcmd("s1", OpWorkloadStatus, &WorkloadCmd{OSID: "postgres-aaaaa", Status: st}))
	if c := last(); c.Op != OpWorkloadStatus || c.Subject != "postgres-aaaaa" {
		t.Fatalf("status change %+v", c)
	}
	n := len(s.Cloud.Changes)
	apply(wcmd("s2", OpWorkloadStatus, &WorkloadCmd{OSID: "postgres-aaaaa", Status: st}))
	if len(s.Cloud.Changes) != n {
		t.Fatal("an unchanged status write reached the outbox")
	}
	apply(execCmd("cloud-2", wcmd("d1", OpWorkloadServiceDelete, &WorkloadCmd{OSID: "postgres-aaaaa"})))
	apply(wcmd("p1", OpWorkloadServicePurge, &WorkloadCmd{OSID: "postgres-aaaaa"}))
	if c := last(); c.Op != OpWorkloadServicePurge || c.Subject != "postgres-aaaaa" || len(s.Cloud.Changes) != n+2 {
		t.Fatalf("purge change %+v (%d changes)", c, len(s.Cloud.Changes)-n)
	}
	// The kube target is not the cloud's business.
	if r := apply(execCmd("cloud-3", wcmd("k1", OpWorkloadKubeSet, &WorkloadCmd{Kube: &KubeTarget{Kubeconfig: "x"}}))); !strings.Contains(r.Err, ErrCloudNotAllowed.Error()) {
		t.Fatalf("kube_set from the cloud: %q", r.Err)
	}
}

package raftstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func setAdmin(hash, key string, ifUnset bool, at time.Time) *Command {
	return &Command{ID: "ui-" + hash, Time: at, Op: OpUISetAdmin, UI: &UICmd{AdminHash: hash, SessionKey: key, IfUnset: ifUnset}}
}

func TestUISetAdminInitThenReset(t *testing.T) {
	s := bootstrapped(t)
	if err := s.apply(3, setAdmin("h1", "k1", true, t0)).Error(); err != nil {
		t.Fatal(err)
	}
	if s.UI.AdminHash != "h1" || s.UI.SessionKey != "k1" || s.UI.Epoch != 1 || !s.UI.PasswordSetAt.Equal(t0) {
		t.Fatalf("after init: %+v", s.UI)
	}
	events := len(s.Events)
	// A second init credential (init.json replayed, or raced by a reset)
	// never overwrites the one in force.
	if res := s.apply(4, setAdmin("h-late", "k-late", true, t0)); !res.UIAdminWasSet() {
		t.Fatalf("late init credential: %v, want ErrUIAdminSet", res.Error())
	}
	if s.UI.AdminHash != "h1" {
		t.Fatal("late init credential replaced the admin hash")
	}
	s.apply(5, &Command{ID: "rv", Time: t0, Op: OpUIRevokeSession, UI: &UICmd{SessionID: "s1", Until: t0.Add(time.Hour)}})
	if err := s.apply(6, setAdmin("h2", "k2", false, t0.Add(time.Minute))).Error(); err != nil {
		t.Fatal(err)
	}
	if s.UI.AdminHash != "h2" || s.UI.SessionKey != "k2" || s.UI.Epoch != 2 {
		t.Fatalf("after reset: %+v", s.UI)
	}
	if len(s.UI.Revoked) != 0 {
		t.Errorf("revocations of the old key kept: %v", s.UI.Revoked)
	}
	if len(s.Events) != events+1 || s.Events[len(s.Events)-1].Kind != EventUIPasswordReset || s.Events[len(s.Events)-1].Seq != 6 {
		t.Errorf("reset event missing: %+v", s.Events)
	}
}

func TestUIRejections(t *testing.T) {
	cases := []struct {
		name string
		cmd  *Command
		want error
	}{
		{"no payload", &Command{ID: "a", Time: t0, Op: OpUISetAdmin}, ErrMalformedCmd},
		{"no hash", setAdmin("", "k", false, t0), ErrMalformedCmd},
		{"no key", setAdmin("h", "", false, t0), ErrMalformedCmd},
		{"revoke without id", &Command{ID: "rb", Time: t0, Op: OpUIRevokeSession, UI: &UICmd{Until: t0}}, ErrMalformedCmd},
		{"unknown ui op", &Command{ID: "c", Time: t0, Op: "ui_launch", UI: &UICmd{}}, ErrUnknownOp},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := bootstrapped(t)
			if err := s.apply(3, tc.cmd).Error(); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if s.UI.AdminHash != "" || len(s.UI.Revoked) != 0 {
				t.Fatal("a rejected command changed the UI state")
			}
		})
	}
	s := NewState()
	if err := s.apply(1, setAdmin("h", "k", true, t0)).Error(); !errors.Is(err, ErrNotBootstrap) {
		t.Fatalf("before bootstrap: %v", err)
	}
}

func TestUIRevokedIsBoundedAndPruned(t *testing.T) {
	s := bootstrapped(t)
	s.apply(3, setAdmin("h", "k", true, t0))
	revoke := func(i int, id string, at, until time.Time) {
		t.Helper()
		if err := s.apply(uint64(i), &Command{ID: fmt.Sprint("r", i), Time: at, Op: OpUIRevokeSession, UI: &UICmd{SessionID: id, Until: until}}).Error(); err != nil {
			t.Fatal(err)
		}
	}
	revoke(4, "short", t0, t0.Add(time.Minute))
	revoke(5, "long", t0, t0.Add(time.Hour))
	revoke(6, "later", t0.Add(2*time.Minute), t0.Add(time.Hour))
	if _, ok := s.UI.Revoked["short"]; ok {
		t.Error("expired revocation kept")
	}
	if len(s.UI.Revoked) != 2 {
		t.Fatalf("revoked = %v", s.UI.Revoked)
	}
	for i := range revokedWindow + 10 {
		revoke(10+i, fmt.Sprint("s", i), t0.Add(2*time.Minute), t0.Add(time.Hour+time.Duration(i)*time.Second))
	}
	if len(s.UI.Revoked) != revokedWindow {
		t.Fatalf("%d revocations kept, want %d", len(s.UI.Revoked), revokedWindow)
	}
	if _, ok := s.UI.Revoked[fmt.Sprint("s", revokedWindow+9)]; !ok {
		t.Error("the newest revocation was dropped instead of the one closest to expiry")
	}
	// Views are deep copies.
	v := s.View()
	v.UI.Revoked["x"] = t0
	if _, ok := s.UI.Revoked["x"]; ok {
		t.Error("View shares the revoked map")
	}
}

func TestUIStateSurvivesSnapshot(t *testing.T) {
	f := NewFSM()
	f.state = bootstrapped(t)
	for i, cmd := range []*Command{
		setAdmin("h1", "k1", true, t0),
		{ID: "rv1", Time: t0, Op: OpUIRevokeSession, UI: &UICmd{SessionID: "s1", Until: t0.Add(time.Hour)}},
	} {
		b, _ := json.Marshal(cmd)
		if res := f.Apply(&raft.Log{Index: uint64(3 + i), Data: b}).(*Result); res.Error() != nil {
			t.Fatal(res.Error())
		}
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink bufSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	restored := NewFSM()
	if err := restored.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	view, _ := restored.State()
	before, _ := f.State()
	if !reflect.DeepEqual(view.UI, before.UI) || view.UI.AdminHash != "h1" || !view.UI.Revoked["s1"].Equal(t0.Add(time.Hour)) {
		t.Fatalf("restored UI state %+v, want %+v", view.UI, before.UI)
	}
}

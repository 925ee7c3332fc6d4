package leader

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A task runs exactly while the node leads: started on gaining leadership,
// cancelled and waited for on losing it, started again on the next term.
func TestTasksFollowLeadership(t *testing.T) {
	changes := make(chan bool, 1)
	var running, starts, stops atomic.Int32
	l, err := New(Config{Changes: changes, IsLeader: func() bool { return false }, Tasks: []Task{{
		Name: "work",
		Run: func(ctx context.Context) error {
			starts.Add(1)
			running.Add(1)
			<-ctx.Done()
			time.Sleep(10 * time.Millisecond) // Close must wait for this
			running.Add(-1)
			stops.Add(1)
			return nil
		},
	}}}, testLog())
	if err != nil {
		t.Fatal(err)
	}
	l.Start(context.Background())
	if l.Leading() {
		t.Fatal("leading before any leadership")
	}
	changes <- true
	waitFor(t, "task started", func() bool { return running.Load() == 1 })
	if !l.Leading() {
		t.Fatal("not leading while the task runs")
	}
	changes <- false
	waitFor(t, "task stopped", func() bool { return stops.Load() == 1 && !l.Leading() })
	changes <- true
	waitFor(t, "task started again", func() bool { return starts.Load() == 2 && running.Load() == 1 })
	l.Close()
	if running.Load() != 0 {
		t.Fatal("Close returned while a task was still running")
	}
	if got := l.Terms(); got != 2 {
		t.Fatalf("terms = %d, want 2", got)
	}
	l.Close() // idempotent
}

// A node that already leads when the loop starts runs its tasks at once
// (LeaderCh reports only transitions).
func TestAlreadyLeading(t *testing.T) {
	ran := make(chan struct{})
	l, err := New(Config{Changes: make(chan bool), IsLeader: func() bool { return true }, Tasks: []Task{{
		Name: "once", Run: func(ctx context.Context) error { close(ran); return nil },
	}}}, testLog())
	if err != nil {
		t.Fatal(err)
	}
	l.Start(context.Background())
	defer l.Close()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("task did not run")
	}
}

// A failing task is retried while the leadership lasts; a finished one is not.
func TestFailedTaskRetried(t *testing.T) {
	var tries atomic.Int32
	l, err := New(Config{Changes: make(chan bool), IsLeader: func() bool { return true }, RetryAfter: time.Millisecond, Tasks: []Task{{
		Name: "flaky", Run: func(ctx context.Context) error {
			if tries.Add(1) < 3 {
				return errors.New("not yet")
			}
			return nil
		},
	}}}, testLog())
	if err != nil {
		t.Fatal(err)
	}
	l.Start(context.Background())
	waitFor(t, "three tries", func() bool { return tries.Load() == 3 })
	time.Sleep(20 * time.Millisecond)
	l.Close()
	if n := tries.Load(); n != 3 {
		t.Fatalf("%d tries, want 3 (a task that returned nil must not run again)", n)
	}
}

func TestNewRejects(t *testing.T) {
	ok := Config{Changes: make(chan bool), IsLeader: func() bool { return false }}
	for name, c := range map[string]Config{
		"no changes":   {IsLeader: ok.IsLeader},
		"no isLeader":  {Changes: ok.Changes},
		"unnamed task": {Changes: ok.Changes, IsLeader: ok.IsLeader, Tasks: []Task{{Run: func(context.Context) error { return nil }}}},
	} {
		if _, err := New(c, testLog()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New(ok, nil); err == nil {
		t.Error("nil logger accepted")
	}
	l, _ := New(ok, testLog())
	l.Close() // Close without Start returns
}

// No task runs before the new leader has caught up with the log: a task
// acting on an older state could undo what the log already holds. A
// failing catch-up is retried; losing leadership meanwhile starts nothing.
func TestTasksWaitForCatchUp(t *testing.T) {
	changes := make(chan bool, 1)
	var attempts, starts atomic.Int32
	caughtUp := make(chan struct{})
	l, err := New(Config{
		Changes:    changes,
		IsLeader:   func() bool { return false },
		RetryAfter: time.Millisecond,
		CatchUp: func(ctx context.Context) error {
			attempts.Add(1)
			select {
			case <-caughtUp:
				return nil
			default:
				return errors.New("not yet")
			}
		},
		Tasks: []Task{{Name: "work", Run: func(ctx context.Context) error {
			starts.Add(1)
			<-ctx.Done()
			return nil
		}}},
	}, testLog())
	if err != nil {
		t.Fatal(err)
	}
	l.Start(context.Background())
	defer l.Close()
	changes <- true
	waitFor(t, "catch-up retried", func() bool { return attempts.Load() >= 3 })
	if starts.Load() != 0 {
		t.Fatal("a task started before the catch-up succeeded")
	}
	changes <- false
	waitFor(t, "leadership given up", func() bool { return !l.Leading() })
	close(caughtUp)
	changes <- true
	waitFor(t, "task started after the catch-up", func() bool { return starts.Load() == 1 })
}

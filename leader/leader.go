// Package leader runs the work only the Raft leader does, as Consul's
// monitorLeadership/leaderLoop: one loop watches leadership changes, starts
// every leader task when this node gains leadership, and cancels them (and
// waits for them) when it loses it. Components do not check leadership on
// timers of their own; they are handed a context that lives exactly as long
// as this node leads.
package leader

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// Task is one piece of leader-only work. Run is called when this node
// becomes the leader and its ctx is cancelled when it stops leading (or the
// loop closes). Returning nil means the task is done for this term;
// returning an error before ctx ends restarts it after a pause.
type Task struct {
	Name string
	Run  func(ctx context.Context) error
}

// Config configures a Loop.
type Config struct {
	// Changes delivers true on gaining and false on losing leadership; only
	// the latest value matters (raft.Raft.LeaderCh). Required.
	Changes <-chan bool
	// IsLeader reports leadership now; read once at Start, since Changes
	// reports only transitions. Required.
	IsLeader func() bool
	Tasks    []Task
	// CatchUp, when set, runs once per leadership before any task starts
	// (retried after RetryAfter until it succeeds or leadership ends). A
	// new Raft leader may not have applied the whole log when it learns
	// it leads; every task decides from the state, so none may act on an
	// older one (raftstore.Store.CatchUp).
	CatchUp func(ctx context.Context) error
	// RetryAfter is the pause before a failed task runs again (default 1s).
	RetryAfter time.Duration
}

// Loop owns the leader tasks' lifecycles.
type Loop struct {
	cfg Config
	log *slog.Logger

	startOnce sync.Once
	closeOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}

	mu      sync.Mutex
	leading bool // guarded by mu; tasks are running
	terms   uint64
}

// New returns a loop; Start runs it.
func New(cfg Config, log *slog.Logger) (*Loop, error) {
	if cfg.Changes == nil || cfg.IsLeader == nil {
		return nil, errors.New("leader: Changes and IsLeader are required")
	}
	if log == nil {
		return nil, errors.New("leader: logger is required")
	}
	for _, t := range cfg.Tasks {
		if t.Name == "" || t.Run == nil {
			return nil, errors.New("leader: every task needs a name and Run")
		}
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = time.Second
	}
	return &Loop{cfg: cfg, log: log.With("component", "leader"), done: make(chan struct{})}, nil
}

// Start watches leadership until Close.
func (l *Loop) Start(ctx context.Context) {
	l.startOnce.Do(func() {
		ctx, l.cancel = context.WithCancel(ctx)
		go func() {
			defer close(l.done)
			l.run(ctx)
		}()
	})
}

// Close stops the tasks and the loop and waits for them. It is idempotent.
func (l *Loop) Close() error {
	l.closeOnce.Do(func() {
		l.startOnce.Do(func() { close(l.done) }) // never started
		if l.cancel != nil {
			l.cancel()
		}
		<-l.done
	})
	return nil
}

// Leading reports whether the leader tasks are running.
func (l *Loop) Leading() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leading
}

// Terms counts the leaderships this loop has run tasks for (tests, metrics).
func (l *Loop) Terms() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.terms
}

func (l *Loop) run(ctx context.Context) {
	var stop func()
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	isLeader := l.cfg.IsLeader()
	for {
		switch {
		case isLeader && stop == nil:
			stop = l.lead(ctx)
		case !isLeader && stop != nil:
			stop()
			stop = nil
		}
		select {
		case <-ctx.Done():
			return
		case isLeader = <-l.cfg.Changes:
		}
	}
}

// lead starts every task under a context that ends with this leadership
// and returns the function that ends it and waits for them.
func (l *Loop) lead(parent context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(parent)
	var wg sync.WaitGroup
	l.mu.Lock()
	l.leading = true
	l.terms++
	l.mu.Unlock()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if !l.catchUp(ctx) {
			return
		}
		l.log.Info("leading: starting leader tasks", "tasks", len(l.cfg.Tasks))
		for _, t := range l.cfg.Tasks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.runTask(ctx, t)
			}()
		}
	}()
	return func() {
		cancel()
		wg.Wait()
		l.mu.Lock()
		l.leading = false
		l.mu.Unlock()
		l.log.Info("not leading: leader tasks stopped")
	}
}

// catchUp runs Config.CatchUp until it succeeds; false: leadership ended.
func (l *Loop) catchUp(ctx context.Context) bool {
	if l.cfg.CatchUp == nil {
		return true
	}
	for {
		err := l.cfg.CatchUp(ctx)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		l.log.Warn("leading: catching up with the log failed; retrying", "err", err, "after", l.cfg.RetryAfter)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(l.cfg.RetryAfter):
		}
	}
}

func (l *Loop) runTask(ctx context.Context, t Task) {
	for {
		err := t.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			return
		}
		l.log.Warn("leader task failed; restarting", "task", t.Name, "err", err, "after", l.cfg.RetryAfter)
		select {
		case <-ctx.Done():
			return
		case <-time.After(l.cfg.RetryAfter):
		}
	}
}

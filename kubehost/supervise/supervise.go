// Package supervise runs one long-lived program (containerd, kubelet, etcd,
// kube-apiserver, ...) as a child process that outlives the agent: the child
// has its own session, writes straight to a log file, and is recorded in a
// pid file so that the next agent adopts it instead of starting a second
// copy. While supervised, it is restarted with exponential backoff.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Config describes one supervised program.
type Config struct {
	Name string   // "containerd", "kubelet", ... ; required
	Path string   // absolute path of the binary; required
	Args []string // without argv[0]
	// Env is extra KEY=VALUE on top of a minimal environment (only PATH):
	// the agent's own environment is not passed on, so the child does not
	// change behaviour with how the agent happened to be started.
	Env []string
	Dir string // state dir for pid file, lock and logs; required (created 0700)
	// LogMaxBytes rotates <Dir>/<Name>.log when it grows past this (copy to
	// .1, .2 ... keep LogKeep, then truncate in place: the child writes with
	// O_APPEND straight to the file, never through a pipe, so it survives
	// the agent dying). Defaults 10 MiB, keep 3.
	LogMaxBytes int64
	LogKeep     int
	// LogCheckInterval is how often the log size is checked (10 s).
	LogCheckInterval time.Duration
	// Backoff between restarts: starts at MinBackoff (1 s), doubles to
	// MaxBackoff (60 s), resets after the process stayed up StableAfter (60 s).
	MinBackoff, MaxBackoff, StableAfter time.Duration
	StopTimeout                         time.Duration // SIGTERM then SIGKILL after this (10 s)
}

// Status is a snapshot of the supervised program, shaped for the agent's
// status API and metrics.
type Status struct {
	Name      string    `json:"name"`
	Running   bool      `json:"running"`
	PID       int       `json:"pid,omitempty"`
	Restarts  int       `json:"restarts"`
	LastError string    `json:"last_error,omitempty"` // e.g. "exit status 1: <last log line>"
	Since     time.Time `json:"since,omitzero"`       // start of the current run
	Adopted   bool      `json:"adopted,omitempty"`
}

// minimalPath is the whole inherited environment of a child.
const minimalPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// maxErrorLine bounds the log line quoted in Status.LastError: enough for a
// Go error chain, short enough for a status table.
const maxErrorLine = 300

const (
	stateIdle = iota
	stateRunning
	stateClosed
	stateDetached
)

// Process supervises one program. Start it once; end with Close (stops the
// program) or Detach (leaves it running for the next agent to adopt).
type Process struct {
	cfg  Config
	log  *slog.Logger
	argv []string
	env  []string

	// lifeMu serialises Start, Close and Detach; it guards state, closeErr,
	// lock, wake and stop. Held across Start's stop of a stale process, so
	// a concurrent Close waits for Start to finish first.
	lifeMu   sync.Mutex
	state    int
	closeErr error
	lock     *os.File // flock on <Dir>/<Name>.lock while supervising
	wake     *waker   // interrupts the run loop's wait on the process
	stop     chan struct{}
	detach   bool // why stop was closed: Detach (true) or Close (false)
	wg       sync.WaitGroup

	// mu guards st; never held across a system call that may block.
	mu sync.Mutex
	st Status
}

// New validates cfg and fills in defaults; nothing is started.
func New(cfg Config, log *slog.Logger) (*Process, error) {
	switch {
	case log == nil:
		return nil, errors.New("supervise: logger is required")
	case cfg.Name == "":
		return nil, errors.New("supervise: Name is required")
	case strings.ContainsAny(cfg.Name, "/\x00") || cfg.Name == "." || cfg.Name == "..":
		return nil, fmt.Errorf("supervise: Name %q must be a plain file name", cfg.Name)
	case cfg.Path == "":
		return nil, fmt.Errorf("supervise: %s: Path is required", cfg.Name)
	case !filepath.IsAbs(cfg.Path):
		return nil, fmt.Errorf("supervise: %s: Path %q must be absolute", cfg.Name, cfg.Path)
	case cfg.Dir == "":
		return nil, fmt.Errorf("supervise: %s: Dir is required", cfg.Name)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.LogCheckInterval, 10*time.Second)
	def(&cfg.MinBackoff, time.Second)
	def(&cfg.MaxBackoff, 60*time.Second)
	def(&cfg.StableAfter, 60*time.Second)
	def(&cfg.StopTimeout, 10*time.Second)
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	if cfg.LogMaxBytes <= 0 {
		cfg.LogMaxBytes = 10 << 20
	}
	if cfg.LogKeep <= 0 {
		cfg.LogKeep = 3
	}
	cfg.Args = append([]string(nil), cfg.Args...)
	p := &Process{
		cfg:  cfg,
		log:  log.With("component", "supervise", "name", cfg.Name),
		argv: append([]string{cfg.Path}, cfg.Args...),
		env:  append([]string{minimalPath}, cfg.Env...),
		st:   Status{Name: cfg.Name},
	}
	return p, nil
}

// LogPath is the file the program's stdout and stderr go to.
func (p *Process) LogPath() string { return filepath.Join(p.cfg.Dir, p.cfg.Name+".log") }

func (p *Process) pidPath() string  { return filepath.Join(p.cfg.Dir, p.cfg.Name+".pid") }
func (p *Process) lockPath() string { return filepath.Join(p.cfg.Dir, p.cfg.Name+".lock") }

// Status returns the current state. After Detach it is the last observation.
func (p *Process) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

func (p *Process) setStatus(f func(st *Status)) {
	p.mu.Lock()
	f(&p.st)
	p.mu.Unlock()
}

// Start adopts the program if a previous agent left it running with the
// same argv, otherwise stops a left-over run with a different argv and
// starts the program; then keeps it running until Close or Detach. ctx
// bounds only Start itself: cancelling it later neither stops nor detaches,
// since whether the program should outlive the agent is the caller's call.
func (p *Process) Start(ctx context.Context) error {
	p.lifeMu.Lock()
	defer p.lifeMu.Unlock()
	switch p.state {
	case stateRunning:
		return fmt.Errorf("supervise: %s: already started", p.cfg.Name)
	case stateClosed, stateDetached:
		return fmt.Errorf("supervise: %s: closed", p.cfg.Name)
	}
	if err := checkBinary(p.cfg.Name, p.cfg.Path); err != nil {
		p.setStatus(func(st *Status) { st.LastError = err.Error() })
		return err
	}
	if err := os.MkdirAll(p.cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("supervise: %s: %w", p.cfg.Name, err)
	}
	lock, err := lockFile(p.lockPath())
	if err != nil {
		return fmt.Errorf("supervise: %s: %w", p.cfg.Name, err)
	}
	wake, err := newWaker()
	if err != nil {
		lock.Close()
		return fmt.Errorf("supervise: %s: %w", p.cfg.Name, err)
	}
	cur, err := p.startOrAdopt(ctx)
	if err != nil {
		wake.close()
		lock.Close()
		p.setStatus(func(st *Status) { st.LastError = err.Error() })
		return err
	}
	p.lock, p.wake, p.stop = lock, wake, make(chan struct{})
	p.state = stateRunning
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		p.run(cur)
	}()
	go func() {
		defer p.wg.Done()
		p.rotateLoop()
	}()
	return nil
}

// Close stops the program (SIGTERM to its process group, SIGKILL after
// StopTimeout) and the supervision, and waits for both. Idempotent; a no-op
// before Start and after Detach.
func (p *Process) Close() error {
	return p.end(false)
}

// Detach stops supervising but leaves the program running, with its pid
// file, for the next agent to adopt (the agent upgrade path). Idempotent; a
// no-op before Start and after Close.
func (p *Process) Detach() error {
	return p.end(true)
}

func (p *Process) end(detach bool) error {
	p.lifeMu.Lock()
	defer p.lifeMu.Unlock()
	switch p.state {
	case stateIdle:
		p.state = stateClosed
		return nil
	case stateClosed, stateDetached:
		return p.closeErr
	}
	p.detach = detach
	close(p.stop)
	p.wake.wake()
	p.wg.Wait()
	p.wake.close()
	p.lock.Close()
	if detach {
		p.state = stateDetached
		p.log.Info("detached; the process keeps running", "pid", p.Status().PID)
	} else {
		p.state = stateClosed
	}
	return p.closeErr
}

// run watches the current process and restarts it until told to stop.
// closeErr is written here only; end reads it after wg.Wait.
func (p *Process) run(cur *proc) {
	var bo backoff
	bo.min, bo.max, bo.stable = p.cfg.MinBackoff, p.cfg.MaxBackoff, p.cfg.StableAfter
	for {
		exited := cur.waitExitOr(p.wake)
		if !exited {
			// The wake came from end, which closed stop first: receiving
			// from it orders end's write of detach before the read.
			<-p.stop
			if p.detach {
				cur.release()
				return
			}
			p.closeErr = p.terminate(cur)
			os.Remove(p.pidPath())
			p.setStatus(func(st *Status) { st.Running, st.PID = false, 0 })
			return
		}
		msg := p.collect(cur)
		uptime := time.Since(cur.started)
		p.setStatus(func(st *Status) {
			st.Running, st.PID, st.LastError = false, 0, msg
		})
		cur = nil
		for cur == nil {
			delay := bo.next(uptime)
			p.log.Warn("process exited; restarting", "error", msg, "uptime", uptime.Round(time.Millisecond), "backoff", delay)
			t := time.NewTimer(delay)
			select {
			case <-p.stop:
				t.Stop()
				if !p.detach {
					os.Remove(p.pidPath())
				}
				return
			case <-t.C:
			}
			c, err := p.spawn()
			if err != nil {
				msg, uptime = err.Error(), 0
				p.setStatus(func(st *Status) { st.LastError = msg })
				continue
			}
			cur = c
			p.setStatus(func(st *Status) { st.Restarts++ })
		}
	}
}

// collect reaps an exited process, kills what is left of its process
// group, and describes the exit for Status.LastError.
func (p *Process) collect(c *proc) string {
	killGroup(c.pid)
	how := c.reap()
	c.release()
	if line := lastLogLine(p.LogPath()); line != "" {
		how += ": " + line
	}
	return how
}

// terminate stops c: SIGTERM to the group, SIGKILL after StopTimeout, and
// then SIGKILL for any member of the group that outlived its leader.
func (p *Process) terminate(c *proc) error {
	defer c.release()
	p.log.Info("stopping", "pid", c.pid)
	c.signal(sigTERM)
	if !c.waitExit(p.cfg.StopTimeout) {
		p.log.Warn("did not stop after SIGTERM; killing", "pid", c.pid, "timeout", p.cfg.StopTimeout)
		c.signal(sigKILL)
		if !c.waitExit(p.cfg.StopTimeout) {
			return fmt.Errorf("supervise: %s: pid %d still alive after SIGKILL", p.cfg.Name, c.pid)
		}
	}
	killGroup(c.pid)
	c.reap()
	return nil
}

// spawn starts a fresh process and records it in the pid file.
func (p *Process) spawn() (*proc, error) {
	if err := checkBinary(p.cfg.Name, p.cfg.Path); err != nil {
		return nil, err
	}
	lf, err := os.OpenFile(p.LogPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("supervise: %s: %w", p.cfg.Name, err)
	}
	defer lf.Close()
	cmd := &exec.Cmd{
		Path:        p.cfg.Path,
		Args:        p.argv,
		Env:         p.env,
		Dir:         "/",
		Stdout:      lf,
		Stderr:      lf,
		SysProcAttr: sysProcAttr(),
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("supervise: %s: start %s: %w", p.cfg.Name, p.cfg.Path, err)
	}
	c, err := ownChild(cmd.Process)
	if err != nil {
		return nil, fmt.Errorf("supervise: %s: %w", p.cfg.Name, err)
	}
	if err := writePidFile(p.pidPath(), c, p.argv); err != nil {
		// Supervision works without it; only adoption by the next agent
		// is lost, which would then start a second copy.
		p.log.Error("cannot write pid file", "error", err)
	}
	p.log.Info("started", "pid", c.pid, "argv", p.argv)
	p.setStatus(func(st *Status) {
		st.Running, st.PID, st.Since, st.Adopted = true, c.pid, c.started, false
	})
	return c, nil
}

// startOrAdopt handles what a previous agent left in the pid file.
func (p *Process) startOrAdopt(ctx context.Context) (*proc, error) {
	old, err := findPrevious(p.pidPath())
	if err != nil {
		p.log.Warn("ignoring pid file", "error", err)
	}
	if old != nil {
		switch {
		case !old.cmdlineIs(p.argv):
			p.log.Info("left-over process has a different argv; replacing it", "pid", old.pid)
		case !old.runs(p.cfg.Path):
			p.log.Info("left-over process runs an older binary; replacing it", "pid", old.pid)
		default:
			p.log.Info("adopted running process", "pid", old.pid, "since", old.started)
			p.setStatus(func(st *Status) {
				st.Running, st.PID, st.Since, st.Adopted = true, old.pid, old.started, true
			})
			return old, nil
		}
		if err := p.terminate(old); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return p.spawn()
}

// backoff is the restart delay: doubling from min to max, back to min once
// a run lasted stable.
type backoff struct {
	min, max, stable time.Duration
	cur              time.Duration
}

func (b *backoff) next(uptime time.Duration) time.Duration {
	if b.cur == 0 || uptime >= b.stable {
		b.cur = b.min
	}
	d := b.cur
	b.cur = min(2*b.cur, b.max)
	return d
}

// checkBinary turns the most common misconfiguration, a binary that is not
// installed, into an error naming the component.
func checkBinary(name, path string) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s: %s not found", name, path)
	case err != nil:
		return fmt.Errorf("%s: %w", name, err)
	case fi.IsDir():
		return fmt.Errorf("%s: %s is a directory", name, path)
	case fi.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("%s: %s is not executable", name, path)
	}
	return nil
}

// Version runs `path args...` (e.g. --version) with a 10 s timeout and
// returns its trimmed output (stdout and stderr).
func Version(path string, args ...string) (string, error) {
	name := filepath.Base(path)
	if !strings.Contains(path, "/") {
		lp, err := exec.LookPath(path)
		if err != nil {
			return "", fmt.Errorf("%s: not found in PATH", path)
		}
		path = lp
	}
	if err := checkBinary(name, path); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	text := strings.TrimSpace(string(out))
	if ctx.Err() != nil {
		return text, fmt.Errorf("%s: %s %s: timed out", name, path, strings.Join(args, " "))
	}
	if err != nil {
		if text != "" {
			return text, fmt.Errorf("%s: %s %s: %w: %s", name, path, strings.Join(args, " "), err, trimLine(lastLine(text)))
		}
		return text, fmt.Errorf("%s: %s %s: %w", name, path, strings.Join(args, " "), err)
	}
	return text, nil
}

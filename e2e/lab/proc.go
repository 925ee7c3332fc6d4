package lab

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Proc is a long-running process inside a lab namespace. Its stdout and
// stderr go to a log file; it is killed when the test that started it ends,
// and if that test failed, the tail of its log is written to the test log.
type Proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // valid once done is closed
}

// tailLines is how much of a process's log a failing test shows.
const tailLines = 40

// Start starts args in the namespace (`ip netns exec NS args...`; prefix args
// with "env", "K=V" to add environment). name labels its log file and its
// lines in the test log. The process gets its own process group, killed
// whole on cleanup.
func (n *node) Start(t testing.TB, name string, args ...string) *Proc {
	t.Helper()
	return startProc(t, name, n.name, exec.Command("ip", append([]string{"netns", "exec", n.ns}, args...)...))
}

// startProc starts cmd with its output in a log file and registers its
// killing with t; where names the lab object it runs in. cmd.SysProcAttr may
// carry a cgroup to start in.
func startProc(t testing.TB, name, where string, cmd *exec.Cmd) *Proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Pdeathsig covers a test binary that dies without running cleanups
	// (best effort: it fires when the starting thread exits); Sweep covers
	// the rest.
	cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Pdeathsig = true, syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("lab: start %s in %s: %v", name, where, err)
	}
	f.Close() // the child holds its own copy
	p := &Proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("lab: last lines of %s (%s on %s, %v):\n%s", p.log, name, where, p.err, p.Tail(tailLines))
		}
	})
	return p
}

// Pid is the process id (`ip netns exec` and nsenter exec the command, so it
// is the command's own pid).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process group.
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	err := syscall.Kill(-p.cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}

// Kill sends SIGKILL to the process group. It does not wait.
func (p *Proc) Kill() error { return p.Signal(syscall.SIGKILL) }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait blocks until the process exits and returns its exit error; it may be
// called any number of times.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// LogPath is the file holding the process's stdout and stderr.
func (p *Proc) LogPath() string { return p.log }

// Output is everything the process has written so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// Tail is the last n lines of the process's output.
func (p *Proc) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Output(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

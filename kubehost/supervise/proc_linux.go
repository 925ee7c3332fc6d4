//go:build linux

package supervise

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	sigTERM = unix.SIGTERM
	sigKILL = unix.SIGKILL
)

// sysProcAttr gives the child its own session (and process group): a
// terminal's Ctrl-C or a signal to the agent's group does not reach it. No
// Pdeathsig: the child must outlive the agent.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setsid: true}
}

// proc is one run of the program, held through a pidfd so that signals and
// exit notification refer to that very process even if its pid is reused.
type proc struct {
	pid     int
	pidfd   int
	child   bool // ours to reap: exit status known, pid pinned until reaped
	started time.Time
	cmdline []byte      // at adoption; nil for a spawned process
	exe     os.FileInfo // at adoption: the binary it runs, maybe since deleted
}

// ownChild takes over a freshly started child from os/exec. The child is
// not yet reaped, so its pid cannot have been reused before PidfdOpen.
func ownChild(op *os.Process) (*proc, error) {
	pid := op.Pid
	fd, err := unix.PidfdOpen(pid, 0)
	// Nobody calls op.Wait: reaping is done by reap, which must be the only
	// waiter.
	op.Release()
	if err != nil {
		unix.Kill(pid, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return &proc{pid: pid, pidfd: fd, child: true, started: time.Now()}, nil
}

// waitExitOr blocks until the process exits (true) or w is woken (false).
func (c *proc) waitExitOr(w *waker) bool {
	fds := []unix.PollFd{{Fd: int32(c.pidfd), Events: unix.POLLIN}, {Fd: int32(w.fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// Cannot happen with valid fds; fall back to polling liveness.
			if !c.alive() {
				return true
			}
			time.Sleep(500 * time.Millisecond)
			continue
		}
		if fds[0].Revents != 0 {
			return true
		}
		if fds[1].Revents != 0 {
			return false
		}
	}
}

// waitExit waits up to d for the process to exit.
func (c *proc) waitExit(d time.Duration) bool {
	deadline := time.Now().Add(d)
	fds := []unix.PollFd{{Fd: int32(c.pidfd), Events: unix.POLLIN}}
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		ms := int((left + time.Millisecond - 1) / time.Millisecond)
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return !c.alive()
		}
		if n > 0 {
			return true
		}
		if left == 0 {
			return false
		}
	}
}

// alive reports whether the process has not exited (a zombie has).
func (c *proc) alive() bool {
	fds := []unix.PollFd{{Fd: int32(c.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n == 0
}

// signal sends sig to the process and to its process group (the child is a
// session and group leader, so the group is everything it started that did
// not move to a group of its own, like containerd's shims do). The leader is
// signalled through the pidfd; the group only while the leader is alive,
// which keeps the group id from having been reused.
func (c *proc) signal(sig unix.Signal) {
	unix.PidfdSendSignal(c.pidfd, sig, nil, 0)
	if c.alive() {
		unix.Kill(-c.pid, sig)
	}
}

// killGroup SIGKILLs what is left of the process group after its leader
// exited: a group id cannot be reused while any member lives, so this can
// only hit stragglers of ours (or nothing).
func killGroup(pid int) {
	if pid > 1 {
		unix.Kill(-pid, unix.SIGKILL)
	}
}

// reap collects the exit status of an exited child; for an adopted process
// that is not ours, the status is unknown.
func (c *proc) reap() string {
	if !c.child {
		return "exited"
	}
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(c.pid, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "exited"
		}
		break
	}
	c.child = false
	switch {
	case ws.Exited():
		return "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		s := "signal: " + ws.Signal().String()
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	}
	return "exited"
}

func (c *proc) release() {
	if c.pidfd >= 0 {
		unix.Close(c.pidfd)
		c.pidfd = -1
	}
}

func (c *proc) cmdlineIs(argv []string) bool {
	return bytes.Equal(c.cmdline, encodeCmdline(argv))
}

// runs reports whether the process runs the binary now at path: after an
// in-place upgrade (same path, new file) the old process is stale.
func (c *proc) runs(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && c.exe != nil && os.SameFile(fi, c.exe)
}

func encodeCmdline(argv []string) []byte {
	var b bytes.Buffer
	for _, a := range argv {
		b.WriteString(a)
		b.WriteByte(0)
	}
	return b.Bytes()
}

// pidFile is what identifies a run across agent restarts. pid alone is not
// enough: after the process died its pid may belong to anything. The start
// time (in clock ticks since boot) and the boot id pin the exact process.
type pidFile struct {
	PID        int       `json:"pid"`
	Argv       []string  `json:"argv"`
	StartTicks uint64    `json:"start_ticks"`
	BootID     string    `json:"boot_id"`
	Started    time.Time `json:"started"`
}

func writePidFile(path string, c *proc, argv []string) error {
	st, err := readStat(c.pid)
	if err != nil {
		return err
	}
	b, err := json.Marshal(pidFile{PID: c.pid, Argv: argv, StartTicks: st.startTicks, BootID: bootID(), Started: c.started})
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// findPrevious returns the process recorded in the pid file if it is still
// that very process and alive, with its current cmdline; nil otherwise. A
// live process with the same pid but another start time or boot is someone
// else's and is left alone.
func findPrevious(path string) (*proc, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var pf pidFile
	if err := json.Unmarshal(b, &pf); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if pf.PID <= 1 || len(pf.Argv) == 0 {
		return nil, fmt.Errorf("%s: no pid or argv", path)
	}
	if pf.BootID != "" && pf.BootID != bootID() {
		return nil, nil
	}
	fd, err := unix.PidfdOpen(pf.PID, 0)
	if err != nil {
		return nil, nil // ESRCH: gone
	}
	c := &proc{pid: pf.PID, pidfd: fd, started: pf.Started}
	st, err := readStat(pf.PID)
	if err != nil {
		c.release()
		return nil, nil
	}
	cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pf.PID), "cmdline"))
	switch {
	case pf.StartTicks != 0 && st.startTicks != pf.StartTicks:
		c.release()
		return nil, nil
	case pf.StartTicks == 0 && !bytes.Equal(cmdline, encodeCmdline(pf.Argv)):
		c.release()
		return nil, nil
	}
	c.cmdline = cmdline
	c.exe, _ = os.Stat(filepath.Join("/proc", strconv.Itoa(pf.PID), "exe"))
	// Ours only if this process spawned it (same agent process after a
	// Detach, or an agent that re-executed itself): then it is ours to reap.
	c.child = st.ppid == os.Getpid()
	// The checks read /proc by pid; they describe the pidfd's process only
	// if it was still alive after them (a live process's pid is not reused).
	if !c.alive() {
		if c.child {
			c.reap()
		}
		c.release()
		return nil, nil
	}
	return c, nil
}

type procStat struct {
	state      byte
	ppid       int
	startTicks uint64
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(string(b))
}

// parseStat reads /proc/PID/stat; the command name in parentheses may hold
// spaces and parentheses, so fields are counted from the last ')'.
func parseStat(s string) (procStat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, errors.New("malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); starttime is field 22.
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, errors.New("malformed /proc stat")
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat: %w", err)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat: %w", err)
	}
	return procStat{state: f[0][0], ppid: ppid, startTicks: start}, nil
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// waker interrupts a poll on the pidfd; once woken it stays readable.
type waker struct{ fd int }

func newWaker() (*waker, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &waker{fd: fd}, nil
}

func (w *waker) wake() {
	var one = [8]byte{1}
	unix.Write(w.fd, one[:])
}

func (w *waker) close() { unix.Close(w.fd) }

// lockFile keeps two supervisors (two agents, or two Process values) from
// driving the same program at once. The lock goes away with the agent.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, fmt.Errorf("already supervised by another process (lock %s held)", path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

//go:build !linux

package supervise

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// The supervisor needs pidfds and /proc; elsewhere Start fails (in
// newWaker) and nothing below is reached.

var errUnsupported = errors.New("supervise: only supported on Linux")

const (
	sigTERM = syscall.SIGTERM
	sigKILL = syscall.SIGKILL
)

func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }

type proc struct {
	pid     int
	started time.Time
}

func ownChild(*os.Process) (*proc, error)        { return nil, errUnsupported }
func (c *proc) waitExitOr(*waker) bool           { return true }
func (c *proc) waitExit(time.Duration) bool      { return true }
func (c *proc) signal(syscall.Signal)            {}
func killGroup(int)                              {}
func (c *proc) reap() string                     { return "exited" }
func (c *proc) release()                         {}
func (c *proc) cmdlineIs([]string) bool          { return false }
func (c *proc) runs(string) bool                 { return false }
func writePidFile(string, *proc, []string) error { return errUnsupported }
func findPrevious(string) (*proc, error)         { return nil, errUnsupported }
func lockFile(string) (*os.File, error)          { return nil, errUnsupported }

type waker struct{}

func newWaker() (*waker, error) { return nil, errUnsupported }
func (w *waker) wake()          {}
func (w *waker) close()         {}

package supervise

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"
)

// rotateLoop keeps the log under LogMaxBytes while supervising.
func (p *Process) rotateLoop() {
	t := time.NewTicker(p.cfg.LogCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			if err := rotate(p.LogPath(), p.cfg.LogMaxBytes, p.cfg.LogKeep); err != nil {
				p.log.Warn("log rotation failed", "error", err)
			}
		}
	}
}

// rotate copies path to path.1 (shifting older copies up to path.keep) and
// truncates path in place once it is larger than max. Copy-then-truncate,
// not rename, because the child holds the file open with O_APPEND and keeps
// writing to it, with no way for us to make it reopen; lines written
// between the copy and the truncate are lost, the usual copytruncate trade.
func rotate(path string, max int64, keep int) error {
	fi, err := os.Stat(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	if fi.Size() <= max {
		return nil
	}
	for i := keep - 1; i >= 1; i-- {
		err := os.Rename(fmt.Sprintf("%s.%d", path, i), fmt.Sprintf("%s.%d", path, i+1))
		if err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if err := copyFile(path, path+".1"); err != nil {
		return err
	}
	return os.Truncate(path, 0)
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// lastLogLine is the last non-empty line of the log (or of its newest
// rotated copy if the log was just truncated): usually the reason a
// program exited.
func lastLogLine(path string) string {
	for _, f := range []string{path, path + ".1"} {
		if l := trimLine(lastLine(string(tail(f, 8<<10)))); l != "" {
			return l
		}
	}
	return ""
}

func tail(path string, n int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	off := max(fi.Size()-n, 0)
	b, _ := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if off > 0 {
		// The first line is probably cut; a later full line is better.
		if i := bytes.IndexByte(b, '\n'); i >= 0 && bytes.ContainsFunc(b[i:], func(r rune) bool { return r > ' ' }) {
			b = b[i+1:]
		}
	}
	return b
}

func lastLine(s string) string {
	lines := strings.Split(s, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return l
		}
	}
	return ""
}

// trimLine keeps the end of a long line: in a Go error chain the end is
// the root cause.
func trimLine(l string) string {
	l = strings.ToValidUTF8(l, "?")
	if len(l) <= maxErrorLine {
		return l
	}
	cut := len(l) - maxErrorLine
	for cut < len(l) && !utf8.RuneStart(l[cut]) {
		cut++
	}
	return "..." + l[cut:]
}

//go:build linux

package procmem

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// TrimExecutable unmaps this process's resident pages of its own
// executable's read-only mappings (code, read-only data, the runtime's
// symbol and line tables). The pages stay in the page cache: the next
// access maps them again with a minor fault. Package initialisation and
// startup touch much more of the binary than a running agent uses again
// (every Kubernetes API type registers itself, flags are parsed, stores are
// opened), and the kernel maps the neighbours of every page touched, so
// those pages would stay counted in RSS until memory pressure reclaims
// them. After a trim RSS shows what the process keeps using. Call it once,
// after startup.
//
// Only mappings of the executable that are not writable and hold no
// anonymous page are trimmed: a page copied on write (a read-only section
// the dynamic loader relocated, in a position-independent binary) would
// lose its contents, so such a mapping is left alone.
func TrimExecutable() (Trimmed, error) {
	var t Trimmed
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return t, fmt.Errorf("procmem: %w", err)
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return t, fmt.Errorf("procmem: %w", err)
	}
	vmas, err := parseSmaps(smaps)
	if err != nil {
		return t, err
	}
	for _, v := range vmas {
		switch {
		case v.path != exe || v.writable:
			continue
		case v.anon != 0:
			t.Kept++
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, v.start, v.end-v.start, unix.MADV_DONTNEED); errno != 0 {
			return t, fmt.Errorf("procmem: madvise %#x-%#x: %w", v.start, v.end, errno)
		}
		t.Mappings++
		t.Bytes += v.rss
	}
	return t, nil
}

// vma is one mapping of /proc/PID/smaps, with the sizes TrimExecutable
// looks at, in bytes.
type vma struct {
	start, end uintptr
	writable   bool
	path       string // "" for anonymous mappings
	rss, anon  uint64
}

// parseSmaps reads the mappings of a /proc/PID/smaps file: a header line
// per mapping ("start-end perms offset dev inode [path]") followed by
// "Key: value" lines.
func parseSmaps(b []byte) ([]vma, error) {
	var out []vma
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && len(out) > 0 && !bytes.ContainsAny(k, " -") {
			cur := &out[len(out)-1]
			switch string(k) {
			case "Rss", "Anonymous":
				kb, err := parseKB(v)
				if err != nil {
					return nil, fmt.Errorf("procmem: smaps %s: %w", k, err)
				}
				if string(k) == "Rss" {
					cur.rss = kb << 10
				} else {
					cur.anon = kb << 10
				}
			}
			continue
		}
		v, err := parseMapping(line)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, sc.Err()
}

// parseMapping parses a mapping's header line. The path is the rest of the
// line after the inode: it may contain spaces.
func parseMapping(line []byte) (vma, error) {
	bad := func() (vma, error) { return vma{}, fmt.Errorf("procmem: smaps: bad mapping line %q", line) }
	var f [5][]byte
	rest := line
	for i := range f {
		rest = bytes.TrimLeft(rest, " ")
		var ok bool
		if f[i], rest, ok = bytes.Cut(rest, []byte(" ")); !ok && i < len(f)-1 {
			return bad()
		}
	}
	lo, hi, ok := bytes.Cut(f[0], []byte("-"))
	if !ok || len(f[1]) != 4 {
		return bad()
	}
	start, err1 := strconv.ParseUint(string(lo), 16, 64)
	end, err2 := strconv.ParseUint(string(hi), 16, 64)
	if err1 != nil || err2 != nil || end < start {
		return bad()
	}
	return vma{
		start:    uintptr(start),
		end:      uintptr(end),
		writable: f[1][1] == 'w',
		path:     string(bytes.TrimLeft(rest, " ")),
	}, nil
}

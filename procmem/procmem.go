// Package procmem is about this process's resident memory: how much of it
// is anonymous and how much file-backed (Read), and giving back the pages of
// the executable that only startup used (TrimExecutable).
//
// The two kinds cost different things. Anonymous pages (heap, stacks,
// runtime) are the process's own. File-backed pages are mostly the
// binary's code and read-only data: clean, shared with the page cache and
// with every process running the same binary, and the first thing the
// kernel reclaims under pressure. VmRSS adds them up.
package procmem

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// SelfStatus is this process's status file.
const SelfStatus = "/proc/self/status"

// Memory is a process's resident memory by kind, in bytes.
type Memory struct {
	Anon, File, Shmem uint64
}

// Read reads RssAnon, RssFile and RssShmem from a /proc/PID/status file
// (SelfStatus for this process). Linux only: elsewhere the file is missing
// and the error says so.
func Read(statusPath string) (Memory, error) {
	b, err := os.ReadFile(statusPath)
	if err != nil {
		return Memory{}, err
	}
	return parseStatus(b)
}

func parseStatus(status []byte) (Memory, error) {
	var m Memory
	seen := 0
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok {
			continue
		}
		var dst *uint64
		switch string(k) {
		case "RssAnon":
			dst = &m.Anon
		case "RssFile":
			dst = &m.File
		case "RssShmem":
			dst = &m.Shmem
		default:
			continue
		}
		kb, err := parseKB(v)
		if err != nil {
			return Memory{}, fmt.Errorf("procmem: %s: %w", k, err)
		}
		*dst = kb << 10
		seen++
	}
	if err := sc.Err(); err != nil {
		return Memory{}, err
	}
	if seen != 3 {
		return Memory{}, fmt.Errorf("procmem: RssAnon, RssFile, RssShmem: found %d of 3", seen)
	}
	return m, nil
}

// Trimmed is what TrimExecutable did.
type Trimmed struct {
	Bytes    uint64 // resident bytes the trimmed mappings held
	Mappings int    // read-only mappings of the executable trimmed
	Kept     int    // read-only mappings of the executable left alone: they hold pages copied on write
}

// parseKB parses a "   1234 kB" field of /proc status and smaps files.
func parseKB(v []byte) (uint64, error) {
	kb, err := strconv.ParseUint(string(bytes.TrimSuffix(bytes.TrimSpace(v), []byte(" kB"))), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size in kB", bytes.TrimSpace(v))
	}
	return kb, nil
}

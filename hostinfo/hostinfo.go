// Package hostinfo samples what a node reports about its machine in each
// heartbeat: CPU, load, memory, the data dir's disk, uptime. Linux /proc and
// statfs only; no cgo.
package hostinfo

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Snapshot is one sample. JSON keys are part of the `nodes --json` contract.
type Snapshot struct {
	CPUPercent     float64 `json:"cpu_percent"`
	Load1          float64 `json:"load1"`
	Load5          float64 `json:"load5"`
	Load15         float64 `json:"load15"`
	MemUsedBytes   uint64  `json:"mem_used_bytes"`
	MemTotalBytes  uint64  `json:"mem_total_bytes"`
	DiskUsedBytes  uint64  `json:"disk_used_bytes"`
	DiskTotalBytes uint64  `json:"disk_total_bytes"`
	UptimeSeconds  float64 `json:"uptime_seconds"`
}

// Sampler computes CPU usage between successive samples.
type Sampler struct {
	dir  string
	proc string // /proc, replaceable in tests

	mu        sync.Mutex
	lastBusy  uint64 // guarded by mu
	lastTotal uint64 // guarded by mu
}

// NewSampler samples the filesystem holding dir.
func NewSampler(dir string) *Sampler { return &Sampler{dir: dir, proc: "/proc"} }

// Sample reads the machine's state now. Parts that cannot be read stay zero:
// a heartbeat must go out even if, say, /proc is restricted.
func (s *Sampler) Sample() Snapshot {
	var snap Snapshot
	if b, err := os.ReadFile(s.proc + "/loadavg"); err == nil {
		snap.Load1, snap.Load5, snap.Load15, _ = ParseLoadavg(b)
	}
	if b, err := os.ReadFile(s.proc + "/meminfo"); err == nil {
		snap.MemUsedBytes, snap.MemTotalBytes, _ = ParseMeminfo(b)
	}
	if b, err := os.ReadFile(s.proc + "/uptime"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			snap.UptimeSeconds, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	if b, err := os.ReadFile(s.proc + "/stat"); err == nil {
		if busy, total, err := ParseCPUStat(b); err == nil {
			s.mu.Lock()
			if total > s.lastTotal && busy >= s.lastBusy && s.lastTotal != 0 {
				snap.CPUPercent = 100 * float64(busy-s.lastBusy) / float64(total-s.lastTotal)
			}
			s.lastBusy, s.lastTotal = busy, total
			s.mu.Unlock()
		}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err == nil {
		snap.DiskTotalBytes = st.Blocks * uint64(st.Bsize)
		snap.DiskUsedBytes = (st.Blocks - st.Bfree) * uint64(st.Bsize)
	}
	return snap
}

// ParseLoadavg parses /proc/loadavg.
func ParseLoadavg(b []byte) (l1, l5, l15 float64, err error) {
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return 0, 0, 0, fmt.Errorf("loadavg: %d fields", len(f))
	}
	vals := make([]float64, 3)
	for i := range vals {
		if vals[i], err = strconv.ParseFloat(f[i], 64); err != nil {
			return 0, 0, 0, err
		}
	}
	return vals[0], vals[1], vals[2], nil
}

// ParseMeminfo returns used (total - available) and total bytes.
func ParseMeminfo(b []byte) (used, total uint64, err error) {
	var avail uint64
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			total, haveTotal = v*1024, true
		case "MemAvailable:":
			avail, haveAvail = v*1024, true
		}
	}
	if !haveTotal || !haveAvail || avail > total {
		return 0, 0, fmt.Errorf("meminfo: no MemTotal/MemAvailable")
	}
	return total - avail, total, nil
}

// ParseCPUStat returns busy and total jiffies from the "cpu" line of
// /proc/stat (iowait counts as idle).
func ParseCPUStat(b []byte) (busy, total uint64, err error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("stat: no cpu line")
	}
	var idle uint64
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, err
		}
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return total - idle, total, nil
}

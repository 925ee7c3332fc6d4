//go:build linux

package supervise

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// helperEnv makes the test binary act as an agent that supervises one
// program and then hangs until killed: the way to test adoption after an
// agent died for real, without Close or Detach.
const helperEnv = "SUPERVISE_TEST_AGENT_CONFIG"

// Every test must leave no goroutine behind: a supervisor that leaks its
// watcher per Close would leak per reconcile in the agent.
func TestMain(m *testing.M) {
	if cfg := os.Getenv(helperEnv); cfg != "" {
		helperAgent(cfg)
		return
	}
	goleak.VerifyTestMain(m)
}

func helperAgent(cfgJSON string) {
	var cfg Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	p, err := New(cfg, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err == nil {
		err = p.Start(context.Background())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("pid %d\n", p.Status().PID)
	time.Sleep(time.Hour)
	os.Exit(3)
}

// testConfig is a quick-cycling config running `sh -c script marker`. The
// marker is a unique sleep duration: scripts run `sleep $0`, so the leader
// and the sleeps it starts can all be found in /proc by it.
func testConfig(t *testing.T, script string) (Config, string) {
	t.Helper()
	marker := fmt.Sprintf("4000.%06d", rand.IntN(1_000_000))
	t.Cleanup(func() { killMarked(marker) })
	return Config{
		Name:             "prog",
		Path:             "/bin/sh",
		Args:             []string{"-c", script, marker},
		Dir:              filepath.Join(t.TempDir(), "state"),
		MinBackoff:       10 * time.Millisecond,
		MaxBackoff:       80 * time.Millisecond,
		StableAfter:      time.Hour,
		StopTimeout:      300 * time.Millisecond,
		LogCheckInterval: 20 * time.Millisecond,
	}, marker
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func start(t *testing.T, cfg Config) *Process {
	t.Helper()
	p, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// marked lists live (non-zombie) processes whose cmdline mentions marker.
// This machine's init does not reap orphans, so zombies count as gone.
func marked(marker string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cl, []byte(marker)) {
			continue
		}
		if st, err := readStat(pid); err == nil && st.state != 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids
}

func killMarked(marker string) {
	for _, pid := range marked(marker) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func noLeftovers(t *testing.T, marker string) {
	t.Helper()
	waitFor(t, "no process left with marker "+marker, func() bool { return len(marked(marker)) == 0 })
}

func alive(pid int) bool {
	st, err := readStat(pid)
	return err == nil && st.state != 'Z'
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return strings.ReplaceAll(strings.TrimSuffix(string(b), "\x00"), "\x00", " ")
}

func session(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	sid, _ := strconv.Atoi(f[3])
	return sid
}

func readLog(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("%s exists (err %v), want it gone", path, err)
	}
}

//go:build linux

package supervise

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

const tickScript = `while :; do echo "tick $$"; sleep 0.05; done`

func TestCrashIsRestartedWithReasonInStatus(t *testing.T) {
	cfg, marker := testConfig(t, `echo "starting"; echo "fatal: bad flag --x ($$)" >&2; echo; exit 3`)
	p := start(t, cfg)
	waitFor(t, "5 restarts", func() bool { return p.Status().Restarts >= 5 })
	st := p.Status()
	if !strings.HasPrefix(st.LastError, "exit status 3: fatal: bad flag --x (") {
		t.Errorf("LastError = %q, want the exit status and the last non-empty log line", st.LastError)
	}
	// Each run wrote to the same log: stderr included, appended, not lost.
	if n := strings.Count(readLog(t, p.LogPath()), "fatal: bad flag"); n < 5 {
		t.Errorf("log has %d runs, want >= 5", n)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	noLeftovers(t, marker)
	mustNotExist(t, filepath.Join(cfg.Dir, "prog.pid"))
	if st := p.Status(); st.Running || st.PID != 0 {
		t.Errorf("after Close: %+v", st)
	}
}

func TestBackoffDoublesCapsAndResetsWhenStable(t *testing.T) {
	b := backoff{min: time.Second, max: 60 * time.Second, stable: 60 * time.Second}
	var got []time.Duration
	for range 9 {
		got = append(got, b.next(time.Second)) // crash-looping
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("delays %v, want %v seconds", got, want)
		}
	}
	if d := b.next(61 * time.Second); d != time.Second {
		t.Errorf("after a stable run: %v, want 1s", d)
	}
	if d := b.next(time.Second); d != 2*time.Second {
		t.Errorf("crash right after: %v, want 2s", d)
	}
}

func TestDetachLeavesChildRunningAndNextSupervisorAdoptsIt(t *testing.T) {
	cfg, marker := testConfig(t, tickScript)
	p1 := start(t, cfg)
	st1 := p1.Status()
	if !st1.Running || st1.PID == 0 || st1.Adopted {
		t.Fatalf("status %+v", st1)
	}
	if sid := session(t, st1.PID); sid != st1.PID {
		t.Errorf("child session %d, want its own (%d)", sid, st1.PID)
	}
	if err := p1.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := p1.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := p1.Close(); err != nil { // after Detach: no-op
		t.Fatal(err)
	}
	goleak.VerifyNone(t) // the supervision is gone...
	n := strings.Count(readLog(t, p1.LogPath()), "tick")
	waitFor(t, "the detached child to keep logging", func() bool {
		return strings.Count(readLog(t, p1.LogPath()), "tick") > n+3
	})
	if !alive(st1.PID) { // ...the child is not
		t.Fatalf("pid %d died after Detach", st1.PID)
	}

	p2 := start(t, cfg)
	st2 := p2.Status()
	if !st2.Adopted || st2.PID != st1.PID || !st2.Running || !st2.Since.Equal(st1.Since) {
		t.Fatalf("second supervisor: %+v, want it to adopt %+v", st2, st1)
	}
	if got := marked(marker); len(got) > 2 { // sh and at most one sleep
		t.Errorf("processes %v: started twice?", got)
	}

	// An adopted process that dies is restarted like any other.
	syscall.Kill(st1.PID, syscall.SIGKILL)
	waitFor(t, "restart of the adopted process", func() bool { return p2.Status().Restarts == 1 })
	st3 := p2.Status()
	if st3.Adopted || st3.PID == st1.PID || !strings.HasPrefix(st3.LastError, "signal: killed") {
		t.Errorf("after the adopted child was killed: %+v", st3)
	}
	if err := p2.Close(); err != nil {
		t.Fatal(err)
	}
	noLeftovers(t, marker)
}

// An agent killed with SIGKILL (no Close, no Detach) leaves its child
// running; the next agent adopts it.
func TestAdoptionAfterAgentKilled(t *testing.T) {
	cfg, marker := testConfig(t, tickScript)
	b, _ := json.Marshal(cfg)
	agent := exec.Command(os.Args[0], "-test.run=^$")
	agent.Env = append(os.Environ(), helperEnv+"="+string(b))
	agent.Stderr = tWriter{t}
	out, err := agent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("helper agent: %v", err)
	}
	var pid int
	if _, err := fmt.Sscanf(line, "pid %d", &pid); err != nil || pid == 0 {
		t.Fatalf("helper agent said %q", line)
	}
	agent.Process.Kill()
	agent.Wait()
	n := strings.Count(readLog(t, filepath.Join(cfg.Dir, "prog.log")), "tick")
	waitFor(t, "the orphan to keep logging", func() bool {
		return strings.Count(readLog(t, filepath.Join(cfg.Dir, "prog.log")), "tick") > n+3
	})

	p := start(t, cfg)
	if st := p.Status(); !st.Adopted || st.PID != pid {
		t.Fatalf("status %+v, want pid %d adopted", st, pid)
	}
	// Not our child: its death is seen through the pidfd, status unknown.
	syscall.Kill(pid, syscall.SIGKILL)
	waitFor(t, "restart", func() bool { return p.Status().Restarts == 1 })
	if st := p.Status(); st.PID == pid || !st.Running || !strings.HasPrefix(st.LastError, "exited") {
		t.Errorf("after the orphan was killed: %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	noLeftovers(t, marker)
}

func TestChangedArgvReplacesLeftOverProcess(t *testing.T) {
	for _, tc := range []struct{ name, script string }{
		{"stops on SIGTERM", tickScript},
		{"ignores SIGTERM", `trap "" TERM; ` + tickScript},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, marker := testConfig(t, tc.script)
			cfg.Args = append(cfg.Args, "v1")
			p1 := start(t, cfg)
			old := p1.Status().PID
			if err := p1.Detach(); err != nil {
				t.Fatal(err)
			}
			cfg.Args[len(cfg.Args)-1] = "v2"
			p2 := start(t, cfg)
			st := p2.Status()
			if st.Adopted || st.PID == old || !strings.HasSuffix(cmdline(st.PID), marker+" v2") {
				t.Fatalf("status %+v (cmdline %q), want a fresh v2 process", st, cmdline(st.PID))
			}
			if alive(old) {
				t.Errorf("old pid %d (%s) still alive", old, cmdline(old))
			}
			for _, pid := range marked(marker) {
				if strings.HasSuffix(cmdline(pid), " v1") {
					t.Errorf("v1 process %d left", pid)
				}
			}
			if err := p2.Close(); err != nil {
				t.Fatal(err)
			}
			noLeftovers(t, marker)
		})
	}
}

// An upgrade that replaces the binary in place keeps path and argv: the
// left-over process runs the old file and is replaced, not adopted.
func TestReplacedBinaryIsNotAdopted(t *testing.T) {
	cfg, marker := testConfig(t, tickScript)
	bin := filepath.Join(t.TempDir(), "mysh")
	install := func() {
		b, err := os.ReadFile("/bin/sh")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin+".new", b, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(bin+".new", bin); err != nil {
			t.Fatal(err)
		}
	}
	install()
	cfg.Path = bin
	p1 := start(t, cfg)
	old := p1.Status().PID
	p1.Detach()
	install()
	p2 := start(t, cfg)
	if st := p2.Status(); st.Adopted || st.PID == old || alive(old) {
		t.Fatalf("status %+v; old pid %d alive: %v", st, old, alive(old))
	}
	p2.Close()
	noLeftovers(t, marker)
}

// Close takes down the whole process group, including background children
// and processes that ignore SIGTERM.
func TestCloseLeavesNoProcesses(t *testing.T) {
	for _, tc := range []struct{ name, script string }{
		{"background children", `sleep $0 & sleep $0 & wait`},
		{"ignores SIGTERM", `trap "" TERM; sleep $0 & sleep $0 & wait`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, marker := testConfig(t, tc.script)
			p := start(t, cfg)
			waitFor(t, "3 processes", func() bool { return len(marked(marker)) == 3 })
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			noLeftovers(t, marker)
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A restart does not pile up what the crashed run left in its group.
func TestRestartKillsStragglers(t *testing.T) {
	cfg, marker := testConfig(t, `sleep $0 & sleep 0.05; exit 1`)
	p := start(t, cfg)
	waitFor(t, "3 restarts", func() bool { return p.Status().Restarts >= 3 })
	// A straggler SIGKILLed at its run's exit may not have been scheduled
	// to die yet; stragglers that are not killed only ever add up.
	waitFor(t, "at most the current run's 2 processes alive", func() bool { return len(marked(marker)) <= 2 })
}

func TestLogRotation(t *testing.T) {
	cfg, marker := testConfig(t, `i=0; while :; do echo "line $i ......................................"; i=$((i+1)); sleep 0.01; done`)
	cfg.LogMaxBytes, cfg.LogKeep = 2048, 2
	p := start(t, cfg)
	log := p.LogPath()
	fi0, err := os.Stat(log)
	if err != nil {
		t.Fatal(err)
	}
	// Wait for a third rotation: .1 and .2 exist and .2 was itself a .1.
	var first string
	waitFor(t, "log.1", func() bool { first = readLog(t, log+".1"); return first != "" })
	waitFor(t, "two more rotations", func() bool {
		two := readLog(t, log+".2")
		return two != "" && two != first
	})
	mustNotExist(t, log+".3")
	fi1, err := os.Stat(log)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(fi0, fi1) {
		t.Errorf("log file replaced; the child would be writing to the old one")
	}
	// Older lines in .2, newer in .1, newest in the live log.
	last := func(s string) int { // number of the last complete line
		lines := strings.Split(s, "\n")
		for i := len(lines) - 2; i >= 0; i-- {
			if f := strings.Fields(lines[i]); len(f) == 3 {
				if n, err := strconv.Atoi(f[1]); err == nil {
					return n
				}
			}
		}
		return -1
	}
	two, one := readLog(t, log+".2"), readLog(t, log+".1")
	if len(two) <= 2048 || len(one) <= 2048 {
		t.Errorf("rotated sizes %d, %d: rotated before reaching the limit", len(two), len(one))
	}
	if !(last(two) < last(one)) {
		t.Errorf("rotation order: .2 ends at %d, .1 at %d", last(two), last(one))
	}
	waitFor(t, "new lines in the live log", func() bool {
		cur := readLog(t, log)
		return strings.Count(cur, "\n") > 2 && last(cur) > last(one)
	})
	if st := p.Status(); st.Restarts != 0 || !st.Running {
		t.Errorf("status %+v: rotation disturbed the child", st)
	}
	p.Close()
	noLeftovers(t, marker)
}

// A pid file naming a live process that is not the one we started (pid
// reused, or another boot) must neither be adopted nor killed.
func TestPidReuseIsNotAdoptedNorKilled(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(pf *pidFile)
	}{
		{"other start time", func(pf *pidFile) { pf.StartTicks++ }},
		{"other boot", func(pf *pidFile) { pf.BootID = "00000000-0000-0000-0000-000000000000" }},
		{"other argv without start time", func(pf *pidFile) { pf.StartTicks = 0; pf.Argv = append(pf.Argv, "x") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, marker := testConfig(t, tickScript)
			// The decoy has exactly the argv the supervisor expects.
			decoy := exec.Command(cfg.Path, cfg.Args...)
			if err := decoy.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { decoy.Process.Kill(); decoy.Wait() })
			st, err := readStat(decoy.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			pf := pidFile{PID: decoy.Process.Pid, Argv: append([]string{cfg.Path}, cfg.Args...), StartTicks: st.startTicks, BootID: bootID(), Started: time.Now()}
			tc.edit(&pf)
			writeJSON(t, filepath.Join(cfg.Dir, "prog.pid"), pf)

			p := start(t, cfg)
			if st := p.Status(); st.Adopted || st.PID == decoy.Process.Pid || !st.Running {
				t.Fatalf("status %+v, decoy pid %d", st, decoy.Process.Pid)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if !alive(decoy.Process.Pid) {
				t.Fatalf("the decoy was killed")
			}
			decoy.Process.Kill()
			decoy.Wait()
			noLeftovers(t, marker)
		})
	}
}

func TestStalePidFileIsIgnored(t *testing.T) {
	for _, tc := range []struct{ name, content string }{
		{"dead pid", `{"pid": 999999999, "argv": ["/bin/sh"], "start_ticks": 1}`},
		{"garbage", `not json`},
		{"empty", ``},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, marker := testConfig(t, tickScript)
			os.MkdirAll(cfg.Dir, 0o700)
			if err := os.WriteFile(filepath.Join(cfg.Dir, "prog.pid"), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			p := start(t, cfg)
			if st := p.Status(); st.Adopted || !st.Running {
				t.Fatalf("status %+v", st)
			}
			p.Close()
			noLeftovers(t, marker)
		})
	}
}

func TestSecondSupervisorIsRefused(t *testing.T) {
	cfg, marker := testConfig(t, tickScript)
	p1 := start(t, cfg)
	p2, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	err = p2.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "already supervised") {
		t.Fatalf("second Start: %v, want already supervised", err)
	}
	if err := p2.Close(); err != nil {
		t.Fatal(err)
	}
	if !alive(p1.Status().PID) {
		t.Fatal("first supervisor's process died")
	}
	p1.Close()
	noLeftovers(t, marker)
}

func TestMissingBinary(t *testing.T) {
	dir := t.TempDir()
	p, err := New(Config{Name: "kubelet", Path: "/opt/nonexistent/kubelet", Dir: dir}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	err = p.Start(context.Background())
	want := "kubelet: /opt/nonexistent/kubelet not found"
	if err == nil || err.Error() != want {
		t.Fatalf("Start: %v, want %q", err, want)
	}
	if st := p.Status(); st.LastError != want || st.Running {
		t.Errorf("status %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Version("/opt/nonexistent/kubelet", "--version"); err == nil || err.Error() != want {
		t.Errorf("Version: %v, want %q", err, want)
	}
	if _, err := Version(dir, "--version"); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("Version of a directory: %v", err)
	}
}

func TestVersion(t *testing.T) {
	v, err := Version("/bin/sh", "-c", "echo '  Kubernetes v1.34.4 '")
	if err != nil || v != "Kubernetes v1.34.4" {
		t.Errorf("Version = %q, %v", v, err)
	}
	_, err = Version("/bin/sh", "-c", "echo unknown flag: --version >&2; exit 2")
	if err == nil || !strings.Contains(err.Error(), "exit status 2: unknown flag: --version") {
		t.Errorf("Version of a failing binary: %v", err)
	}
	if v, err := Version("sh", "-c", "echo ok"); err != nil || v != "ok" {
		t.Errorf("Version via PATH = %q, %v", v, err)
	}
}

func TestLifecycleEdges(t *testing.T) {
	cfg, marker := testConfig(t, tickScript)
	never, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := never.Close(); err != nil {
		t.Fatal(err)
	}
	if err := never.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := never.Start(context.Background()); err == nil {
		t.Error("Start after Close succeeded")
	}
	p := start(t, cfg)
	if err := p.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
	p.Close()
	noLeftovers(t, marker)

	for _, bad := range []Config{
		{Path: "/bin/sh", Dir: "/tmp"},
		{Name: "a/b", Path: "/bin/sh", Dir: "/tmp"},
		{Name: "x", Path: "sh", Dir: "/tmp"},
		{Name: "x", Dir: "/tmp"},
		{Name: "x", Path: "/bin/sh"},
	} {
		if _, err := New(bad, testLogger(t)); err == nil {
			t.Errorf("New(%+v) accepted", bad)
		}
	}
	if _, err := New(cfg, nil); err == nil {
		t.Error("New without logger accepted")
	}
}

func TestEnvironmentIsMinimal(t *testing.T) {
	t.Setenv("SUPERVISE_LEAK_CHECK", "leaked")
	cfg, marker := testConfig(t, `env; exec sleep $0`)
	cfg.Env = []string{"FOO=bar"}
	p := start(t, cfg)
	waitFor(t, "env in log", func() bool { return strings.Contains(readLog(t, p.LogPath()), "FOO=bar") })
	out := readLog(t, p.LogPath())
	if strings.Contains(out, "SUPERVISE_LEAK_CHECK") || !strings.Contains(out, minimalPath) {
		t.Errorf("child environment:\n%s", out)
	}
	p.Close()
	noLeftovers(t, marker)
}

func TestParseStat(t *testing.T) {
	st, err := parseStat("42 (a) b (c)) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10 18446744073709551615")
	if err != nil || st.state != 'S' || st.ppid != 7 || st.startTicks != 123456 {
		t.Errorf("parseStat = %+v, %v", st, err)
	}
	for _, bad := range []string{"", "1 (x)", "1 (x) S y 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5"} {
		if _, err := parseStat(bad); err == nil {
			t.Errorf("parseStat(%q) accepted", bad)
		}
	}
}

func TestTrimLine(t *testing.T) {
	long := strings.Repeat("é", 400) + " root cause"
	got := trimLine(long)
	if len(got) > maxErrorLine+3 || !strings.HasSuffix(got, "root cause") || !strings.HasPrefix(got, "...") {
		t.Errorf("trimLine: %q", got)
	}
	if got := trimLine("short"); got != "short" {
		t.Errorf("trimLine(short) = %q", got)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Package e2e holds the end-to-end scenarios: real runos-agent processes in
// the network-namespace lab (package lab), driven through the CLI.
package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/e2e/lab"
)

// agentBuildTags are the build tags of the runos-agent TestMain builds
// (jepsen_tags_test.go: the fault campaign's test register).
var agentBuildTags = ""

// agentBinary is the runos-agent under test: $RUNOS_AGENT_BIN (the Makefile
// sets it), or one TestMain builds into a temp dir.
var agentBinary string

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(m.Run()) // a helper process: no build, no leftover check
	}
	cleanup, err := findAgentBinary()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	cleanup()
	if left := lab.Leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: lab namespaces left behind: %v\n", left)
		code = 1
	}
	os.Exit(code)
}

func findAgentBinary() (cleanup func(), err error) {
	cleanup = func() {}
	if p := os.Getenv("RUNOS_AGENT_BIN"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return cleanup, err
		}
		if fi, err := os.Stat(abs); err != nil || fi.IsDir() {
			return cleanup, fmt.Errorf("RUNOS_AGENT_BIN=%s is not a binary (run `make build`): %v", p, err)
		}
		agentBinary = abs
		return cleanup, nil
	}
	if os.Geteuid() != 0 && !lab.Required() {
		return cleanup, nil // every lab test skips; agentBin fails any that does not
	}
	dir, err := os.MkdirTemp("", "runos-e2e-bin-")
	if err != nil {
		return cleanup, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	out := filepath.Join(dir, "runos-agent")
	cmd := exec.Command("go", "build", "-tags", agentBuildTags, "-ldflags", "-X github.com/runos/runos-agent/agent.Version=e2e",
		"-o", out, "github.com/runos/runos-agent/cmd/runos-agent")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		cleanup()
		return func() {}, fmt.Errorf("RUNOS_AGENT_BIN is unset and building runos-agent failed: %v", err)
	}
	agentBinary = out
	return cleanup, nil
}

func agentBin(t testing.TB) string {
	t.Helper()
	if agentBinary == "" {
		t.Fatal("no runos-agent binary: set RUNOS_AGENT_BIN (make build) or run as root so TestMain builds one")
	}
	return agentBinary
}

// Helper processes are this test binary re-executed inside a namespace with
// RUNOS_E2E_HELPER naming the role; each is bounded in time.
const helperEnv = "RUNOS_E2E_HELPER"

// helper returns the argv of a helper role with env ("K=V") added.
func helper(t testing.TB, role string, env ...string) []string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The race runtime sleeps a second at exit unless told not to.
	args := []string{"env", helperEnv + "=" + role, "GORACE=" + os.Getenv("GORACE") + " atexit_sleep_ms=0"}
	args = append(args, env...)
	return append(args, exe, "-test.run=^TestHelperEcho$")
}

// TestHelperEcho is not a test: it is the entry point of the helper roles.
//
//	echo-server LISTEN=addr: answers each TCP line with "FROM <peer addr> <line>"
//	echo-client DIAL=addr MSG=m: sends m, prints the answer
func TestHelperEcho(t *testing.T) {
	var err error
	switch role := os.Getenv(helperEnv); role {
	case "":
		return
	case "echo-server":
		err = echoServer(os.Getenv("LISTEN"), 10*time.Minute)
	case "echo-client":
		err = echoClient(os.Getenv("DIAL"), os.Getenv("MSG"))
	default:
		var ok bool
		if ok, err = attackRole(role); !ok {
			err = fmt.Errorf("unknown helper role %q", role)
		}
	}
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func echoServer(listen string, life time.Duration) error {
	ln, err := net.Listen("tcp4", listen)
	if err != nil {
		return err
	}
	fmt.Println("LISTENING", ln.Addr())
	time.AfterFunc(life, func() { ln.Close() })
	for {
		c, err := ln.Accept()
		if err != nil {
			return nil // closed: done
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(c, "FROM %s %s\n", c.RemoteAddr(), strings.TrimSpace(line))
		}()
	}
}

func echoClient(addr, msg string) error {
	c, err := net.DialTimeout("tcp4", addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return err
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	fmt.Print(reply)
	return nil
}

package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/runos/runos-agent/agent/agenttest"
)

func run(args ...string) (string, error) {
	var out bytes.Buffer
	err := newApp(&out, &out).Run(append([]string{"runos-agent"}, args...))
	return out.String(), err
}

func TestCLIErrors(t *testing.T) {
	dir := t.TempDir()
	if out, err := run("init", "--data-dir", dir, "--name", "a", "--net", "userspace", "--advertise", "127.0.0.1"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"init", "--data-dir", dir, "--name", "a"}, "already initialised"},
		{[]string{"init", "--data-dir", t.TempDir(), "--name", "Bad_Name"}, "invalid node name"},
		{[]string{"init", "--data-dir", t.TempDir(), "--name", "x", "--net", "magic"}, "invalid --net"},
		{[]string{"status", "--data-dir", dir}, "agent is not running"},
		{[]string{"nodes", "--data-dir", t.TempDir()}, "agent is not running"},
		{[]string{"nodes", "--consistent", "--data-dir", t.TempDir()}, "agent is not running"},
		{[]string{"status", "--consistent", "--data-dir", dir}, "agent is not running"},
		{[]string{"join", "--data-dir", t.TempDir(), "--name", "b", "--token", "nope", "127.0.0.1:1"}, "malformed join token"},
		{[]string{"join", "--data-dir", t.TempDir(), "--name", "b", "--token", "x"}, "exactly one member address"},
		{[]string{"run", "--data-dir", t.TempDir()}, "not initialised"},
		{[]string{"--log-level", "loud", "run", "--data-dir", dir}, "invalid --log-level"},
		{[]string{"run", "--data-dir", dir, "--pprof", "0.0.0.0:6060"}, "loopback only"},
		{[]string{"run", "--data-dir", dir, "--pprof", ":6060"}, "--pprof"},
		{[]string{"run", "--data-dir", dir, "--pprof", "10.1.2.3:6060"}, "loopback only"},
	}
	for _, tc := range cases {
		_, err := run(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error is not one line: %q", tc.args, err)
		}
	}
}

func TestFlagsFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("RUNOS_DATA_DIR", dir)
	t.Setenv("RUNOS_NAME", "from-env")
	t.Setenv("RUNOS_NET", "userspace")
	t.Setenv("RUNOS_ADVERTISE", "127.0.0.1")
	out, err := run("init")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "node from-env") || !strings.Contains(out, dir) {
		t.Fatalf("init did not take its flags from the environment: %s", out)
	}
}

// `--consistent` reads through the leader; on a one-node cluster it leads.
func TestConsistentFlag(t *testing.T) {
	c := agenttest.Start(t, 1)
	name := c.Agent(0).Name()
	for _, args := range [][]string{{"nodes", "--consistent"}, {"status", "--consistent"}, {"nodes", "--consistent", "--json"}} {
		out, err := run(append(args, "--data-dir", c.Dirs()[0])...)
		if err != nil || !strings.Contains(out, name) {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
}

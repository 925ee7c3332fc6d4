package main

import (
	"regexp"
	"strings"
	"testing"
)

func TestInitPrintsUIPasswordOnce(t *testing.T) {
	dir := t.TempDir()
	out, err := run("init", "--data-dir", dir, "--name", "a", "--net", "userspace", "--advertise", "127.0.0.1")
	if err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`web UI sign-in \(shown only now\): user admin, password [a-z2-9]{5}(-[a-z2-9]{5}){3}\n`).MatchString(out) {
		t.Fatalf("init did not print the UI password:\n%s", out)
	}
	if _, err := run("ui", "reset-password", "--data-dir", dir); err == nil || !strings.Contains(err.Error(), "agent is not running") {
		t.Fatalf("reset-password without an agent: %v", err)
	}
}

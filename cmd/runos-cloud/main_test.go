package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloud"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, agenttest.LeakOptions()...)
}

func run(args ...string) (string, error) {
	var out bytes.Buffer
	err := newApp(&out, &out).Run(append([]string{"runos-cloud"}, args...))
	return out.String(), err
}

// A real runos-cloud (in-process, real TLS on 127.0.0.1), driven through
// this CLI over its admin socket, and a real two-node cluster connected to
// it through the agent's local API (the path `runos-agent cloud connect`
// takes): its nodes and their health show in `runos-cloud nodes` within
// 10 s.
func TestCLINodesVisibleAfterConnect(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := cloud.New(cloud.Config{DataDir: dir, Listen: "127.0.0.1:0"}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	out, err := run("token", "create", "--data-dir", dir, "--cluster", "lab", "--ttl", "1h", "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var tok cloud.TokenInfo
	if err := json.Unmarshal([]byte(out), &tok); err != nil || !strings.HasPrefix(tok.Token, "RC1") {
		t.Fatalf("token create --json: %q (%v)", out, err)
	}

	c := agenttest.Start(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	t0 := time.Now()
	if _, err := api.NewClient(c.Dirs()[1]).CloudConnect(ctx, api.CloudConnectRequest{URL: srv.URL(), Token: tok.Token, Allow: "admin"}); err != nil {
		t.Fatal(err)
	}
	for {
		out, err := run("nodes", "--data-dir", dir, "--json", "lab")
		var nodes []api.Node
		json.Unmarshal([]byte(out), &nodes)
		healthy := 0
		for _, n := range nodes {
			if n.Health == api.Healthy && n.MeshIP != "" && n.LastHeartbeatSeconds >= 0 {
				healthy++
			}
		}
		if err == nil && healthy == 2 {
			t.Logf("2 healthy nodes in `runos-cloud nodes` %v after connect", time.Since(t0).Round(time.Millisecond))
			break
		}
		if time.Since(t0) > 10*time.Second {
			t.Fatalf("after 10 s: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err = run("clusters", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "lab") || !strings.Contains(out, "true") {
		t.Fatalf("clusters: %v\n%s", err, out)
	}
	out, err = run("nodes", "--data-dir", dir, "lab")
	if err != nil || !strings.Contains(out, "node0") || !strings.Contains(out, "healthy") {
		t.Fatalf("nodes: %v\n%s", err, out)
	}
	// A command from the CLI comes back with its result.
	out, err = run("command", "create-token", "--data-dir", dir, "lab")
	if err != nil || !strings.Contains(out, `"state": "done"`) || !strings.Contains(out, "RO1") {
		t.Fatalf("command create-token: %v\n%s", err, out)
	}
	// A service deployed and deleted from the CLI: the result is the
	// instance; bad input is the command's error.
	out, err = run("command", "deploy-service", "--data-dir", dir, "--set", "storage=2Gi", "lab", "redis")
	var rec cloud.CommandRecord
	var svc api.Service
	if err == nil {
		err = json.Unmarshal([]byte(out), &rec)
	}
	if err != nil || rec.State != cloud.CmdDone || json.Unmarshal(rec.Result.Data, &svc) != nil || !strings.HasPrefix(svc.OSID, "redis-") {
		t.Fatalf("command deploy-service: %v\n%s", err, out)
	}
	if list, err := api.NewClient(c.Dirs()[0]).Services(ctx, ""); err != nil || len(list) != 1 || list[0].OSID != svc.OSID {
		t.Fatalf("cluster services after the cloud's deploy: %+v %v", list, err)
	}
	out, err = run("command", "deploy-service", "--data-dir", dir, "--set", "colour=blue", "lab", "redis")
	if err != nil || !strings.Contains(out, `"state": "failed"`) || !strings.Contains(out, `unknown setting`) {
		t.Fatalf("bad deploy-service: %v\n%s", err, out)
	}
	if _, err := run("command", "deploy-service", "--data-dir", dir, "--set", "novalue", "lab", "redis"); err == nil || !strings.Contains(err.Error(), "KEY=VALUE") {
		t.Fatalf("--set without =: %v", err)
	}
	out, err = run("command", "delete-service", "--data-dir", dir, "lab", svc.OSID)
	if err != nil || !strings.Contains(out, `"state": "done"`) {
		t.Fatalf("command delete-service: %v\n%s", err, out)
	}
	st, err := api.NewClient(c.Dirs()[0]).CloudStatus(ctx)
	if err != nil || !st.Registered || st.URL != srv.URL() {
		t.Fatalf("cloud status: %+v %v", st, err)
	}
}

func TestCLIErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"clusters", "--data-dir", dir}, "not running"},
		{[]string{"token", "create", "--data-dir", dir, "--cluster", "x"}, "not running"},
		{[]string{"nodes", "--data-dir", dir}, "exactly one cluster"},
	} {
		if out, err := run(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q\n%s", tc.args, err, tc.want, out)
		}
	}
	srv, err := cloud.New(cloud.Config{DataDir: dir, Listen: "127.0.0.1:0"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := run("nodes", "--data-dir", dir, "nosuch"); err == nil || !strings.Contains(err.Error(), "no such cluster") {
		t.Errorf("unknown cluster: %v", err)
	}
	if _, err := run("token", "create", "--data-dir", dir, "--cluster", ""); err == nil {
		t.Error("empty cluster name accepted")
	}
}

// The console password: made once by the first start (a restart keeps
// it), replaced by `admin reset-password` over the admin socket, which
// ends every console session; the old password stops working.
func TestCLIAdminResetPassword(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := cloud.New(cloud.Config{DataDir: dir, Listen: "127.0.0.1:0", ConsoleListen: "127.0.0.1:0"}, log)
	if err != nil {
		t.Fatal(err)
	}
	first := srv.InitialPassword()
	if len(first) < 20 {
		t.Fatalf("first start made password %q", first)
	}
	srv.Close()
	srv, err = cloud.New(cloud.Config{DataDir: dir, Listen: "127.0.0.1:0", ConsoleListen: "127.0.0.1:0"}, log)
	if err != nil {
		t.Fatal(err)
	}
	if pw := srv.InitialPassword(); pw != "" {
		t.Fatalf("a restart made a new password %q", pw)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	login := func(pw string) int {
		resp, err := http.Post("http://"+srv.ConsoleAddr()+"/ui/login", "application/json",
			strings.NewReader(`{"username":"admin","password":"`+pw+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := login(first); code != 200 {
		t.Fatalf("sign-in with the first password: %d", code)
	}
	out, err := run("admin", "reset-password", "--data-dir", dir, "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var res struct{ Password string }
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Password == "" || res.Password == first {
		t.Fatalf("reset-password --json: %q %v", out, err)
	}
	if code := login(first); code != 401 {
		t.Errorf("old password after reset: %d", code)
	}
	if code := login(res.Password); code != 200 {
		t.Errorf("new password: %d", code)
	}
	if out, err := run("admin", "reset-password", "--data-dir", t.TempDir()); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("reset without a server: %v\n%s", err, out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// `serve` prints the console password on the first start only.
func TestServePrintsPasswordOnce(t *testing.T) {
	dir := t.TempDir()
	serve := func() string {
		var out syncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- newApp(&out, io.Discard).RunContext(ctx, []string{"runos-cloud", "serve", "--data-dir", dir,
				"--listen", "127.0.0.1:0", "--console-listen", "127.0.0.1:0", "--stun-listen", ""})
		}()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(out.String(), "console: http://") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("serve: %v\n%s", err, out.String())
		}
		return out.String()
	}
	first := serve()
	if !strings.Contains(first, "console sign-in: user admin, password ") {
		t.Fatalf("first serve printed no password:\n%s", first)
	}
	if second := serve(); strings.Contains(second, "password") {
		t.Errorf("second serve printed a password again:\n%s", second)
	}
}

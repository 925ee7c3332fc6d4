package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

// A request the agent received but never answered, because it stopped
// (and removed its socket) meanwhile, may have been carried out: the
// client must not report it as "agent is not running", which tells the
// user nothing happened. Found by the fault campaign (agent/jepsen): a
// register write reported so had been committed.
func TestStoppedMidRequestIsNotNotRunning(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, SocketName)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	received := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(received)
		// The agent stops mid-request: socket gone, connection cut.
		os.Remove(sock)
		hj, ok := w.(http.Hijacker)
		if !ok {
			t.Error("no hijacker")
			return
		}
		c, _, err := hj.Hijack()
		if err == nil {
			c.Close()
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	c := NewClient(dir)
	defer c.CloseIdleConnections()
	_, err = c.CreateToken(context.Background(), TokenRequest{})
	<-received
	if err == nil {
		t.Fatal("no error")
	}
	if errors.Is(err, ErrAgentNotRunning) {
		t.Fatalf("a request the agent received is reported as %q", err)
	}
	t.Logf("error: %v", err)

	// Nothing listening at all is still "not running".
	_, err = c.CreateToken(context.Background(), TokenRequest{})
	if !errors.Is(err, ErrAgentNotRunning) {
		t.Fatalf("no socket: %v, want ErrAgentNotRunning", err)
	}
}

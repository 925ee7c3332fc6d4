package apilb

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// server is a real TCP server on 127.0.0.1 standing in for an API server.
type server struct {
	t       testing.TB
	name    string
	ln      net.Listener
	handler func(s *server, c net.Conn)

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	served int
	wg     sync.WaitGroup
}

// echoLine answers every line with "<name>: <line>".
func echoLine(s *server, c net.Conn) {
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := fmt.Fprintf(c, "%s: %s", s.name, line); err != nil {
			return
		}
	}
}

func startServer(t testing.TB, name string, handler func(*server, net.Conn)) *server {
	t.Helper()
	return startServerAt(t, "127.0.0.1:0", name, handler)
}

func startServerAt(t testing.TB, addr, name string, handler func(*server, net.Conn)) *server {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, name: name, ln: ln, handler: handler, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.served++
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				s.handler(s, c)
			}()
		}
	}()
	t.Cleanup(s.kill)
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

func (s *server) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served
}

// kill stops listening and drops every connection, as a dying API server.
func (s *server) kill() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func startBalancer(t testing.TB, cfg Config) *Balancer {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	b, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

type client struct {
	c net.Conn
	r *bufio.Reader
}

func dialClient(t testing.TB, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{c: c, r: bufio.NewReader(c)}
}

// ask sends a line and returns the answer, or an error if the connection
// broke.
func (c *client) ask(line string) (string, error) {
	c.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c.c, line+"\n"); err != nil {
		return "", err
	}
	ans, err := c.r.ReadString('\n')
	return strings.TrimSuffix(ans, "\n"), err
}

func mustAsk(t testing.TB, c *client, line string) string {
	t.Helper()
	ans, err := c.ask(line)
	if err != nil {
		t.Fatalf("ask %q: %v", line, err)
	}
	return ans
}

// waitFor polls cond; the deadline only bounds a hung test.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTrafficRoundRobin(t *testing.T) {
	a := startServer(t, "a", echoLine)
	bs := startServer(t, "b", echoLine)
	lb := startBalancer(t, Config{Backends: []string{a.addr(), bs.addr()}})

	seen := map[string]int{}
	for i := range 6 {
		c := dialClient(t, lb.Addr())
		ans := mustAsk(t, c, fmt.Sprintf("hello %d", i))
		name, rest, _ := strings.Cut(ans, ": ")
		if rest != fmt.Sprintf("hello %d", i) {
			t.Fatalf("answer %q", ans)
		}
		seen[name]++
	}
	if seen["a"] != 3 || seen["b"] != 3 {
		t.Fatalf("connections per backend = %v, want 3 each", seen)
	}
	waitFor(t, "both healthy", func() bool { return len(lb.Healthy()) == 2 })
}

func TestKilledBackendIsSkipped(t *testing.T) {
	a := startServer(t, "a", echoLine)
	bs := startServer(t, "b", echoLine)
	// No periodic re-check during the test: only the dial failure may tell
	// the balancer that a is gone.
	lb := startBalancer(t, Config{Backends: []string{a.addr(), bs.addr()}, HealthInterval: time.Hour})
	waitFor(t, "initial health check", func() bool { return len(lb.Healthy()) == 2 })

	first := dialClient(t, lb.Addr())
	second := dialClient(t, lb.Addr())
	onA, onB := first, second
	if got := mustAsk(t, first, "x"); got != "a: x" {
		onA, onB = second, first
	}
	if got := mustAsk(t, second, "x"); !strings.HasSuffix(got, ": x") {
		t.Fatalf("answer %q", got)
	}
	if got := mustAsk(t, onA, "x"); got != "a: x" {
		t.Fatalf("one connection should be on a, got %q", got)
	}
	if got := mustAsk(t, onB, "x"); got != "b: x" {
		t.Fatalf("one connection should be on b, got %q", got)
	}

	a.kill()
	if _, err := onA.ask("y"); err == nil {
		t.Fatal("connection to the killed backend still answers")
	}
	// The cursor is at a again: this connection dials a first, fails, and
	// must land on b within the same accept.
	c := dialClient(t, lb.Addr())
	if got := mustAsk(t, c, "after"); got != "b: after" {
		t.Fatalf("got %q after a died", got)
	}
	if h := lb.Healthy(); !slices.Equal(h, []string{bs.addr()}) {
		t.Fatalf("Healthy() = %v, want only b %s", h, bs.addr())
	}
	for i := range 4 {
		c := dialClient(t, lb.Addr())
		if got := mustAsk(t, c, "n"); got != "b: n" {
			t.Fatalf("connection %d: %q", i, got)
		}
	}
	if got := mustAsk(t, onB, "still"); got != "b: still" {
		t.Fatalf("connection to b broken: %q", got)
	}
}

func TestHealthCheckNoticesRecovery(t *testing.T) {
	a := startServer(t, "a", echoLine)
	addr := a.addr()
	a.kill()
	lb := startBalancer(t, Config{Backends: []string{addr}, HealthInterval: 20 * time.Millisecond})
	// Nothing listens: the client's connection is accepted and then closed.
	c := dialClient(t, lb.Addr())
	if _, err := c.ask("x"); err == nil {
		t.Fatal("got an answer with no backend up")
	}
	if len(lb.Healthy()) != 0 {
		t.Fatalf("Healthy() = %v with the backend down", lb.Healthy())
	}
	// The API server comes back on the same port.
	startServerAt(t, addr, "a2", echoLine)
	waitFor(t, "backend healthy again", func() bool { return len(lb.Healthy()) == 1 })
	if got := mustAsk(t, dialClient(t, lb.Addr()), "x"); got != "a2: x" {
		t.Fatalf("got %q", got)
	}
}

func TestSetBackendsClosesRemoved(t *testing.T) {
	a := startServer(t, "a", echoLine)
	bs := startServer(t, "b", echoLine)
	cs := startServer(t, "c", echoLine)
	lb := startBalancer(t, Config{Backends: []string{a.addr(), bs.addr()}, HealthInterval: time.Hour})
	// Health checks connect too; count a's connections only once they ran.
	waitFor(t, "initial health check", func() bool { return len(lb.Healthy()) == 2 })

	c1 := dialClient(t, lb.Addr())
	c2 := dialClient(t, lb.Addr())
	byName := map[string]*client{}
	for _, c := range []*client{c1, c2} {
		name, _, _ := strings.Cut(mustAsk(t, c, "x"), ": ")
		byName[name] = c
	}
	if byName["a"] == nil || byName["b"] == nil {
		t.Fatalf("want one connection per backend, got %v", byName)
	}

	aServed := a.count()
	lb.SetBackends([]string{bs.addr(), cs.addr()})

	// The connection to a is cut by the balancer although a is alive.
	if _, err := byName["a"].ask("y"); err == nil {
		t.Fatal("connection to removed backend a still answers")
	}
	// b stayed listed: its connection is untouched.
	if got := mustAsk(t, byName["b"], "y"); got != "b: y" {
		t.Fatalf("b connection: %q", got)
	}
	names := map[string]bool{}
	for range 4 {
		name, _, _ := strings.Cut(mustAsk(t, dialClient(t, lb.Addr()), "z"), ": ")
		names[name] = true
	}
	if names["a"] || !names["b"] || !names["c"] {
		t.Fatalf("new connections went to %v, want b and c", names)
	}
	if a.count() != aServed {
		t.Fatalf("a got %d new connections after removal", a.count()-aServed)
	}
}

func TestHalfClose(t *testing.T) {
	// The backend reads to EOF, then answers: only works if the client's
	// CloseWrite reaches it as EOF while its own write side stays open.
	s := startServer(t, "s", func(s *server, c net.Conn) {
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "read %d bytes", n)
	})
	lb := startBalancer(t, Config{Backends: []string{s.addr()}})
	conn, err := net.Dial("tcp", lb.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	payload := strings.Repeat("k", 100_000)
	if _, err := io.WriteString(conn, payload); err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	ans, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading answer after half-close: %v", err)
	}
	if string(ans) != "read 100000 bytes" {
		t.Fatalf("answer %q", ans)
	}
}

func TestNoBackendsRefuses(t *testing.T) {
	lb := startBalancer(t, Config{})
	c := dialClient(t, lb.Addr())
	if _, err := c.ask("x"); err == nil {
		t.Fatal("answer without backends")
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	s := startServer(t, "s", echoLine)
	dead := startServer(t, "dead", echoLine)
	deadAddr := dead.addr()
	dead.kill()
	b, err := New(Config{Listen: "127.0.0.1:0", Backends: []string{s.addr(), deadAddr}, HealthInterval: 10 * time.Millisecond}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	var open []net.Conn
	for range 5 {
		c, err := net.Dial("tcp", b.Addr())
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		cl := &client{c: c, r: bufio.NewReader(c)}
		if got := mustAsk(t, cl, "x"); got != "s: x" {
			t.Fatalf("got %q", got)
		}
	}
	// A half-closed one too: one copy direction finished, the other not.
	open[0].(*net.TCPConn).CloseWrite()

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, c := range open {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("client connection still open after Close")
		}
		c.Close()
	}
	if _, err := net.Dial("tcp", b.Addr()); err == nil {
		t.Fatal("still accepting after Close")
	}
	s.kill()
}

func TestContextCancelStops(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s := startServer(t, "s", echoLine)
	b, err := New(Config{Listen: "127.0.0.1:0", Backends: []string{s.addr()}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	b.Close()
	if _, err := net.Dial("tcp", b.Addr()); err == nil {
		t.Fatal("still accepting after ctx cancel")
	}
	s.kill()
}

func TestNewRejectsBadConfig(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	if _, err := New(Config{}, nil); err == nil {
		t.Error("nil logger accepted")
	}
	if _, err := New(Config{Listen: "nonsense"}, log); err == nil {
		t.Error("bad listen address accepted")
	}
	if _, err := New(Config{Backends: []string{"10.0.0.1"}}, log); err == nil {
		t.Error("backend without port accepted")
	}
	b, err := New(Config{}, log)
	if err != nil {
		t.Fatal(err)
	}
	if b.Addr() != DefaultListen {
		t.Errorf("default Addr() = %q", b.Addr())
	}
	b.Close()
	if err := b.Start(context.Background()); err == nil {
		t.Error("Start after Close succeeded")
	}
}

// sink reads everything, then reports the count, so the sender knows all
// bytes went through.
func sink(s *server, c net.Conn) {
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return
	}
	fmt.Fprintf(c, "%d", n)
}

func BenchmarkThroughput(b *testing.B) {
	s := startServer(b, "sink", sink)
	lb := startBalancer(b, Config{Backends: []string{s.addr()}})
	chunk := make([]byte, 64<<10)
	run := func(b *testing.B, addr string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.SetBytes(int64(len(chunk)))
		b.ResetTimer()
		for range b.N {
			if _, err := c.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		c.(*net.TCPConn).CloseWrite()
		ans, err := io.ReadAll(c)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		if want := fmt.Sprint(b.N * len(chunk)); string(ans) != want {
			b.Fatal(errors.New("sink got " + string(ans) + " bytes, want " + want))
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, s.addr()) })
	b.Run("balancer", func(b *testing.B) { run(b, lb.Addr()) })
}

package ui

import (
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLocalUserCannotLockAdminOut is the attack: every local user reaches
// the UI from 127.0.0.1, so a local user hammering wrong passwords for
// admin drains the one per-IP (and the node-wide) budget that the real
// admin, also on 127.0.0.1 (a browser on the node, or an SSH tunnel),
// needs. The admin signed in earlier today; the attacker starts; the admin
// comes back with the right password, waits what Retry-After says (a few
// seconds at most) and must get in, while the attacker keeps going.
func TestLocalUserCannotLockAdminOut(t *testing.T) {
	f := newFixture(t, Config{})
	attempt := func(port int, pw string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/ui/login", strings.NewReader(loginBody("admin", pw)))
		req.Header.Set("Content-Type", "application/json")
		req.RemoteAddr = "127.0.0.1:" + strconv.Itoa(port)
		w := httptest.NewRecorder()
		f.srv.ServeHTTP(w, req)
		return w
	}
	if w := attempt(40000, testPassword); w.Code != 200 {
		t.Fatalf("admin's first sign-in: %d %s", w.Code, w.Body)
	}
	// The attacker: a wrong password every 100 ms for a minute; it is
	// always the last to ask before the admin does.
	attack := func(n int) {
		for range n {
			f.advance(100 * time.Millisecond)
			attempt(50000, "wrong-password")
		}
	}
	attack(600)
	// The admin tries, waits what it is told, tries again; the attacker
	// gets in the first request after every wait.
	for try := 1; ; try++ {
		w := attempt(40001, testPassword)
		if w.Code == 200 {
			break
		}
		if w.Code != 429 {
			t.Fatalf("admin's try %d: %d %s", try, w.Code, w.Body)
		}
		wait, err := strconv.Atoi(w.Header().Get("Retry-After"))
		if err != nil || wait > 5 {
			t.Fatalf("admin's try %d: told to wait %q: locked out for longer than a few seconds", try, w.Header().Get("Retry-After"))
		}
		if try == 3 {
			t.Fatalf("admin locked out: %d tries with the right password, each after waiting Retry-After (%d s), all refused: %s", try, wait, strings.TrimSpace(w.Body.String()))
		}
		attack(wait * 10)
	}
}

// TestPerUserDelay: past the free failures every attempt for the user is
// held, longer with each failure up to the cap, the right password's too
// (it then gets in); other user names do not slow admin's attempts.
func TestPerUserDelay(t *testing.T) {
	f := newFixture(t, Config{ClientBurst: 1000, GlobalBurst: 1000, UserFreeFailures: 3, UserMaxDelay: 2 * time.Second})
	c := f.client()
	held := func() []time.Duration {
		f.mu.Lock()
		defer f.mu.Unlock()
		h := f.held
		f.held = nil
		return h
	}
	for range 3 {
		if r := f.do(c, "POST", "/ui/login", loginBody("root", "x"), nil); r.code != 401 {
			t.Fatalf("other user: %d %s", r.code, r.body)
		}
	}
	for range 3 {
		if r := f.do(c, "POST", "/ui/login", loginBody("admin", "wrong"), nil); r.code != 401 {
			t.Fatalf("wrong password: %d %s", r.code, r.body)
		}
	}
	if h := held(); len(h) != 0 {
		t.Fatalf("held within the free failures: %v", h)
	}
	var last time.Duration
	for i := range 6 {
		if r := f.do(c, "POST", "/ui/login", loginBody("admin", "wrong"), nil); r.code != 401 {
			t.Fatalf("wrong password %d: %d %s", i, r.code, r.body)
		}
		h := held()
		if len(h) != 1 || h[0] < last || h[0] > 2*time.Second {
			t.Fatalf("failure %d held %v (previous %v, cap 2s)", i, h, last)
		}
		last = h[0]
	}
	if last != 2*time.Second {
		t.Fatalf("delay stopped at %v, below the cap", last)
	}
	if r := f.do(c, "POST", "/ui/login", loginBody("admin", testPassword), nil); r.code != 200 {
		t.Fatalf("right password after the delay: %d %s", r.code, r.body)
	}
	if h := held(); len(h) != 1 || h[0] != 2*time.Second {
		t.Fatalf("right password held %v", h)
	}
	// A success starts the count afresh, and failures are forgiven with
	// time (one a minute here).
	for range 5 {
		f.do(c, "POST", "/ui/login", loginBody("admin", "wrong"), nil)
	}
	if h := held(); len(h) != 2 {
		t.Fatalf("after a success, 5 failures held %d times, want 2", len(h))
	}
	f.advance(10 * time.Minute)
	f.do(c, "POST", "/ui/login", loginBody("admin", "wrong"), nil)
	if h := held(); len(h) != 0 {
		t.Fatalf("held after ten quiet minutes: %v", h)
	}
}

func TestPenaltyBoundsUsers(t *testing.T) {
	p := newPenalty(1, time.Millisecond, time.Second, time.Minute)
	now := time.Now()
	for i := range 1000 {
		p.fail(strings.Repeat("u", i), now)
	}
	if len(p.users) > 2 {
		t.Fatalf("%d user keys kept", len(p.users))
	}
}

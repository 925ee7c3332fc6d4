package ui

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The cloud console's way of using the package: one Server in cloud mode
// under StripBase for every cluster, its own JSON API behind Protect.
func TestCloudModeUnderBase(t *testing.T) {
	f := newFixture(t, Config{Mode: "cloud"})
	var reached []string
	own := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached = append(reached, r.Method+" "+r.URL.Path)
		w.Write([]byte(`[]`))
	})
	mux := http.NewServeMux()
	mux.Handle("/clusters/c9/", StripBase("/clusters/c9/", f.srv))
	mux.Handle("/api/", f.srv.Protect(own))
	mux.Handle("/", f.srv)
	f.http = httptest.NewServer(mux)
	t.Cleanup(f.http.Close)
	c := f.client()

	// Without a session: the app redirects to its own sign-in page, which
	// is the console's (cloud wording, base under the prefix).
	r := f.do(c, "GET", "/clusters/c9/", "", nil)
	if r.code != http.StatusSeeOther || r.hdr.Get("Location") != "login" {
		t.Fatalf("app without a session: %d %q", r.code, r.hdr.Get("Location"))
	}
	r = f.do(c, "GET", "/clusters/c9/login", "", nil)
	if r.code != 200 || !strings.Contains(r.body, `<base href="/clusters/c9/">`) || !strings.Contains(r.body, "runos-cloud admin reset-password") || strings.Contains(r.body, "runos-agent ui reset-password") {
		t.Fatalf("cloud sign-in page: %d %s", r.code, r.body)
	}
	if r := f.do(c, "GET", "/login.html", "", nil); r.code != http.StatusSeeOther {
		t.Errorf("raw template login.html: %d", r.code)
	}
	for _, p := range []string{"/api/clusters", "/clusters/c9/v1/nodes", "/clusters/c9/ui/session"} {
		if r := f.do(c, "GET", p, "", nil); r.code != 401 {
			t.Errorf("GET %s without a session: %d", p, r.code)
		}
	}
	if r := f.do(c, "POST", "/api/tokens", "{}", nil); r.code != 401 {
		t.Errorf("POST /api/tokens without a session: %d", r.code)
	}
	if len(reached) != 0 || len(f.apiCalls()) != 0 {
		t.Fatalf("reached without a session: %v %v", reached, f.apiCalls())
	}

	csrf := f.login(c)
	r = f.do(c, "GET", "/clusters/c9/", "", nil)
	if r.code != 200 || !strings.Contains(r.body, `"base":"/clusters/c9/"`) || !strings.Contains(r.body, `"mode":"cloud"`) {
		t.Fatalf("app page: %d %s", r.code, r.body)
	}
	if r := f.do(c, "GET", "/clusters/c9/v1/nodes", "", nil); r.code != 200 {
		t.Errorf("API under the base: %d", r.code)
	}
	if calls := f.apiCalls(); len(calls) != 1 || calls[0] != "GET /v1/nodes" {
		t.Errorf("the API saw %v, want the path below the base", calls)
	}
	// Protect: changes need the CSRF token and the same origin.
	if r := f.do(c, "POST", "/api/tokens", "{}", nil); r.code != 403 {
		t.Errorf("POST without CSRF: %d", r.code)
	}
	if r := f.do(c, "POST", "/api/tokens", "{}", map[string]string{"X-CSRF-Token": csrf, "Origin": "http://evil.example"}); r.code != 403 {
		t.Errorf("POST from another origin: %d", r.code)
	}
	if r := f.do(c, "POST", "/api/tokens", "{}", map[string]string{"X-CSRF-Token": csrf}); r.code != 200 {
		t.Errorf("POST with CSRF: %d %s", r.code, r.body)
	}
	if r := f.do(c, "GET", "/api/clusters", "", nil); r.code != 200 {
		t.Errorf("GET with a session: %d", r.code)
	}
	if len(reached) != 2 {
		t.Errorf("own API reached %v", reached)
	}
}

func TestModeChecked(t *testing.T) {
	_, err := New(Config{API: http.NotFoundHandler(), Auth: &memAuthority{}, Mode: "desktop"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "desktop") {
		t.Errorf("unknown mode: %v", err)
	}
	f := newFixture(t, Config{})
	r := f.do(f.client(), "GET", "/login", "", nil)
	if !strings.Contains(r.body, "runos-agent ui reset-password") || !strings.Contains(r.body, `<base href="/">`) {
		t.Errorf("agent sign-in page: %s", r.body)
	}
}

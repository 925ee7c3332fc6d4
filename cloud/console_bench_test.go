package cloud

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudproto"
)

// BenchmarkConsoleRead is a mirror read (GET /clusters/a/v1/status) straight
// from the console API and through the console's sign-in (session cookie
// checked against the credential in bbolt, revocations read per request).
func BenchmarkConsoleRead(b *testing.B) {
	s, err := New(Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.CreateToken("a", time.Hour); err != nil {
		b.Fatal(err)
	}
	console, err := s.consoleHandler()
	if err != nil {
		b.Fatal(err)
	}
	pw, err := s.ResetConsolePassword()
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest("POST", "/ui/login", strings.NewReader(`{"username":"admin","password":"`+pw+`"}`))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	console.ServeHTTP(rec, req)
	if rec.Code != 200 {
		b.Fatalf("sign-in: %d %s", rec.Code, rec.Body)
	}
	cookie := rec.Result().Cookies()[0]
	run := func(b *testing.B, h http.Handler, withCookie bool) {
		for b.Loop() {
			r := httptest.NewRequest("GET", "/clusters/a/v1/status", nil)
			if withCookie {
				r.AddCookie(cookie)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != 200 {
				b.Fatalf("%d %s", w.Code, w.Body)
			}
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, s.apiHandler(), false) })
	b.Run("through-console", func(b *testing.B) { run(b, console, true) })
}

// BenchmarkConsoleServices is the console's services list (polled every
// 2 s by an open page) from a mirror of 50 instances, 20 apps and a full
// event window.
func BenchmarkConsoleServices(b *testing.B) {
	s, err := New(Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	tok, err := s.CreateToken("a", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	snap := &cloudproto.Snapshot{Index: 10}
	for i := range 50 {
		snap.Services = append(snap.Services, api.Service{OSID: fmt.Sprintf("postgres-%05d", i), Service: "postgres", Tier: "lightweight",
			Status: "ready", Ready: 1, Total: 1, Set: map[string]string{"storage": "10Gi", "version": "17.6"}})
	}
	for i := range 20 {
		snap.Apps = append(snap.Apps, api.App{OSID: fmt.Sprintf("web-%05d", i), Name: fmt.Sprint("web", i), Image: "nginx", Tier: "app",
			Status: "ready", Uses: []string{fmt.Sprintf("postgres-%05d", i)}})
	}
	for i := range eventWindow {
		snap.Events = append(snap.Events, api.Event{Seq: uint64(i + 1), Kind: "test", Detail: "x"})
	}
	if err := s.store.applySnapshot(tok.ClusterID, snap); err != nil {
		b.Fatal(err)
	}
	h := s.apiHandler()
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/clusters/a/v1/services", nil))
		if w.Code != 200 {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

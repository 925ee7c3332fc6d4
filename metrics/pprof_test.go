package metrics

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/runos/runos-agent/raftstore"
)

// TestMetricsListenerHasNoProfiler is the attack: the metrics listener is
// the one an operator opens to a scraper on the network, and anyone who
// reaches it could pull heap profiles (keys in memory) and traces without
// a credential. It must answer 404 under /debug/pprof/.
func TestMetricsListenerHasNoProfiler(t *testing.T) {
	h, err := NewHandler(Config{
		Store:  &fakeStore{st: &raftstore.State{}},
		Health: fakeHealth{},
		Device: fakeDevice{},
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=2", "/debug/pprof/cmdline", "/debug/pprof/trace?seconds=0"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Code != http.StatusNotFound {
			t.Errorf("GET %s on the metrics listener: %d (%d bytes), want 404", path, w.Code, w.Body.Len())
		}
	}
}

func TestPprofAddrLoopbackOnly(t *testing.T) {
	for in, want := range map[string]string{
		"6060":           "127.0.0.1:6060",
		"127.0.0.1:6060": "127.0.0.1:6060",
		"127.0.0.1:0":    "127.0.0.1:0",
		"127.9.9.9:1":    "127.9.9.9:1",
		"[::1]:6060":     "[::1]:6060",
		"localhost:6060": "127.0.0.1:6060",
	} {
		if got, err := PprofAddr(in); err != nil || got != want {
			t.Errorf("PprofAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", ":6060", "0.0.0.0:6060", "[::]:6060", "10.0.0.1:6060", "172.24.0.1:6060",
		"192.0.2.1:6060", "[::ffff:10.0.0.1]:6060", "example.com:6060", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:99999", "[fe80::1%lo]:6060"} {
		got, err := PprofAddr(in)
		if err == nil {
			t.Errorf("PprofAddr(%q) = %q, want refused", in, got)
			continue
		}
		if !strings.Contains(err.Error(), "--pprof") {
			t.Errorf("PprofAddr(%q): unclear error %q", in, err)
		}
	}
}

func TestPprofHandlerServes(t *testing.T) {
	h := PprofHandler()
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/cmdline"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Code != http.StatusOK || w.Body.Len() == 0 {
			t.Errorf("GET %s: %d", path, w.Code)
		}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	if w.Code != http.StatusNotFound {
		t.Errorf("GET /metrics on the profiler: %d", w.Code)
	}
}

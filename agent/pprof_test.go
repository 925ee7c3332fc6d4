package agent

import (
	"net/http"
	"strings"
	"testing"
)

// TestPprofOnlyOnItsLoopbackListener: the metrics listener serves no
// profiler; --pprof serves it on loopback and is refused anywhere else.
func TestPprofOnlyOnItsLoopbackListener(t *testing.T) {
	c := newCluster(t, 1)
	c.stop(0)
	cfg := c.dc.Config(0)
	for _, bad := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:6060"} {
		cfg.PprofListen = bad
		if _, err := New(cfg, c.deps(0)); err == nil || !strings.Contains(err.Error(), "--pprof") {
			t.Fatalf("PprofListen %q: err = %v, want refused", bad, err)
		}
	}
	a := c.restartWith(0, func(cfg *Config) { cfg.MetricsListen, cfg.PprofListen = "127.0.0.1:0", "127.0.0.1:0" })
	get := func(url string) int {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	metricsBase := strings.TrimSuffix(a.MetricsURL(), "/metrics")
	if code := get(metricsBase + "/debug/pprof/heap"); code != http.StatusNotFound {
		t.Fatalf("metrics listener /debug/pprof/heap: %d, want 404", code)
	}
	if !strings.HasPrefix(a.PprofURL(), "http://127.0.0.1:") {
		t.Fatalf("profiler at %q", a.PprofURL())
	}
	if code := get(a.PprofURL() + "heap"); code != http.StatusOK {
		t.Fatalf("profiler heap: %d", code)
	}
}

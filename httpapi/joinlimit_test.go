package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func joinFrom(h http.Handler, src, body string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	r := httptest.NewRequest("POST", "/v1/join", strings.NewReader(body))
	r.RemoteAddr = src + ":40000"
	h.ServeHTTP(rec, r)
	return rec
}

// Refused attempts spend the source's and the global budget; 429 with
// Retry-After beyond it; other sources keep theirs; successful joins cost
// nothing; time refills.
func TestJoinRateLimit(t *testing.T) {
	now := time.Unix(1e9, 0)
	j := &fakeJoiner{err: Classify(errors.New("join token is invalid"), ErrForbidden)}
	h, err := NewJoinHandler(j, JoinLimits{PerSourceBurst: 3, PerSourceEvery: 10 * time.Second,
		GlobalBurst: 5, GlobalEvery: time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	codes := func(src string, n int) string {
		var out []string
		for range n {
			rec := joinFrom(h, src, `{"name":"b"}`)
			s := fmt.Sprint(rec.Code)
			if rec.Code == http.StatusTooManyRequests {
				s += "/" + rec.Header().Get("Retry-After")
			}
			out = append(out, s)
		}
		return strings.Join(out, " ")
	}
	if got := codes("192.0.2.1", 5); got != "403 403 403 429/10 429/10" {
		t.Errorf("one source: %s", got)
	}
	if got := codes("192.0.2.2", 3); got != "403 403 429/1" {
		t.Errorf("second source (global budget 5): %s", got)
	}
	now = now.Add(2 * time.Second)
	if got := codes("192.0.2.2", 1); got != "403" {
		t.Errorf("after the global refill: %s", got)
	}
	j.err = nil
	now = now.Add(10 * time.Second)
	if got := codes("192.0.2.1", 4); got != "200 200 200 200" {
		t.Errorf("successful joins: %s", got)
	}
}

// The per-source table is bounded: sources beyond it share one bucket, and
// sources with a full bucket are forgotten to make room.
func TestJoinLimiterMemoryBounded(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := newJoinLimiter(JoinLimits{PerSourceBurst: 2, PerSourceEvery: time.Second, GlobalBurst: 1 << 20, MaxSources: 8,
		Now: func() time.Time { return now }})
	for i := range 1000 {
		l.take(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
	}
	if n := len(l.sources); n > 8 {
		t.Fatalf("%d sources tracked, want at most 8", n)
	}
	if ok, _ := l.take(netip.MustParseAddr("10.9.9.9")); ok {
		t.Error("an untracked source got past the exhausted overflow bucket")
	}
	now = now.Add(time.Minute)
	if ok, _ := l.take(netip.MustParseAddr("10.9.9.9")); !ok {
		t.Error("a new source refused after the table's sources refilled")
	}
}

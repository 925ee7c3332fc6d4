package ui

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkPasswordVerify is the cost of one sign-in attempt (argon2id,
// 64 MiB): what the login rate limits and the two-at-a-time gate bound.
func BenchmarkPasswordVerify(b *testing.B) {
	h, err := HashPassword(testPassword)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := VerifyPassword(h, testPassword); !ok {
			b.Fatal("verify failed")
		}
	}
}

// BenchmarkSessionOverhead compares an API read served directly with the
// same read through the UI's session check (cookie HMAC, revocation
// lookup, headers), side by side.
func BenchmarkSessionOverhead(b *testing.B) {
	f := newFixture(b, Config{})
	c := f.client()
	f.login(c)
	req := httptest.NewRequest("GET", "/v1/nodes", nil)
	for _, ck := range c.Jar.Cookies(mustURL(f.http.URL)) {
		req.AddCookie(ck)
	}
	api := f.srv.cfg.API
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w := httptest.NewRecorder()
			api.ServeHTTP(w, req)
		}
	})
	b.Run("through-ui", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			w := httptest.NewRecorder()
			f.srv.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				b.Fatalf("status %d", w.Code)
			}
		}
	})
}

package ui

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

const testPassword = "abcde-fghjk-mnpqr-stuvw"

var (
	hashOnce sync.Once
	testHash string
)

func passwordHash(t testing.TB) string {
	hashOnce.Do(func() {
		var err error
		if testHash, err = HashPassword(testPassword); err != nil {
			panic(err)
		}
	})
	return testHash
}

// memAuthority keeps the credential in memory: these tests are about the
// HTTP layer; the Raft-backed one is exercised in ui/uitest.
type memAuthority struct {
	mu      sync.Mutex
	cred    Credential
	revoked []string
}

func (m *memAuthority) Credential() (Credential, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cred.PasswordHash == "" {
		return Credential{}, ErrNoCredential
	}
	c := m.cred
	c.Revoked = map[string]time.Time{}
	for _, id := range m.revoked {
		c.Revoked[id] = time.Now().Add(time.Hour)
	}
	return c, nil
}

func (m *memAuthority) RevokeSession(ctx context.Context, id string, until time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.revoked = append(m.revoked, id)
	return nil
}

func (m *memAuthority) rotate(t testing.TB) {
	key, err := NewSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.cred.SessionKey = key
	m.mu.Unlock()
}

type fixture struct {
	t     testing.TB
	srv   *Server
	http  *httptest.Server
	auth  *memAuthority
	mu    sync.Mutex
	calls []string // guarded by mu; what reached the API
	clock time.Time
	held  []time.Duration // guarded by mu; per-user delays, recorded instead of slept
}

func newFixture(t testing.TB, cfg Config) *fixture {
	t.Helper()
	key, err := NewSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, auth: &memAuthority{cred: Credential{PasswordHash: passwordHash(t), SessionKey: key}}, clock: time.Now()}
	cfg.API = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.calls = append(f.calls, r.Method+" "+r.URL.Path)
		f.mu.Unlock()
		w.Write([]byte(`{}`))
	})
	cfg.Auth = f.auth
	cfg.Node = "node0"
	cfg.Cluster = "c1"
	f.srv, err = New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	f.srv.now = func() time.Time {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.clock
	}
	f.srv.sleep = func(ctx context.Context, d time.Duration) bool {
		f.mu.Lock()
		f.held = append(f.held, d)
		f.mu.Unlock()
		return true
	}
	f.http = httptest.NewServer(f.srv)
	t.Cleanup(f.http.Close)
	return f
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	f.clock = f.clock.Add(d)
	f.mu.Unlock()
}

func (f *fixture) apiCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// client has a cookie jar and never follows redirects.
func (f *fixture) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

type resp struct {
	code int
	body string
	hdr  http.Header
	resp *http.Response
}

func (f *fixture) do(c *http.Client, method, path, body string, hdr map[string]string) resp {
	f.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.http.URL+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	r, err := c.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return resp{code: r.StatusCode, body: string(b), hdr: r.Header, resp: r}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func loginBody(user, pw string) string {
	b, _ := json.Marshal(LoginRequest{Username: user, Password: pw})
	return string(b)
}

// login signs c in and returns the CSRF token.
func (f *fixture) login(c *http.Client) string {
	f.t.Helper()
	r := f.do(c, "POST", "/ui/login", loginBody("admin", testPassword), nil)
	if r.code != 200 {
		f.t.Fatalf("login: %d %s", r.code, r.body)
	}
	var info SessionInfo
	if err := json.Unmarshal([]byte(r.body), &info); err != nil || info.CSRFToken == "" {
		f.t.Fatalf("login answer %q: %v", r.body, err)
	}
	return info.CSRFToken
}

func sessionCookie(t *testing.T, r *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range r.Cookies() {
		if c.Name == cookiePrefix+"_c1" {
			return c
		}
	}
	t.Fatalf("no %s_c1 cookie in %v", cookiePrefix, r.Header["Set-Cookie"])
	return nil
}

func TestLoginSetsStrictHttpOnlyCookie(t *testing.T) {
	f := newFixture(t, Config{})
	r := f.do(f.client(), "POST", "/ui/login", loginBody("admin", testPassword), nil)
	if r.code != 200 {
		t.Fatalf("login: %d %s", r.code, r.body)
	}
	c := sessionCookie(t, r.resp)
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.Path != "/" || c.MaxAge != int((12*time.Hour).Seconds()) {
		t.Errorf("cookie over plain HTTP: %+v", c)
	}

	// Over TLS (or behind a TLS terminator: Config.Secure) it is Secure.
	ts := httptest.NewTLSServer(f.srv)
	defer ts.Close()
	req, _ := http.NewRequest("POST", ts.URL+"/ui/login", strings.NewReader(loginBody("admin", testPassword)))
	req.Header.Set("Content-Type", "application/json")
	tr, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	tr.Body.Close()
	if c := sessionCookie(t, tr); !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("cookie over TLS: %+v", c)
	}
	fs := newFixture(t, Config{Secure: true})
	if c := sessionCookie(t, fs.do(fs.client(), "POST", "/ui/login", loginBody("admin", testPassword), nil).resp); !c.Secure {
		t.Errorf("Config.Secure: cookie not Secure: %+v", c)
	}
}

func TestLoginRejections(t *testing.T) {
	f := newFixture(t, Config{ClientBurst: 100, GlobalBurst: 100})
	c := f.client()
	cases := []struct {
		name, body string
		hdr        map[string]string
		code       int
		want       string
	}{
		{"wrong password", loginBody("admin", "nope"), nil, 401, "wrong user name or password"},
		{"wrong user", loginBody("root", testPassword), nil, 401, "wrong user name or password"},
		{"not json", "password=x", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"},
		{"malformed", "{", nil, 400, "malformed"},
		{"other origin", loginBody("admin", testPassword), map[string]string{"Origin": "http://evil.example"}, 403, "refused"},
		{"cross-site fetch", loginBody("admin", testPassword), map[string]string{"Sec-Fetch-Site": "cross-site"}, 403, "cross-site"},
	}
	for _, tc := range cases {
		r := f.do(c, "POST", "/ui/login", tc.body, tc.hdr)
		if r.code != tc.code || !strings.Contains(r.body, tc.want) {
			t.Errorf("%s: %d %s, want %d %q", tc.name, r.code, r.body, tc.code, tc.want)
		}
		if len(r.resp.Cookies()) != 0 {
			t.Errorf("%s: set a cookie", tc.name)
		}
	}
	signedIn := f.client()
	f.login(signedIn)
	f.auth.mu.Lock()
	hash := f.auth.cred.PasswordHash
	f.auth.cred.PasswordHash = ""
	f.auth.mu.Unlock()
	if r := f.do(c, "POST", "/ui/login", loginBody("admin", testPassword), nil); r.code != 503 || !strings.Contains(r.body, "not stored") {
		t.Errorf("before the credential is in the state: %d %s", r.code, r.body)
	}
	// A replica without the credential (yet) answers 503 and keeps the
	// browser's cookie: the session is not its to end.
	r := f.do(signedIn, "GET", "/v1/nodes", "", nil)
	if r.code != 503 || len(r.resp.Cookies()) != 0 {
		t.Errorf("session check without a credential: %d, cookies %v", r.code, r.resp.Cookies())
	}
	f.auth.mu.Lock()
	f.auth.cred.PasswordHash = hash
	f.auth.mu.Unlock()
	if r := f.do(signedIn, "GET", "/v1/nodes", "", nil); r.code != 200 {
		t.Errorf("session after the credential is back: %d", r.code)
	}
}

// Every page and API path of the contract, with and without a session.
var protectedAPI = []struct{ method, path string }{
	{"GET", "/v1/status"}, {"GET", "/v1/nodes"}, {"GET", "/v1/events?after=0&wait=30s"}, {"GET", "/v1/netcheck"},
	{"GET", "/v1/ping?node=x"}, {"POST", "/v1/tokens"}, {"DELETE", "/v1/nodes/node1"},
	{"GET", "/v1/cloud"}, {"POST", "/v1/cloud/connect"}, {"POST", "/v1/cloud/disconnect"},
	{"GET", "/v1/kube"}, {"PUT", "/v1/kube"}, {"GET", "/v1/catalog"}, {"GET", "/v1/services"},
	{"POST", "/v1/services"}, {"GET", "/v1/services/postgres-k9m3w?reveal=1"}, {"DELETE", "/v1/services/postgres-k9m3w"},
	{"GET", "/v1/apps"}, {"POST", "/v1/apps"}, {"GET", "/v1/apps/app-x"}, {"DELETE", "/v1/apps/app-x"},
	{"POST", "/v1/ui/reset-password"}, {"GET", "/v1/anything-else"},
}

func TestNothingWithoutSession(t *testing.T) {
	f := newFixture(t, Config{})
	c := f.client()
	for _, p := range protectedAPI {
		r := f.do(c, p.method, p.path, "", nil)
		if r.code != 401 || !strings.Contains(r.body, "not signed in") {
			t.Errorf("%s %s without a session: %d %s, want 401", p.method, p.path, r.code, r.body)
		}
	}
	if calls := f.apiCalls(); len(calls) != 0 {
		t.Fatalf("requests without a session reached the API: %v", calls)
	}
	// The app's page sends the browser to sign in; its scripts are refused.
	for _, page := range []string{"/", "/?x=1"} {
		r := f.do(c, "GET", page, "", nil)
		if r.code != http.StatusSeeOther || r.hdr.Get("Location") != "login" {
			t.Errorf("GET %s: %d Location %q, want 303 to login", page, r.code, r.hdr.Get("Location"))
		}
	}
	var scripts []string
	fs.WalkDir(Assets(), ".", func(p string, d fs.DirEntry, err error) error {
		if !d.IsDir() && !publicFiles[p] && p != "index.html" {
			scripts = append(scripts, "/"+p)
		}
		return nil
	})
	if len(scripts) < 7 {
		t.Fatalf("only %d private files: %v", len(scripts), scripts)
	}
	for _, p := range append(scripts, "/ui/session", "/no-such-file") {
		if r := f.do(c, "GET", p, "", nil); r.code != 401 {
			t.Errorf("GET %s without a session: %d, want 401", p, r.code)
		}
	}
	if r := f.do(c, "POST", "/ui/logout", "", nil); r.code != 401 {
		t.Errorf("logout without a session: %d", r.code)
	}
	// The sign-in page and what it loads are public.
	for _, p := range []string{"/login", "/login.js", "/style.css", "/favicon.svg"} {
		if r := f.do(c, "GET", p, "", nil); r.code != 200 {
			t.Errorf("GET %s: %d, want 200", p, r.code)
		}
	}
	// A forged or tampered cookie is no session either.
	u, _ := url.Parse(f.http.URL)
	c.Jar.SetCookies(u, []*http.Cookie{{Name: cookiePrefix + "_c1", Value: "v1.abc.99999999999.AAAA"}})
	if r := f.do(c, "GET", "/v1/nodes", "", nil); r.code != 401 {
		t.Errorf("forged cookie: %d", r.code)
	}
}

func TestSignedInPagesAndHeaders(t *testing.T) {
	f := newFixture(t, Config{})
	c := f.client()
	f.login(c)
	r := f.do(c, "GET", "/", "", nil)
	if r.code != 200 || !strings.Contains(r.body, `<base href="/">`) || !strings.Contains(r.body, `"node":"node0"`) {
		t.Fatalf("index: %d %s", r.code, r.body)
	}
	for _, h := range []string{"Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options"} {
		if r.hdr.Get(h) == "" {
			t.Errorf("index lacks %s", h)
		}
	}
	if r := f.do(c, "GET", "/js/app.js", "", nil); r.code != 200 || !strings.Contains(r.hdr.Get("Content-Type"), "javascript") {
		t.Errorf("app.js: %d %s", r.code, r.hdr.Get("Content-Type"))
	}
	if r := f.do(c, "GET", "/login", "", nil); r.code != http.StatusSeeOther {
		t.Errorf("login page while signed in: %d, want a redirect to the app", r.code)
	}
	if r := f.do(c, "GET", "/v1/nodes", "", nil); r.code != 200 {
		t.Errorf("GET /v1/nodes signed in: %d %s", r.code, r.body)
	}
}

func TestChangesNeedCSRFTokenAndSameOrigin(t *testing.T) {
	f := newFixture(t, Config{})
	c := f.client()
	csrf := f.login(c)
	cases := []struct {
		name string
		hdr  map[string]string
		code int
	}{
		{"no token", nil, 403},
		{"wrong token", map[string]string{"X-CSRF-Token": "x" + csrf}, 403},
		{"other origin", map[string]string{"X-CSRF-Token": csrf, "Origin": "http://evil.example"}, 403},
		{"cross-site", map[string]string{"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}, 403},
		{"same origin with token", map[string]string{"X-CSRF-Token": csrf, "Origin": f.http.URL, "Sec-Fetch-Site": "same-origin"}, 200},
	}
	for _, tc := range cases {
		for _, p := range []struct{ method, path string }{{"POST", "/v1/tokens"}, {"DELETE", "/v1/nodes/node1"}, {"PUT", "/v1/kube"}} {
			before := len(f.apiCalls())
			r := f.do(c, p.method, p.path, `{}`, tc.hdr)
			if r.code != tc.code {
				t.Errorf("%s: %s %s: %d %s, want %d", tc.name, p.method, p.path, r.code, r.body, tc.code)
			}
			if reached := len(f.apiCalls()) > before; reached != (tc.code == 200) {
				t.Errorf("%s: %s %s reached the API: %v", tc.name, p.method, p.path, reached)
			}
		}
	}
	// A token from another session does not fit this one.
	c2 := f.client()
	other := f.login(c2)
	if r := f.do(c, "POST", "/v1/tokens", `{}`, map[string]string{"X-CSRF-Token": other}); r.code != 403 {
		t.Errorf("another session's token: %d", r.code)
	}
	// Reads need no token; the password reset is never reachable here.
	if r := f.do(c, "GET", "/v1/status", "", nil); r.code != 200 {
		t.Errorf("GET without token: %d", r.code)
	}
	before := len(f.apiCalls())
	if r := f.do(c, "POST", "/v1/ui/reset-password", "", map[string]string{"X-CSRF-Token": csrf}); r.code != 403 || !strings.Contains(r.body, "unix socket") {
		t.Errorf("reset-password through the UI: %d %s", r.code, r.body)
	}
	if len(f.apiCalls()) != before {
		t.Error("reset-password reached the API through the UI")
	}
	if r := f.do(c, "POST", "/ui/logout", "", nil); r.code != 403 {
		t.Errorf("logout without token: %d", r.code)
	}
}

func TestLogoutRevokesAndResetEndsSessions(t *testing.T) {
	f := newFixture(t, Config{})
	a, b := f.client(), f.client()
	csrfA := f.login(a)
	f.login(b)
	// Keep a copy of a's cookie, as a thief would.
	u, _ := url.Parse(f.http.URL)
	stolen := a.Jar.Cookies(u)
	r := f.do(a, "POST", "/ui/logout", "", map[string]string{"X-CSRF-Token": csrfA})
	if r.code != 204 {
		t.Fatalf("logout: %d %s", r.code, r.body)
	}
	if c := sessionCookie(t, r.resp); c.MaxAge >= 0 && c.Value != "" {
		t.Errorf("logout did not clear the cookie: %+v", c)
	}
	thief := f.client()
	thief.Jar.SetCookies(u, stolen)
	if r := f.do(thief, "GET", "/v1/nodes", "", nil); r.code != 401 || !strings.Contains(r.body, "signed out") {
		t.Errorf("signed-out cookie: %d %s", r.code, r.body)
	}
	if r := f.do(b, "GET", "/v1/nodes", "", nil); r.code != 200 {
		t.Errorf("the other session ended too: %d", r.code)
	}
	// A password reset brings a new session key: every session ends.
	f.auth.rotate(t)
	if r := f.do(b, "GET", "/v1/nodes", "", nil); r.code != 401 {
		t.Errorf("session after reset: %d %s", r.code, r.body)
	}
	if r := f.do(b, "GET", "/", "", nil); r.code != http.StatusSeeOther {
		t.Errorf("page after reset: %d", r.code)
	}
}

func TestSessionExpires(t *testing.T) {
	f := newFixture(t, Config{SessionTTL: time.Hour})
	c := f.client()
	f.login(c)
	f.advance(59 * time.Minute)
	if r := f.do(c, "GET", "/v1/nodes", "", nil); r.code != 200 {
		t.Fatalf("before expiry: %d", r.code)
	}
	f.advance(2 * time.Minute)
	if r := f.do(c, "GET", "/v1/nodes", "", nil); r.code != 401 || !strings.Contains(r.body, "expired") {
		t.Fatalf("after expiry: %d %s", r.code, r.body)
	}
}

func TestLoginRateLimits(t *testing.T) {
	f := newFixture(t, Config{ClientBurst: 3, ClientEvery: 10 * time.Second, GlobalBurst: 5, GlobalEvery: 10 * time.Second})
	attempt := func(remote, pw string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/ui/login", strings.NewReader(loginBody("admin", pw)))
		req.Header.Set("Content-Type", "application/json")
		req.RemoteAddr = remote
		w := httptest.NewRecorder()
		f.srv.ServeHTTP(w, req)
		return w
	}
	for i := range 3 {
		if w := attempt("10.0.0.1:1000", "wrong"); w.Code != 401 {
			t.Fatalf("attempt %d: %d", i, w.Code)
		}
	}
	// The right password does not help once the client is over its limit.
	w := attempt("10.0.0.1:1001", testPassword)
	if w.Code != 429 || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "too many sign-in attempts from 10.0.0.1: try again in") {
		t.Fatalf("4th attempt: %d %q %s", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	// Another client still gets in, until the node-wide limit.
	if w := attempt("10.0.0.2:1000", testPassword); w.Code != 200 {
		t.Fatalf("other client: %d %s", w.Code, w.Body)
	}
	if w := attempt("10.0.0.3:1000", "wrong"); w.Code != 401 {
		t.Fatalf("third client: %d", w.Code)
	}
	w = attempt("10.0.0.4:1000", "wrong")
	if w.Code != 429 || !strings.Contains(w.Body.String(), "too many sign-in attempts on this node") {
		t.Fatalf("global limit: %d %s", w.Code, w.Body)
	}
	// The password this node has verified (for 10.0.0.2) gets in over
	// the spent budgets: whoever spent them cannot lock the admin out.
	if w := attempt("10.0.0.4:1001", testPassword); w.Code != 200 {
		t.Fatalf("known password over the global limit: %d %s", w.Code, w.Body)
	}
	if w := attempt("10.0.0.1:1002", testPassword); w.Code != 200 {
		t.Fatalf("known password over the client limit: %d %s", w.Code, w.Body)
	}
	// Buckets refill with time.
	f.advance(10 * time.Second)
	if w := attempt("10.0.0.1:1000", testPassword); w.Code != 200 {
		t.Fatalf("after refill: %d %s", w.Code, w.Body)
	}
}

func TestLimiterBoundsClients(t *testing.T) {
	l := newLimiter(2, time.Second, 10)
	now := time.Now()
	for i := range 100 {
		l.allow(string(rune('a'+i%26))+strings.Repeat("x", i), now)
	}
	if len(l.buckets) > 10 {
		t.Fatalf("%d buckets kept, want at most 10", len(l.buckets))
	}
}

func TestPasswordHashing(t *testing.T) {
	h := passwordHash(t)
	if !strings.HasPrefix(h, "$argon2id$v=19$m=65536,t=1,p=4$") {
		t.Fatalf("hash %q", h)
	}
	if ok, err := VerifyPassword(h, testPassword); !ok || err != nil {
		t.Fatalf("right password: %v %v", ok, err)
	}
	if ok, err := VerifyPassword(h, testPassword+"x"); ok || err != nil {
		t.Fatalf("wrong password: %v %v", ok, err)
	}
	for _, bad := range []string{"", "plain", "$argon2i$v=19$m=65536,t=1,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=99999999,t=1,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "$argon2id$v=19$m=65536,t=1,p=4$!!$aGFzaA"} {
		if _, err := VerifyPassword(bad, "x"); !errors.Is(err, errBadHash) {
			t.Errorf("VerifyPassword(%q): %v, want errBadHash", bad, err)
		}
	}
	seen := map[string]bool{}
	for range 20 {
		p, err := NewPassword()
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`^[a-z2-9]{5}(-[a-z2-9]{5}){3}$`).MatchString(p) || strings.ContainsAny(p, "01ilo") {
			t.Fatalf("password %q", p)
		}
		if seen[p] {
			t.Fatal("repeated password")
		}
		seen[p] = true
	}
}

func TestIndexIsBasePathAware(t *testing.T) {
	var b strings.Builder
	if err := RenderIndex(&b, PageConfig{Base: "/clusters/c1/", Mode: "cloud"}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{`<base href="/clusters/c1/">`, `"base":"/clusters/c1/"`, `"mode":"cloud"`, `src="js/app.js"`, `href="style.css"`} {
		if !strings.Contains(out, want) {
			t.Errorf("index lacks %s:\n%s", want, out)
		}
	}
	if err := RenderIndex(io.Discard, PageConfig{Base: "/clusters/c1"}); err == nil {
		t.Error("a base without a trailing slash was accepted")
	}
	// No file may reach the API or its assets by an absolute path: the
	// cloud console serves them under /clusters/ID/.
	abs := regexp.MustCompile(`['"\x60]/(v1|ui|js|login|style)`)
	fs.WalkDir(Assets(), ".", func(p string, d fs.DirEntry, err error) error {
		if d.IsDir() {
			return nil
		}
		b, _ := fs.ReadFile(Assets(), p)
		if m := abs.Find(b); m != nil {
			t.Errorf("%s uses an absolute path: %s", p, m)
		}
		return nil
	})
}

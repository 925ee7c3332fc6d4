// Package ui is the web UI every agent serves (and the cloud console serves
// for a chosen cluster): static files embedded with go:embed (no Node.js to
// build, no CDN at run time) and the session layer in front of the local
// API. The page is a thin client of the same /v1 endpoints the CLI uses.
//
// Auth: one admin credential (argon2id hash) and a session key live in the
// Raft state; the session cookie is signed with that key, so it works on
// every node and a password reset ends every session everywhere. Changes
// need the session's CSRF token in a header and a same-origin request.
package ui

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// Assets are the UI's static files (the cloud console serves them too).
func Assets() fs.FS {
	f, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	return f
}

// ErrNoCredential means the cluster has not stored an admin credential yet
// (right after init, before the first leader applied it).
var ErrNoCredential = errors.New("the cluster has not stored the UI admin credential yet; try again in a few seconds")

// Credential is what the Authority keeps in the cluster state.
type Credential struct {
	PasswordHash string
	SessionKey   []byte               // unsealed
	Revoked      map[string]time.Time // signed-out session IDs
}

// Authority reads the credential from, and records sign-outs in, the
// cluster state.
type Authority interface {
	Credential() (Credential, error)
	RevokeSession(ctx context.Context, id string, until time.Time) error
}

// Config configures the UI server.
type Config struct {
	API     http.Handler // the local API, mounted under /v1/ behind the session
	Auth    Authority
	Node    string // this node's name, shown in the page
	Cluster string // the cluster's ID, part of the cookie's name
	// Mode is "agent" (default) or "cloud": the cloud console serves the
	// same app for each cluster (under StripBase) with pages that need a
	// node of their own hidden.
	Mode string
	// Secure marks cookies Secure even on plain HTTP (the server sits behind
	// a TLS terminator). Requests that arrive over TLS always get it.
	Secure     bool
	SessionTTL time.Duration // default 12h
	// Login limits: a client gets ClientBurst attempts, then one per
	// ClientEvery; the whole node GlobalBurst, then one per GlobalEvery.
	ClientBurst int
	ClientEvery time.Duration
	GlobalBurst int
	GlobalEvery time.Duration
	// Per-user limit: past UserFreeFailures recent failures for a user
	// name (forgiven one per UserForgive), each attempt for it is held
	// from 250 ms doubling up to UserMaxDelay before it is checked. It
	// never refuses. Defaults 5, 2 s, 1 min.
	UserFreeFailures int
	UserMaxDelay     time.Duration
	UserForgive      time.Duration
}

// Server is the UI's HTTP handler.
type Server struct {
	cfg    Config
	log    *slog.Logger
	mux    *http.ServeMux
	index  *template.Template
	login  *template.Template
	files  fs.FS
	client *limiter
	global *limiter
	users  *penalty
	known  *knownGood
	// sleep holds an attempt for the per-user delay; false if the client
	// went away meanwhile. Tests replace it.
	sleep func(ctx context.Context, d time.Duration) bool
	// hashing bounds concurrent argon2 runs (64 MiB each).
	hashing chan struct{}
	now     func() time.Time
	cookie  string // the session cookie's name
}

// cookiePrefix names the session cookie; the cluster ID follows, because
// browsers send a cookie for 127.0.0.1 to every port: two clusters' UIs on
// one machine (or one SSH-tunnelled port used for several) keep apart.
const cookiePrefix = "runos_session"

// Files anyone may fetch: the sign-in page needs them.
var publicFiles = map[string]bool{"login.html": true, "login.js": true, "style.css": true, "favicon.svg": true}

// New builds the UI server.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if cfg.API == nil || cfg.Auth == nil {
		return nil, errors.New("ui: API and Auth are required")
	}
	if log == nil {
		return nil, errors.New("ui: logger is required")
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.ClientBurst <= 0 {
		cfg.ClientBurst = 5
	}
	if cfg.ClientEvery <= 0 {
		cfg.ClientEvery = 12 * time.Second
	}
	if cfg.GlobalBurst <= 0 {
		cfg.GlobalBurst = 20
	}
	if cfg.GlobalEvery <= 0 {
		cfg.GlobalEvery = 2 * time.Second
	}
	if cfg.UserFreeFailures <= 0 {
		cfg.UserFreeFailures = 5
	}
	if cfg.UserMaxDelay <= 0 {
		cfg.UserMaxDelay = 2 * time.Second
	}
	if cfg.UserForgive <= 0 {
		cfg.UserForgive = time.Minute
	}
	switch cfg.Mode {
	case "":
		cfg.Mode = "agent"
	case "agent", "cloud":
	default:
		return nil, fmt.Errorf("ui: unknown mode %q (agent or cloud)", cfg.Mode)
	}
	index, err := template.ParseFS(static, "static/index.html")
	if err != nil {
		return nil, err
	}
	login, err := template.ParseFS(static, "static/login.html")
	if err != nil {
		return nil, err
	}
	known, err := newKnownGood()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: log, mux: http.NewServeMux(), index: index, login: login, files: Assets(),
		client:  newLimiter(cfg.ClientBurst, cfg.ClientEvery, 4096),
		global:  newLimiter(cfg.GlobalBurst, cfg.GlobalEvery, 1),
		users:   newPenalty(cfg.UserFreeFailures, 250*time.Millisecond, cfg.UserMaxDelay, cfg.UserForgive),
		known:   known,
		sleep:   sleepCtx,
		hashing: make(chan struct{}, 2),
		now:     time.Now,
		cookie:  cookiePrefix,
	}
	if cfg.Cluster != "" {
		s.cookie += "_" + cfg.Cluster
	}
	s.mux.HandleFunc("GET /{$}", s.handleIndex)
	s.mux.HandleFunc("GET /index.html", func(w http.ResponseWriter, r *http.Request) {
		redirect(w, "./")
	})
	s.mux.HandleFunc("GET /login", s.handleLoginPage)
	s.mux.HandleFunc("POST /ui/login", s.handleLogin)
	s.mux.HandleFunc("POST /ui/logout", s.handleLogout)
	s.mux.HandleFunc("GET /ui/session", s.handleSession)
	s.mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		jsonError(w, http.StatusNotFound, "no such UI endpoint")
	})
	s.mux.HandleFunc("/v1/", s.handleAPI)
	s.mux.HandleFunc("/", s.handleFile)
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	s.mux.ServeHTTP(w, r)
}

func jsonError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// authenticate returns the request's valid session and the key it is
// signed with.
func (s *Server) authenticate(r *http.Request) (session, []byte, error) {
	c, err := r.Cookie(s.cookie)
	if err != nil || c.Value == "" {
		return session{}, nil, errNoSession
	}
	cred, err := s.cfg.Auth.Credential()
	if err != nil {
		return session{}, nil, err
	}
	sess, err := parseSession(c.Value, cred.SessionKey, s.now())
	if err != nil {
		return session{}, nil, err
	}
	if _, revoked := cred.Revoked[sess.ID]; revoked {
		return session{}, nil, errSessionEnded
	}
	return sess, cred.SessionKey, nil
}

// sameOrigin refuses what a browser marks as coming from another site.
// Requests without Origin (curl, the cloud console's server side) still
// need the CSRF token.
func sameOrigin(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return fmt.Errorf("cross-site request refused (Sec-Fetch-Site: %s)", site)
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return fmt.Errorf("request from origin %q refused: this UI is %s", o, r.Host)
		}
	}
	return nil
}

func isChange(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

// guard checks session, and for changes origin and CSRF token; it answers
// the request itself when they fail.
func (s *Server) guard(w http.ResponseWriter, r *http.Request) (session, []byte, bool) {
	sess, key, err := s.authenticate(r)
	if err != nil {
		// A dead cookie goes; one that cannot be checked right now (no
		// credential on this replica yet) stays.
		if errors.Is(err, errSessionEnded) || errors.Is(err, errSessionExpired) {
			s.clearCookie(w, r)
		}
		code := http.StatusUnauthorized
		if errors.Is(err, ErrNoCredential) {
			code = http.StatusServiceUnavailable
		} else if !errors.Is(err, errNoSession) && !errors.Is(err, errSessionExpired) && !errors.Is(err, errSessionEnded) {
			s.log.Warn("ui: cannot check session", "err", err)
			code = http.StatusServiceUnavailable
		}
		jsonError(w, code, err.Error())
		return session{}, nil, false
	}
	if isChange(r.Method) {
		if err := sameOrigin(r); err != nil {
			jsonError(w, http.StatusForbidden, err.Error())
			return session{}, nil, false
		}
		if !sess.checkCSRF(key, r.Header.Get("X-CSRF-Token")) {
			jsonError(w, http.StatusForbidden, "missing or wrong X-CSRF-Token header (reload the page)")
			return session{}, nil, false
		}
	}
	return sess, key, true
}

func (s *Server) handleAPI(w http.ResponseWriter, r *http.Request) {
	if _, _, ok := s.guard(w, r); !ok {
		return
	}
	// UI administration (password reset) is for the machine's owner on the
	// unix socket only.
	if strings.HasPrefix(r.URL.Path, "/v1/ui/") {
		jsonError(w, http.StatusForbidden, "this endpoint is only on the agent's unix socket: use `runos-agent ui` on the node")
		return
	}
	s.cfg.API.ServeHTTP(w, r)
}

// PageConfig is what the page learns from the server that serves it.
type PageConfig struct {
	// Base is the path the app is served under, ending in "/" ("/" on an
	// agent, "/clusters/ID/" in the cloud console). Every URL the page uses
	// (files, ui/…, v1/…) is relative to it.
	Base string `json:"base"`
	// Mode is "agent" or "cloud".
	Mode string `json:"mode"`
	// Node is the serving agent's name ("" in the cloud console).
	Node string `json:"node"`
	// LoginURL is where a page without a session goes (relative to Base).
	LoginURL string `json:"login_url"`
}

// RenderIndex writes the app's page for pc (the cloud console calls it with
// its own base path).
func RenderIndex(w io.Writer, pc PageConfig) error {
	t, err := template.ParseFS(static, "static/index.html")
	if err != nil {
		return err
	}
	return renderIndex(t, w, pc)
}

func renderIndex(t *template.Template, w io.Writer, pc PageConfig) error {
	if pc.Base == "" || !strings.HasSuffix(pc.Base, "/") {
		return fmt.Errorf("ui: base %q must end in /", pc.Base)
	}
	if pc.LoginURL == "" {
		pc.LoginURL = "login"
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, pc); err != nil {
		return err
	}
	_, err := w.Write(buf.Bytes())
	return err
}

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	if _, _, err := s.authenticate(r); err != nil {
		// Relative, so it works under any base path; the browser keeps the
		// #/page fragment across the redirect.
		redirect(w, "login")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := renderIndex(s.index, w, PageConfig{Base: baseOf(r), Mode: s.cfg.Mode, Node: s.cfg.Node}); err != nil {
		s.log.Error("ui: render index", "err", err)
	}
}

// redirect sends a relative Location (http.Redirect would make it absolute),
// so the app works under any base path.
func redirect(w http.ResponseWriter, to string) {
	w.Header().Set("Location", to)
	w.WriteHeader(http.StatusSeeOther)
}

func (s *Server) handleLoginPage(w http.ResponseWriter, r *http.Request) {
	if _, _, err := s.authenticate(r); err == nil {
		redirect(w, "./")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	var buf bytes.Buffer
	if err := s.login.Execute(&buf, PageConfig{Base: baseOf(r), Mode: s.cfg.Mode}); err != nil {
		s.log.Error("ui: render sign-in page", "err", err)
		jsonError(w, http.StatusInternalServerError, "cannot render the sign-in page")
		return
	}
	w.Write(buf.Bytes())
}

func (s *Server) handleFile(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if _, _, err := s.authenticate(r); err != nil {
			jsonError(w, http.StatusUnauthorized, err.Error())
			return
		}
		jsonError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	name := strings.TrimPrefix(path.Clean(r.URL.Path), "/")
	if name == "login.html" {
		// A template: the sign-in page is at login.
		redirect(w, "login")
		return
	}
	if !publicFiles[name] {
		if _, _, err := s.authenticate(r); err != nil {
			jsonError(w, http.StatusUnauthorized, err.Error())
			return
		}
	}
	s.serveFile(w, r, name)
}

func (s *Server) serveFile(w http.ResponseWriter, r *http.Request, name string) {
	if name == "index.html" || name == "" {
		http.NotFound(w, r)
		return
	}
	f, err := s.files.Open(name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.IsDir() {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, name, time.Time{}, f.(io.ReadSeeker))
}

// LoginRequest is POST ui/login.
type LoginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// SessionInfo answers ui/login and ui/session.
type SessionInfo struct {
	User      string    `json:"user"`
	CSRFToken string    `json:"csrf_token"`
	ExpiresAt time.Time `json:"expires_at"`
	Node      string    `json:"node"`
}

func clientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	if err := sameOrigin(r); err != nil {
		jsonError(w, http.StatusForbidden, err.Error())
		return
	}
	// A cross-site form cannot send JSON without a CORS preflight.
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		jsonError(w, http.StatusUnsupportedMediaType, "send the sign-in as application/json")
		return
	}
	var req LoginRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
		jsonError(w, http.StatusBadRequest, "malformed sign-in request")
		return
	}
	client := clientKey(r)
	// The per-user delay comes first and holds every attempt past the
	// free failures, the admin's too: never a refusal (see penalty).
	if d := s.users.delay(req.Username, s.now()); d > 0 && !s.sleep(r.Context(), d) {
		return
	}
	now := s.now()
	cred, err := s.cfg.Auth.Credential()
	if err != nil {
		jsonError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	// The per-IP and node-wide budgets bound argon2 runs. The password
	// this process already verified needs no argon2, so it gets in when
	// they are spent: whoever spent them (every local user shares
	// 127.0.0.1 with the admin) does not lock the admin out. A guess while
	// they are spent is still a guess, held by the per-user delay above.
	if req.Username != AdminUser || !s.known.match(cred.PasswordHash, req.Password) {
		if ok, wait := s.client.allow(client, now); !ok {
			s.users.fail(req.Username, now)
			s.tooMany(w, wait, fmt.Sprintf("too many sign-in attempts from %s", client))
			return
		}
		if ok, wait := s.global.allow("", now); !ok {
			s.users.fail(req.Username, now)
			s.tooMany(w, wait, "too many sign-in attempts on this node")
			return
		}
		ok, err := s.verify(r.Context(), cred.PasswordHash, req.Password)
		if err != nil {
			if r.Context().Err() == nil {
				s.log.Error("ui: stored admin hash", "err", err)
				jsonError(w, http.StatusInternalServerError, "the stored admin credential is unreadable: reset it with `runos-agent ui reset-password`")
			}
			return
		}
		if !ok || req.Username != AdminUser {
			s.users.fail(req.Username, now)
			s.log.Info("ui: failed sign-in", "client", client)
			jsonError(w, http.StatusUnauthorized, "wrong user name or password")
			return
		}
		s.known.remember(cred.PasswordHash, req.Password)
	}
	s.users.succeed(req.Username)
	sess, err := newSession(s.cfg.SessionTTL, now)
	if err != nil {
		jsonError(w, http.StatusInternalServerError, err.Error())
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: s.cookie, Value: sess.encode(cred.SessionKey), Path: "/",
		Expires: sess.Expires, MaxAge: int(s.cfg.SessionTTL / time.Second),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: s.secure(r),
	})
	s.log.Info("ui: signed in", "client", client)
	writeJSON(w, SessionInfo{User: AdminUser, CSRFToken: sess.csrfToken(cred.SessionKey), ExpiresAt: sess.Expires, Node: s.cfg.Node})
}

// verify runs argon2 for one attempt, at most two at a time (64 MiB each).
func (s *Server) verify(ctx context.Context, hash, password string) (bool, error) {
	select {
	case s.hashing <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-s.hashing }()
	return VerifyPassword(hash, password)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *Server) tooMany(w http.ResponseWriter, wait time.Duration, what string) {
	secs := int(wait.Seconds()) + 1
	w.Header().Set("Retry-After", fmt.Sprint(secs))
	jsonError(w, http.StatusTooManyRequests, fmt.Sprintf("%s: try again in %d s", what, secs))
}

func (s *Server) secure(r *http.Request) bool { return s.cfg.Secure || r.TLS != nil }

func (s *Server) clearCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: s.cookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: s.secure(r)})
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
	sess, _, ok := s.guard(w, r)
	if !ok {
		return
	}
	s.clearCookie(w, r)
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	// Recorded in Raft so a copied cookie is dead on every node too.
	if err := s.cfg.Auth.RevokeSession(ctx, sess.ID, sess.Expires); err != nil {
		jsonError(w, http.StatusServiceUnavailable, "signed out in this browser, but the cluster could not record it: "+err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleSession(w http.ResponseWriter, r *http.Request) {
	sess, key, ok := s.guard(w, r)
	if !ok {
		return
	}
	writeJSON(w, SessionInfo{User: AdminUser, CSRFToken: sess.csrfToken(key), ExpiresAt: sess.Expires, Node: s.cfg.Node})
}

type baseKey struct{}

// StripBase serves h under base (e.g. "/clusters/ID/"): the prefix is cut
// from the path, as http.StripPrefix does, and the page is told its base.
// The cloud console mounts one Server per console this way for every
// cluster.
func StripBase(base string, h http.Handler) http.Handler {
	prefix := strings.TrimSuffix(base, "/")
	strip := http.StripPrefix(prefix, h)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		strip.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), baseKey{}, base)))
	})
}

// baseOf is the path the app is served under for r.
func baseOf(r *http.Request) string {
	if b, ok := r.Context().Value(baseKey{}).(string); ok && b != "" {
		return b
	}
	return "/"
}

// Protect puts h behind the same checks as the UI's own API: a valid
// session, and for changes a same-origin request with the CSRF token. The
// cloud console guards its JSON API with it.
func (s *Server) Protect(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, _, ok := s.guard(w, r); !ok {
			return
		}
		h.ServeHTTP(w, r)
	})
}

// SignedIn says whether r carries a valid session (for pages outside the
// app, such as the cloud console's cluster list).
func (s *Server) SignedIn(r *http.Request) bool {
	_, _, err := s.authenticate(r)
	return err == nil
}

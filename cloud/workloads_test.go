package cloud

import (
	"strings"
	"testing"
)

// The console's services and apps paths: session and CSRF like the rest,
// reads from the mirror, writes as commands, bad input refused at once,
// no credentials.
func TestConsoleWorkloads(t *testing.T) {
	s := newServer(t)
	register(t, s, "a")
	reads := map[string]string{
		"/clusters/a/v1/catalog":                 `"name":"postgres"`,
		"/clusters/a/v1/services":                "[]",
		"/clusters/a/v1/services?type=redis":     "[]",
		"/clusters/a/v1/apps":                    "[]",
		"/clusters/a/v1/services/postgres-aaaaa": "no such service",
		"/clusters/a/v1/apps/web-aaaaa":          "no such service or app",
		"/clusters/zz/v1/services":               "no such cluster",
		"/clusters/a/v1/services/x?reveal=1":     "credentials stay in the cluster",
		"/clusters/zz/v1/catalog":                "no such cluster",
		"/clusters/a/js/pages/services.js":       "credentials stay in the cluster",
	}
	for path := range reads {
		if code, _ := consoleDo(t, s, "GET", path, "", "", ""); code != 401 {
			t.Errorf("GET %s without a session: %d", path, code)
		}
	}
	cookie, csrf := consoleLogin(t, s)
	for path, want := range reads {
		if _, body := consoleDo(t, s, "GET", path, cookie, "", ""); !strings.Contains(strings.ToLower(body), strings.ToLower(want)) {
			t.Errorf("GET %s: %s, want %q", path, body, want)
		}
	}
	if code, body := consoleDo(t, s, "GET", "/clusters/a/v1/services/x?reveal=1", cookie, "", ""); code != 403 {
		t.Errorf("reveal: %d %s", code, body)
	}
	writes := []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "/clusters/a/v1/services", `{"service":"postgres","tier":"ha","set":{"storage":"5Gi"}}`, 202, `"kind":"deploy_service"`},
		{"POST", "/clusters/a/v1/services", `{"service":"oracle"}`, 400, `unknown service \"oracle\"`},
		{"POST", "/clusters/a/v1/services", `{"service":`, 400, "malformed request"},
		{"DELETE", "/clusters/a/v1/services/postgres-aaaaa", ``, 202, `"kind":"delete_service"`},
		{"POST", "/clusters/a/v1/apps", `{"name":"web","image":"nginx","use":["postgres-aaaaa"]}`, 202, `"kind":"deploy_app"`},
		{"POST", "/clusters/a/v1/apps", `{"name":"web"}`, 400, "needs a name and an image"},
		{"DELETE", "/clusters/a/v1/apps/web-aaaaa", ``, 202, `"kind":"delete_app"`},
		{"POST", "/clusters/zz/v1/services", `{"service":"postgres"}`, 404, "no such cluster"},
	}
	for _, w := range writes {
		// (An unknown cluster is a 404 before anything else.)
		if code, _ := consoleDo(t, s, w.method, w.path, cookie, "", w.body); code != 403 && !strings.HasPrefix(w.path, "/clusters/zz/") {
			t.Errorf("%s %s without CSRF: %d", w.method, w.path, code)
		}
		if code, body := consoleDo(t, s, w.method, w.path, cookie, csrf, w.body); code != w.code || !strings.Contains(body, w.want) {
			t.Errorf("%s %s %s: %d %s, want %d %q", w.method, w.path, w.body, code, body, w.code, w.want)
		}
	}
	cmds, _ := s.store.commands(mustCluster(t, s, "a"))
	kinds := []string{}
	for _, c := range cmds {
		kinds = append(kinds, c.Kind+" "+string(c.Args))
	}
	if len(cmds) != 4 || !strings.Contains(strings.Join(kinds, "\n"), `deploy_service {"service":"postgres","tier":"ha","set":{"storage":"5Gi"}}`) ||
		!strings.Contains(strings.Join(kinds, "\n"), `delete_app {"osid":"web-aaaaa"}`) {
		t.Errorf("commands recorded: %v", kinds)
	}
}

func mustCluster(t *testing.T, s *Server, ref string) string {
	t.Helper()
	c, err := s.store.findCluster(ref)
	if err != nil {
		t.Fatal(err)
	}
	return c.ID
}

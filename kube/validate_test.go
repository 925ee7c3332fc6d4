package kube_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/kube/kubetest"
)

// kubeconfigWithUser is a kubeconfig for server whose one user is user
// (YAML, indented to sit under "user:").
func kubeconfigWithUser(server, user string) []byte {
	return []byte("apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: " + server +
		"\nusers:\n- name: u\n  user:\n" + user + "contexts:\n- name: k\n  context:\n    cluster: k\n    user: u\ncurrent-context: k\n")
}

// Attack: a kubeconfig whose user is an exec credential plugin runs that
// command as the agent (root) the first time the cluster is contacted. It
// must be refused where it enters (kube.New and Load, which the
// local API's `kube set` and the reconciler both go through), and the
// plugin must never run.
func TestAttackExecKubeconfigRefused(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "pwned")
	plugin := filepath.Join(dir, "plugin.sh")
	script := "#!/bin/sh\ntouch " + marker + "\n" +
		`echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"x"}}'` + "\n"
	if err := os.WriteFile(plugin, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"major":"1","minor":"34"}`))
	}))
	t.Cleanup(srv.Close)
	kc := kubeconfigWithUser(srv.URL+"\n    insecure-skip-tls-verify: true", "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: "+plugin+"\n      interactiveMode: Never\n")

	_, verr := kube.Load(kc)
	e, err := kube.New(kube.Config{Kubeconfig: kc}, logger())
	if err == nil {
		ctx := kubetest.Context(t, 30*time.Second)
		e.Ping(ctx)
		e.Close()
	}
	if _, serr := os.Stat(marker); serr == nil {
		t.Errorf("the exec plugin ran (%s exists)", marker)
	}
	for _, err := range []error{verr, err} {
		if !errors.Is(err, kube.ErrUnsafeKubeconfig) || !strings.Contains(err.Error(), "exec") {
			t.Errorf("exec kubeconfig: err = %v, want ErrUnsafeKubeconfig naming exec", err)
		}
	}
}

// auth-provider users (gcp, oidc, azure plugins) run code or fetch tokens
// on the agent's behalf too; refused alike. Certificates, tokens and basic
// auth stay accepted.
func TestKubeconfigUsers(t *testing.T) {
	for _, tc := range []struct {
		user string
		ok   bool
	}{
		{"    auth-provider:\n      name: oidc\n      config:\n        idp-issuer-url: https://example.invalid\n", false},
		{"    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/true\n", false},
		{"    tokenFile: /etc/shadow\n", false},
		{"    client-certificate: /etc/ssl/private/x.pem\n    client-key: /etc/ssl/private/x.key\n", false},
		{"    token: abc\n", true},
		{"    username: a\n    password: b\n", true},
		{"    {}\n", true},
	} {
		_, err := kube.Load(kubeconfigWithUser("https://127.0.0.1:6443", tc.user))
		if tc.ok != (err == nil) {
			t.Errorf("user %q: err = %v, want ok=%v", tc.user, err, tc.ok)
		}
		if !tc.ok && !errors.Is(err, kube.ErrUnsafeKubeconfig) {
			t.Errorf("user %q: err = %v, want ErrUnsafeKubeconfig", tc.user, err)
		}
	}
}

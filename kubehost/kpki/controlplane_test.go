package kpki_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/runos/runos-agent/freeport"
	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/kube/kubetest"
	"github.com/runos/runos-agent/kubehost/kpki"
)

// The PKI against the real thing: etcd with mutual TLS on client and peer
// ports (etcd CA), kube-apiserver talking to it with its etcd client
// certificate, serving with its serving certificate, trusting the
// Kubernetes CA for clients and signing service-account tokens with the SA
// key. Each role's client certificate must then authenticate as exactly the
// identity the RBAC bootstrap policy expects.
func TestRealControlPlaneAcceptsPKI(t *testing.T) {
	requireControlPlane(t)
	etcdBin, _ := exec.LookPath("etcd")
	apiBin := filepath.Join(kubetest.BinDir(), "kube-apiserver")

	c := newCAs(t)
	lo := netip.MustParseAddr("127.0.0.1")
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	issueFiles := func(ca *kpki.CA, base string, r kpki.Request) (string, string) {
		certPEM, keyPEM, err := ca.Issue(r)
		if err != nil {
			t.Fatal(err)
		}
		return write(base+".crt", certPEM), write(base+".key", keyPEM)
	}
	kubeCAFile := write("ca.crt", c.kube.CertPEM)
	etcdCAFile := write("etcd-ca.crt", c.etcd.CertPEM)
	saKey, saPub, err := kpki.NewServiceAccountKey()
	if err != nil {
		t.Fatal(err)
	}
	saKeyFile, saPubFile := write("sa.key", saKey), write("sa.pub", saPub)

	etcdSrvCrt, etcdSrvKey := issueFiles(c.etcd, "etcd-server", kpki.EtcdServer("n1", lo))
	etcdPeerCrt, etcdPeerKey := issueFiles(c.etcd, "etcd-peer", kpki.EtcdPeer("n1", lo))
	clientURL := fmt.Sprintf("https://127.0.0.1:%d", freeport.For(t))
	peerURL := fmt.Sprintf("https://127.0.0.1:%d", freeport.For(t))
	startProc(t, dir, "etcd", etcdBin,
		"--name", "n1",
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", clientURL,
		"--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "n1="+peerURL,
		"--client-cert-auth", "--trusted-ca-file", etcdCAFile,
		"--cert-file", etcdSrvCrt, "--key-file", etcdSrvKey,
		"--peer-client-cert-auth", "--peer-trusted-ca-file", etcdCAFile,
		"--peer-cert-file", etcdPeerCrt, "--peer-key-file", etcdPeerKey,
		"--logger", "zap", "--log-level", "warn",
	)

	// The agent's etcd client through etcd's JSON gateway, as etcdm uses
	// it: the gateway re-dials etcd's own port with the server certificate
	// as its client certificate, so this also proves that one's usages.
	agentCrt, agentKey, err := c.etcd.Issue(kpki.EtcdAgentClient())
	if err != nil {
		t.Fatal(err)
	}
	agentPair, err := tls.X509KeyPair(agentCrt, agentKey)
	if err != nil {
		t.Fatal(err)
	}
	etcdClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool(c.etcd), Certificates: []tls.Certificate{agentPair},
	}}}
	t.Cleanup(etcdClient.CloseIdleConnections)
	waitOK(t, etcdClient, clientURL+"/health")
	if out := do(t, etcdClient, http.MethodPost, clientURL+"/v3/cluster/member/list", "{}", ""); !strings.Contains(string(out), peerURL) {
		t.Errorf("member list through the gateway lacks %s: %s", peerURL, out)
	}

	apiCrt, apiKey := issueFiles(c.kube, "apiserver", kpki.APIServerServing(lo, serviceIP, "cluster.local"))
	apiEtcdCrt, apiEtcdKey := issueFiles(c.etcd, "apiserver-etcd-client", kpki.APIServerEtcdClient())
	apiKubeletCrt, apiKubeletKey := issueFiles(c.kube, "apiserver-kubelet-client", kpki.APIServerKubeletClient())
	apiPort := freeport.For(t)
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	api := startProc(t, dir, "kube-apiserver", apiBin,
		"--etcd-servers", clientURL,
		"--etcd-cafile", etcdCAFile, "--etcd-certfile", apiEtcdCrt, "--etcd-keyfile", apiEtcdKey,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", fmt.Sprint(apiPort),
		"--tls-cert-file", apiCrt, "--tls-private-key-file", apiKey,
		"--client-ca-file", kubeCAFile,
		"--kubelet-client-certificate", apiKubeletCrt, "--kubelet-client-key", apiKubeletKey,
		"--kubelet-certificate-authority", kubeCAFile,
		"--authorization-mode", "Node,RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", saPubFile,
		"--service-account-signing-key-file", saKeyFile,
		"--service-cluster-ip-range", "10.96.0.0/12",
		"--endpoint-reconciler-type", "none",
		"--profiling=false",
		"--cert-dir", filepath.Join(dir, "certs"),
		"-v=1",
	)

	admin := clientFor(t, server, c, kpki.Admin("runos-admin"))
	waitReady(t, admin, server, api)

	for _, tc := range []struct {
		req    kpki.Request
		user   string
		groups []string
	}{
		{kpki.Admin("runos-admin"), "runos-admin", []string{"system:masters"}},
		{kpki.KubeletClient("n1"), "system:node:n1", []string{"system:nodes"}},
		{kpki.KubeProxy(), "system:kube-proxy", []string{"system:node-proxier"}},
		{kpki.ControllerManager(), "system:kube-controller-manager", nil},
		{kpki.Scheduler(), "system:kube-scheduler", nil},
		{kpki.APIServerKubeletClient(), "kube-apiserver-kubelet-client", []string{"system:masters"}},
	} {
		user, groups := whoami(t, clientFor(t, server, c, tc.req), server, "")
		if user != tc.user {
			t.Errorf("%s: apiserver sees user %q", tc.req.CommonName, user)
		}
		for _, g := range append(tc.groups, "system:authenticated") {
			if !slices.Contains(groups, g) {
				t.Errorf("%s: groups %q lack %q", tc.req.CommonName, groups, g)
			}
		}
	}

	// An etcd-CA client certificate is no Kubernetes identity.
	etcdAsKube := clientFor(t, server, c, kpki.EtcdAgentClient(), c.etcd)
	if resp, err := etcdAsKube.Get(server + "/api/v1/namespaces"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("etcd-CA client certificate: %s, want 401", resp.Status)
		}
	}

	// The SA key signs tokens the apiserver accepts back.
	do(t, admin, http.MethodPost, server+"/api/v1/namespaces/default/serviceaccounts",
		`{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"probe"}}`, "")
	var tr struct {
		Status struct{ Token string } `json:"status"`
	}
	json.Unmarshal(do(t, admin, http.MethodPost, server+"/api/v1/namespaces/default/serviceaccounts/probe/token",
		`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":600}}`, ""), &tr)
	if tr.Status.Token == "" {
		t.Fatal("no service-account token issued")
	}
	// Without a client certificate: the apiserver tries x509 before tokens.
	anon, err := rest.HTTPClientFor(&rest.Config{Host: server, TLSClientConfig: rest.TLSClientConfig{CAData: c.kube.CertPEM}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(anon.CloseIdleConnections)
	if user, _ := whoami(t, anon, server, tr.Status.Token); user != "system:serviceaccount:default:probe" {
		t.Errorf("service-account token authenticates as %q", user)
	}
}

func requireControlPlane(t *testing.T) {
	t.Helper()
	err := kubetest.Available()
	if err == nil {
		return
	}
	if os.Getenv(kubetest.EnvRequired) == "1" || os.Getenv("RUNOS_LAB_REQUIRED") == "1" {
		t.Fatalf("real etcd and kube-apiserver required: %v", err)
	}
	t.Skipf("no real etcd/kube-apiserver: %v", err)
}

// clientFor is an HTTP client built by client-go from the kubeconfig
// Kubeconfig renders for r (issued by the Kubernetes CA, or by issuer).
func clientFor(t *testing.T, server string, c cas, r kpki.Request, issuer ...*kpki.CA) *http.Client {
	t.Helper()
	ca := c.kube
	if len(issuer) > 0 {
		ca = issuer[0]
	}
	certPEM, keyPEM, err := ca.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	k, err := kube.Load(kpki.Kubeconfig(server, c.kube.CertPEM, certPEM, keyPEM, r.CommonName))
	if err != nil {
		t.Fatal(err)
	}
	hc := k.HTTPClient(10 * time.Second)
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

func do(t *testing.T, hc *http.Client, method, url, body, token string) []byte {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %s: %s", method, url, resp.Status, b.String())
	}
	return b.Bytes()
}

// whoami asks the apiserver who the caller is (SelfSubjectReview): the
// authenticated identity, independent of any authorization.
func whoami(t *testing.T, hc *http.Client, server, token string) (string, []string) {
	t.Helper()
	var r struct {
		Status struct {
			UserInfo struct {
				Username string   `json:"username"`
				Groups   []string `json:"groups"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	out := do(t, hc, http.MethodPost, server+"/apis/authentication.k8s.io/v1/selfsubjectreviews",
		`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`, token)
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("SelfSubjectReview: %v: %s", err, out)
	}
	return r.Status.UserInfo.Username, r.Status.UserInfo.Groups
}

func waitOK(t *testing.T, hc *http.Client, url string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		resp, err := hc.Get(url)
		if err == nil {
			var b bytes.Buffer
			b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status + ": " + b.String()
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("GET %s: %s", url, last)
}

func waitReady(t *testing.T, hc *http.Client, server string, api *testProc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	last := ""
	for ctx.Err() == nil {
		select {
		case <-api.done:
			t.Fatalf("kube-apiserver exited: %v\n%s", api.err, api.tail())
		default:
		}
		resp, err := hc.Get(server + "/readyz")
		if err == nil {
			var b bytes.Buffer
			b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status + ": " + b.String()
		} else {
			last = err.Error()
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("kube-apiserver not ready: %s\n%s", last, api.tail())
}

type testProc struct {
	log  string
	done chan struct{}
	err  error // set before done is closed
}

func (p *testProc) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}

// startProc runs a child in its own process group, logging to a file, and
// kills and reaps it in t.Cleanup (its log is printed if the test failed).
func startProc(t *testing.T, dir, name, bin string, args ...string) *testProc {
	t.Helper()
	p := &testProc{log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.tail())
		}
	})
	return p
}

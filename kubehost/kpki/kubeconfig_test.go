package kpki_test

import (
	"bytes"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/runos/runos-agent/kube"
	"github.com/runos/runos-agent/kubehost/kpki"
)

func TestKubeconfigLoads(t *testing.T) {
	c := newCAs(t)
	certPEM, keyPEM, err := c.kube.Issue(kpki.Admin("runos-admin"))
	if err != nil {
		t.Fatal(err)
	}
	const server = "https://127.0.0.1:6444"
	kc := kpki.Kubeconfig(server, c.kube.CertPEM, certPEM, keyPEM, "runos-admin")

	if err := kube.Validate(kc); err != nil {
		t.Fatalf("kube.Validate refuses it: %v\n%s", err, kc)
	}
	cfg, err := clientcmd.Load(kc)
	if err != nil {
		t.Fatalf("clientcmd.Load: %v\n%s", err, kc)
	}
	if cfg.CurrentContext == "" || cfg.Contexts[cfg.CurrentContext] == nil {
		t.Fatalf("no usable current context in\n%s", kc)
	}
	rc, err := clientcmd.RESTConfigFromKubeConfig(kc)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != server {
		t.Errorf("Host = %q, want %q", rc.Host, server)
	}
	if !bytes.Equal(rc.CAData, c.kube.CertPEM) || !bytes.Equal(rc.CertData, certPEM) || !bytes.Equal(rc.KeyData, keyPEM) {
		t.Error("TLS data in rest.Config differs from what was rendered")
	}
	if rc.CAFile != "" || rc.CertFile != "" || rc.KeyFile != "" || rc.Insecure {
		t.Errorf("unexpected file references or insecure: %+v", rc.TLSClientConfig)
	}

	// Names that would break naive YAML still round-trip.
	odd := "a: b # c\n- d"
	kc = kpki.Kubeconfig(server, c.kube.CertPEM, certPEM, keyPEM, odd)
	cfg, err = clientcmd.Load(kc)
	if err != nil {
		t.Fatalf("odd user name: %v\n%s", err, kc)
	}
	if _, ok := cfg.AuthInfos[odd]; !ok || len(cfg.AuthInfos) != 1 {
		t.Errorf("odd user name: users %v", cfg.AuthInfos)
	}
	if err := kube.Validate(kc); err != nil {
		t.Errorf("odd user name: %v", err)
	}
	if cfg, err := clientcmd.Load(kpki.Kubeconfig(server, c.kube.CertPEM, certPEM, keyPEM, "")); err != nil || cfg.AuthInfos["admin"] == nil {
		t.Errorf("empty user: %v %v", err, cfg)
	}
}

// A client built by client-go from the rendered kubeconfig completes
// mutual TLS with a server holding an apiserver serving certificate, and
// the server sees the admin identity.
func TestKubeconfigClientTalksToServer(t *testing.T) {
	c := newCAs(t)
	srvCert, srvKey, err := c.kube.Issue(kpki.APIServerServing(netip.MustParseAddr("127.0.0.1"), serviceIP, ""))
	if err != nil {
		t.Fatal(err)
	}
	pairSrv, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.TLS.PeerCertificates[0]
		w.Write([]byte(p.Subject.CommonName + "/" + p.Subject.Organization[0]))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pairSrv}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool(c.kube)}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	certPEM, keyPEM, err := c.kube.Issue(kpki.Admin("alice"))
	if err != nil {
		t.Fatal(err)
	}
	kc := kpki.Kubeconfig(srv.URL, c.kube.CertPEM, certPEM, keyPEM, "alice")
	// kubectl (client-go) must read it as the agent's own client does.
	if _, err := clientcmd.RESTConfigFromKubeConfig(kc); err != nil {
		t.Fatalf("client-go refuses it: %v", err)
	}
	k, err := kube.Load(kc)
	if err != nil {
		t.Fatal(err)
	}
	hc := k.HTTPClient(10 * time.Second)
	t.Cleanup(hc.CloseIdleConnections)
	resp, err := hc.Get(srv.URL + "/whoami")
	if err != nil {
		t.Fatalf("GET through the kubeconfig's client: %v", err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	if got := buf.String(); got != "alice/system:masters" {
		t.Errorf("server saw %q", got)
	}
}

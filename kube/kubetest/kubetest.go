// Package kubetest runs a real Kubernetes control plane for tests: Debian's
// etcd, and kube-apiserver plus kube-controller-manager built from the
// k8s.io/kubernetes module by scripts/build-kube.sh. Everything listens on
// 127.0.0.1 on free ports, with its own CA, serving certificate and a static
// admin token, and is stopped by t.Cleanup.
//
// The controller manager runs only the namespace controller: without it a
// deleted namespace stays Terminating forever. There is no kubelet or
// scheduler, so pods never run; workloads report 0 ready replicas.
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/runos/runos-agent/freeport"
)

// Version is the Kubernetes release scripts/build-kube.sh builds.
const Version = "v1.34.4"

// EnvRequired makes a missing control plane a test failure instead of a
// skip (`make test` sets it when run as root, i.e. in CI).
const EnvRequired = "RUNOS_KUBE_REQUIRED"

// BinDir is where build-kube.sh leaves the binaries: $RUNOS_KUBE_BIN, else
// ${RUNOS_CACHE:-$HOME/.cache/runos-test}/kube-<Version>/bin.
func BinDir() string {
	if d := os.Getenv("RUNOS_KUBE_BIN"); d != "" {
		return d
	}
	cache := os.Getenv("RUNOS_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "runos-test")
	}
	return filepath.Join(cache, "kube-"+Version, "bin")
}

// binaries returns the paths of etcd, kube-apiserver and
// kube-controller-manager, or why they cannot be used.
func binaries() (etcd, apiserver, kcm string, err error) {
	etcd, err = exec.LookPath("etcd")
	if err != nil {
		return "", "", "", errors.New("etcd not found in PATH (Debian: apt-get install etcd-server; scripts/test-deps.sh installs it)")
	}
	dir := BinDir()
	apiserver = filepath.Join(dir, "kube-apiserver")
	kcm = filepath.Join(dir, "kube-controller-manager")
	for _, p := range []string{apiserver, kcm} {
		if fi, serr := os.Stat(p); serr != nil || fi.IsDir() {
			return "", "", "", fmt.Errorf("%s is missing (build it once with scripts/build-kube.sh; `make test` does)", p)
		}
	}
	return etcd, apiserver, kcm, nil
}

// Available reports whether the control plane binaries are present.
func Available() error {
	_, _, _, err := binaries()
	return err
}

// Require skips the test when the binaries are missing, or fails it when
// RUNOS_KUBE_REQUIRED=1.
func Require(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv(EnvRequired) == "1" {
			t.Fatalf("real Kubernetes API server required (%s=1): %v", EnvRequired, err)
			return
		}
		t.Skipf("no real Kubernetes API server: %v", err)
	}
}

// Server is a running control plane.
type Server struct {
	// URL is the API server's https URL.
	URL string
	// Kubeconfig authenticates as a cluster admin (system:masters).
	Kubeconfig []byte
	// KubeconfigPath is Kubeconfig written to a file.
	KubeconfigPath string

	tb        testing.TB
	dir       string
	token     string
	apiPort   int
	etcdURL   string
	apiserver string
	caPool    *x509.CertPool

	mu    sync.Mutex
	procs map[string]*proc // guarded by mu; by name
}

// Options tune Start.
type Options struct {
	// NoControllerManager skips kube-controller-manager (namespaces then
	// stay Terminating after deletion).
	NoControllerManager bool
}

// Start runs etcd, kube-apiserver and kube-controller-manager and waits
// until the API server is ready. Missing binaries skip (or fail, see
// Require). Everything is stopped by t.Cleanup, also when the test fails.
func Start(t testing.TB, opts ...Options) *Server {
	t.Helper()
	Require(t)
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	etcdBin, apiBin, kcmBin, _ := binaries()
	// Unix socket paths and the etcd data dir live here; keep it short.
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{tb: t, dir: dir, apiserver: apiBin, procs: map[string]*proc{}}
	t.Cleanup(func() {
		s.stopAll()
		if t.Failed() {
			s.dumpLogs()
		}
		os.RemoveAll(dir)
	})

	if err := s.writeCredentials(); err != nil {
		t.Fatal(err)
	}
	etcdClient, etcdPeer := freeport.For(t), freeport.For(t)
	s.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	s.start("etcd", etcdBin,
		"--name", "kubetest",
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", s.etcdURL,
		"--advertise-client-urls", s.etcdURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "kubetest="+peerURL,
		"--logger", "zap", "--log-level", "warn",
	)

	s.apiPort = freeport.For(t)
	s.URL = fmt.Sprintf("https://127.0.0.1:%d", s.apiPort)
	s.Kubeconfig = kubeconfig(s.URL, s.read("ca.crt"), s.token)
	s.KubeconfigPath = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(s.KubeconfigPath, s.Kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	s.StartAPI()

	if !o.NoControllerManager {
		s.start("kube-controller-manager", kcmBin,
			"--kubeconfig", s.KubeconfigPath,
			"--controllers", "namespace-controller",
			"--leader-elect=false",
			"--secure-port=0",
			"--use-service-account-credentials=false",
			"--concurrent-namespace-syncs=5",
			"-v=1",
		)
	}
	return s
}

// StartAPI (re)starts kube-apiserver on its port and waits for /readyz.
func (s *Server) StartAPI() {
	s.tb.Helper()
	f := func(n string) string { return filepath.Join(s.dir, n) }
	s.start("kube-apiserver", s.apiserver,
		"--etcd-servers", s.etcdURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(s.apiPort),
		"--tls-cert-file", f("serving.crt"),
		"--tls-private-key-file", f("serving.key"),
		"--client-ca-file", f("ca.crt"),
		"--token-auth-file", f("tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", f("sa.key"),
		"--service-account-signing-key-file", f("sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/12",
		// No service account controller runs, so no default account
		// exists for pods to be admitted with.
		"--disable-admission-plugins", "ServiceAccount",
		"--allow-privileged=true",
		// The "kubernetes" Service's endpoints may not be loopback.
		"--endpoint-reconciler-type", "none",
		"--profiling=false",
		"--cert-dir", f("certs"),
		"-v=1",
	)
	s.waitReady()
}

// StopAPI stops kube-apiserver (etcd keeps the data), so tests can see
// what happens while the API is unreachable.
func (s *Server) StopAPI() {
	s.tb.Helper()
	s.stop("kube-apiserver")
}

func (s *Server) waitReady() {
	s.tb.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: s.caPool},
	}}
	defer client.CloseIdleConnections()
	// Generous: the first start on a busy 2-core machine takes a while.
	deadline := time.Now().Add(180 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		if err := s.exited("kube-apiserver"); err != nil {
			s.tb.Fatalf("kube-apiserver exited before it was ready: %v\n%s", err, s.tail("kube-apiserver", 40))
		}
		req, _ := http.NewRequest(http.MethodGet, s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.token)
		resp, err := client.Do(req)
		if err == nil {
			var b bytes.Buffer
			b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%s: %s", resp.Status, lastLines(b.String(), 5))
		} else {
			last = err.Error()
		}
		time.Sleep(250 * time.Millisecond)
	}
	s.tb.Fatalf("kube-apiserver not ready at %s: %s\n%s", s.URL, last, s.tail("kube-apiserver", 40))
}

// proc is one child process with its log file.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // set before done is closed
}

func (s *Server) start(name, bin string, args ...string) {
	s.tb.Helper()
	logPath := filepath.Join(s.dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.tb.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = s.dir
	// Own process group, and killed if the test process dies without
	// running its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		s.tb.Fatalf("start %s: %v", name, err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	s.mu.Lock()
	s.procs[name] = p
	s.mu.Unlock()
}

func (s *Server) exited(name string) error {
	s.mu.Lock()
	p := s.procs[name]
	s.mu.Unlock()
	if p == nil {
		return errors.New("not started")
	}
	select {
	case <-p.done:
		if p.err == nil {
			return errors.New("exit status 0")
		}
		return p.err
	default:
		return nil
	}
}

func (s *Server) stop(name string) {
	s.mu.Lock()
	p := s.procs[name]
	delete(s.procs, name)
	s.mu.Unlock()
	if p == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	// Keep the log for dumpLogs.
	s.mu.Lock()
	s.procs[name+" (stopped)"] = p
	s.mu.Unlock()
}

func (s *Server) stopAll() {
	// Controllers first, the store last.
	for _, n := range []string{"kube-controller-manager", "kube-apiserver", "etcd"} {
		s.stop(n)
	}
}

func (s *Server) tail(name string, n int) string {
	b, _ := os.ReadFile(filepath.Join(s.dir, name+".log"))
	return lastLines(string(b), n)
}

func (s *Server) dumpLogs() {
	for _, n := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		s.tb.Logf("--- last lines of %s.log:\n%s", n, s.tail(n, 30))
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (s *Server) read(name string) []byte {
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		s.tb.Fatal(err)
	}
	return b
}

// writeCredentials creates the CA, the serving certificate for 127.0.0.1,
// the service account signing key and the static admin token.
func (s *Server) writeCredentials() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubetest-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	s.caPool = x509.NewCertPool()
	s.caPool.AddCert(caCert)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	var tok [16]byte
	rand.Read(tok[:])
	s.token = hex.EncodeToString(tok[:])
	files := map[string][]byte{
		"ca.crt":      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		"serving.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		"serving.key": pemKey(srvKey),
		"sa.key":      pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		"tokens.csv":  []byte(s.token + `,kubetest-admin,kubetest-admin,"system:masters"` + "\n"),
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(s.dir, n), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func pemKey(k *ecdsa.PrivateKey) []byte {
	der, _ := x509.MarshalECPrivateKey(k)
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func kubeconfig(server string, caPEM []byte, token string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: kubetest
  context:
    cluster: kubetest
    user: admin
current-context: kubetest
`, server, b64(caPEM), token)
}

// Context returns a context for a test step (bounded; a hung step fails).
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

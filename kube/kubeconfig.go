package kube

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// ErrUnsafeKubeconfig is returned (wrapped) for a kubeconfig that would
// make the agent run a command or read a local file: an exec credential
// plugin runs as the agent (root) on every node that deploys, and a file
// reference (token-file, client-certificate, certificate-authority paths)
// reads any file and sends its contents to the named server. Whoever sets
// the kubeconfig (web UI, local API, cloud) must not get either.
var ErrUnsafeKubeconfig = errors.New("unsafe kubeconfig")

// Kubeconfig is a parsed, checked kubeconfig: the current context's
// server and credentials. Only inline data is accepted (see Validate).
type Kubeconfig struct {
	// Server is the API server's base URL, with a scheme.
	Server string

	tlsConfig *tls.Config // nil: plain HTTP
	proxy     *url.URL    // nil: the environment's proxy, as client-go does
	token     string
	user      string
	password  string
}

// kubeconfigFile is the kubeconfig file format (clientcmd/api/v1), with
// the fields the agent reads and those it must refuse.
type kubeconfigFile struct {
	CurrentContext string       `json:"current-context"`
	Clusters       []kcCluster  `json:"clusters"`
	AuthInfos      []kcAuthInfo `json:"users"`
	Contexts       []kcContext  `json:"contexts"`
}

type kcCluster struct {
	Name    string `json:"name"`
	Cluster struct {
		Server                   string `json:"server"`
		TLSServerName            string `json:"tls-server-name"`
		InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify"`
		CertificateAuthority     string `json:"certificate-authority"`
		CertificateAuthorityData []byte `json:"certificate-authority-data"`
		ProxyURL                 string `json:"proxy-url"`
	} `json:"cluster"`
}

type kcAuthInfo struct {
	Name string `json:"name"`
	User struct {
		ClientCertificate     string          `json:"client-certificate"`
		ClientCertificateData []byte          `json:"client-certificate-data"`
		ClientKey             string          `json:"client-key"`
		ClientKeyData         []byte          `json:"client-key-data"`
		Token                 string          `json:"token"`
		TokenFile             string          `json:"tokenFile"`
		Impersonate           string          `json:"as"`
		ImpersonateUID        string          `json:"as-uid"`
		ImpersonateGroups     []string        `json:"as-groups"`
		ImpersonateUserExtra  json.RawMessage `json:"as-user-extra"`
		Username              string          `json:"username"`
		Password              string          `json:"password"`
		AuthProvider          json.RawMessage `json:"auth-provider"`
		Exec                  json.RawMessage `json:"exec"`
	} `json:"user"`
}

type kcContext struct {
	Name    string `json:"name"`
	Context struct {
		Cluster  string `json:"cluster"`
		AuthInfo string `json:"user"`
	} `json:"context"`
}

func parseFile(kubeconfig []byte) (*kubeconfigFile, error) {
	if len(strings.TrimSpace(string(kubeconfig))) == 0 {
		return nil, errors.New("invalid kubeconfig: empty")
	}
	var f kubeconfigFile
	if err := yaml.Unmarshal(kubeconfig, &f); err != nil {
		return nil, fmt.Errorf("invalid kubeconfig: %w", err)
	}
	return &f, nil
}

// Validate refuses kubeconfigs whose users or clusters are anything but
// inline data: client certificate and key data, a bearer token, basic
// auth, and CA data. It checks every user and cluster, not only the
// current context's: a later context switch must not turn one on. It is
// the one check every path that accepts or uses a kubeconfig goes through
// (Load, hence New and workload's SetKube).
func Validate(kubeconfig []byte) error {
	f, err := parseFile(kubeconfig)
	if err != nil {
		return err
	}
	return f.validate()
}

func (f *kubeconfigFile) validate() error {
	users := map[string]int{}
	for i, u := range f.AuthInfos {
		users[u.Name] = i
	}
	for _, name := range slices.Sorted(maps.Keys(users)) {
		u := f.AuthInfos[users[name]].User
		refuse := func(what string) error {
			return fmt.Errorf("%w: user %q uses %s; only client certificates (inline data), tokens, basic auth and CA data are accepted", ErrUnsafeKubeconfig, name, what)
		}
		switch {
		case present(u.Exec):
			return refuse("an exec credential plugin (it would run a command on the nodes)")
		case present(u.AuthProvider):
			return refuse("an auth-provider plugin")
		case u.TokenFile != "":
			return refuse("a token file (inline the token instead)")
		case u.ClientCertificate != "" || u.ClientKey != "":
			return refuse("certificate files (inline client-certificate-data and client-key-data instead)")
		}
	}
	for _, c := range f.Clusters {
		if c.Cluster.CertificateAuthority != "" {
			return fmt.Errorf("%w: cluster %q names a CA file; inline certificate-authority-data instead", ErrUnsafeKubeconfig, c.Name)
		}
	}
	return nil
}

func present(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s != "" && s != "null"
}

// Load parses and checks a kubeconfig (Validate) and resolves its current
// context, with a clear error for anything missing.
func Load(kubeconfig []byte) (*Kubeconfig, error) {
	f, err := parseFile(kubeconfig)
	if err != nil {
		return nil, err
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	if f.CurrentContext == "" {
		return nil, errors.New("invalid kubeconfig: no current-context")
	}
	ctxIdx := slices.IndexFunc(f.Contexts, func(c kcContext) bool { return c.Name == f.CurrentContext })
	if ctxIdx < 0 {
		return nil, fmt.Errorf("invalid kubeconfig: context %q not found", f.CurrentContext)
	}
	kctx := f.Contexts[ctxIdx].Context
	k := &Kubeconfig{}
	found := false
	for _, c := range f.Clusters {
		if c.Name != kctx.Cluster {
			continue
		}
		found = true
		cl := c.Cluster
		if cl.Server == "" {
			return nil, fmt.Errorf("invalid kubeconfig: cluster %q has no server", c.Name)
		}
		if cl.InsecureSkipTLSVerify && len(cl.CertificateAuthorityData) > 0 {
			return nil, fmt.Errorf("invalid kubeconfig: cluster %q: certificate-authority-data with insecure-skip-tls-verify is not allowed", c.Name)
		}
		if cl.ProxyURL != "" {
			if k.proxy, err = url.Parse(cl.ProxyURL); err != nil {
				return nil, fmt.Errorf("invalid kubeconfig: cluster %q: proxy-url: %w", c.Name, err)
			}
		}
		tc := &tls.Config{ServerName: cl.TLSServerName, InsecureSkipVerify: cl.InsecureSkipTLSVerify, MinVersion: tls.VersionTLS12}
		if len(cl.CertificateAuthorityData) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(cl.CertificateAuthorityData) {
				return nil, fmt.Errorf("invalid kubeconfig: cluster %q: certificate-authority-data holds no PEM certificate", c.Name)
			}
			tc.RootCAs = pool
		}
		k.tlsConfig = tc
		k.Server = cl.Server
	}
	if !found {
		return nil, fmt.Errorf("invalid kubeconfig: cluster %q (context %q) not found", kctx.Cluster, f.CurrentContext)
	}
	hasCert, userFound := false, kctx.AuthInfo == ""
	for _, u := range f.AuthInfos {
		if u.Name != kctx.AuthInfo {
			continue
		}
		userFound = true
		a := u.User
		if a.Impersonate != "" || a.ImpersonateUID != "" || len(a.ImpersonateGroups) > 0 || present(a.ImpersonateUserExtra) {
			return nil, fmt.Errorf("invalid kubeconfig: user %q impersonates; the agent does not support impersonation", u.Name)
		}
		if len(a.ClientCertificateData) > 0 || len(a.ClientKeyData) > 0 {
			cert, err := tls.X509KeyPair(a.ClientCertificateData, a.ClientKeyData)
			if err != nil {
				return nil, fmt.Errorf("invalid kubeconfig: user %q: client certificate: %w", u.Name, err)
			}
			// Always present it, as client-go does: Go would otherwise
			// send nothing to a server whose acceptable CAs it is not
			// from, and the server would see an anonymous user.
			k.tlsConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
			hasCert = true
		}
		k.token, k.user, k.password = a.Token, a.Username, a.Password
	}
	if !userFound {
		return nil, fmt.Errorf("invalid kubeconfig: user %q (context %q) not found", kctx.AuthInfo, f.CurrentContext)
	}
	// As client-go: a server named host:port gets https when TLS is
	// configured in any way, plain http otherwise.
	if !strings.Contains(k.Server, "://") {
		tlsWanted := k.tlsConfig.RootCAs != nil || hasCert || k.tlsConfig.InsecureSkipVerify
		if tlsWanted {
			k.Server = "https://" + k.Server
		} else {
			k.Server = "http://" + k.Server
		}
	}
	u, err := url.Parse(k.Server)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("invalid kubeconfig: server %q is not an http(s) URL", k.Server)
	}
	k.Server = strings.TrimSuffix(u.String(), "/")
	if u.Scheme == "http" {
		k.tlsConfig = nil
	}
	return k, nil
}

// HTTPClient is an http.Client that authenticates to the API server as the
// kubeconfig says; timeout bounds each request (0: none, for watches).
func (k *Kubeconfig) HTTPClient(timeout time.Duration) *http.Client {
	proxy := http.ProxyFromEnvironment
	if k.proxy != nil {
		proxy = http.ProxyURL(k.proxy)
	}
	var tc *tls.Config
	if k.tlsConfig != nil {
		tc = k.tlsConfig.Clone()
	}
	t := &http.Transport{
		Proxy:               proxy,
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 25,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
		// As client-go: ping an idle HTTP/2 connection, so a watch on a
		// connection whose server vanished fails in under a minute
		// instead of waiting on TCP keepalives.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
	}
	return &http.Client{Timeout: timeout, Transport: &authTransport{next: t, k: k}}
}

// authTransport adds the kubeconfig's bearer token or basic auth.
type authTransport struct {
	next *http.Transport
	k    *Kubeconfig
}

func (a *authTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if a.k.token == "" && a.k.user == "" {
		return a.next.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	if a.k.token != "" {
		r.Header.Set("Authorization", "Bearer "+a.k.token)
	} else {
		r.SetBasicAuth(a.k.user, a.k.password)
	}
	return a.next.RoundTrip(r)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// transport.
func (a *authTransport) CloseIdleConnections() { a.next.CloseIdleConnections() }

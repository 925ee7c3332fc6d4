package kube

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"k8s.io/client-go/tools/clientcmd"
)

// ErrUnsafeKubeconfig is returned (wrapped) for a kubeconfig that would
// make the agent run a command or read a local file: an exec credential
// plugin runs as the agent (root) on every node that deploys, and a file
// reference (token-file, client-certificate, certificate-authority paths)
// reads any file and sends its contents to the named server. Whoever sets
// the kubeconfig (web UI, local API, cloud) must not get either.
var ErrUnsafeKubeconfig = errors.New("unsafe kubeconfig")

// Validate refuses kubeconfigs whose users or clusters are anything but
// inline data: client certificate and key data, a bearer token, basic
// auth, and CA data. It checks every user and cluster, not only the
// current context's: a later context switch must not turn one on. It is
// the one check every path that accepts or uses a kubeconfig goes through
// (RESTConfig, hence New and workload's SetKube).
func Validate(kubeconfig []byte) error {
	cfg, err := clientcmd.Load(kubeconfig)
	if err != nil {
		return fmt.Errorf("invalid kubeconfig: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.AuthInfos)) {
		u := cfg.AuthInfos[name]
		if u == nil {
			continue
		}
		refuse := func(what string) error {
			return fmt.Errorf("%w: user %q uses %s; only client certificates (inline data), tokens, basic auth and CA data are accepted", ErrUnsafeKubeconfig, name, what)
		}
		switch {
		case u.Exec != nil:
			return refuse("an exec credential plugin (it would run a command on the nodes)")
		case u.AuthProvider != nil:
			return refuse("an auth-provider plugin")
		case u.TokenFile != "":
			return refuse("a token file (inline the token instead)")
		case u.ClientCertificate != "" || u.ClientKey != "":
			return refuse("certificate files (inline client-certificate-data and client-key-data instead)")
		}
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Clusters)) {
		if c := cfg.Clusters[name]; c != nil && c.CertificateAuthority != "" {
			return fmt.Errorf("%w: cluster %q names a CA file; inline certificate-authority-data instead", ErrUnsafeKubeconfig, name)
		}
	}
	return nil
}

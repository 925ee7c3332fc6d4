// Package kpki is the PKI of the managed Kubernetes the agents run: the
// Kubernetes CA, the etcd CA, the service-account signing key, and the
// certificate requests of every component role.
//
// There are two CAs so that trust does not leak between the planes: etcd
// trusts only the etcd CA, so a kubelet's (Kubernetes CA) client
// certificate can never talk to etcd, and an etcd certificate is not a
// Kubernetes identity. Keys are ECDSA P-256 in PKCS #8, which every
// Kubernetes component and etcd load. The package is pure crypto: callers
// decide where the PEM goes.
package kpki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/runos/runos-agent/pki"
)

const (
	// caValidity is long because rotating a CA means restarting the whole
	// control plane with new trust bundles; a home-lab cluster should never
	// have to.
	caValidity = 10 * 365 * 24 * time.Hour

	// DefaultValidity is a leaf's lifetime when Request.Validity is zero.
	// Leaves are cheap to re-issue (every node signs its own at start, from
	// the CA key in the Raft state), so a year keeps the window of a leaked
	// key bounded without making renewals frequent.
	DefaultValidity = 365 * 24 * time.Hour

	// RenewBefore is how long before expiry NeedsReissue asks for a new
	// certificate: long enough that a node that was down for weeks still
	// comes back with a valid one.
	RenewBefore = 30 * 24 * time.Hour

	// clockSkew backdates NotBefore so a certificate issued on one node is
	// accepted at once by a peer whose clock runs a little behind.
	clockSkew = time.Hour

	// DefaultClusterDomain is used when APIServerServing gets none.
	DefaultClusterDomain = "cluster.local"

	pemCert   = "CERTIFICATE"
	pemKey    = "PRIVATE KEY" // PKCS #8
	pemPublic = "PUBLIC KEY"  // PKIX
)

// Well-known Kubernetes identities. The apiserver's RBAC bootstrap policy
// binds these names, so they must be spelled exactly so.
const (
	groupMasters     = "system:masters"
	groupNodes       = "system:nodes"
	groupNodeProxier = "system:node-proxier"
)

var loopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// CA is a certificate authority: the Kubernetes CA or the etcd CA.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA creates a self-signed CA valid for ten years.
func NewCA(commonName string) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("kpki: CA common name is required")
	}
	ca, err := pki.NewCAWithSubject(pkix.Name{CommonName: commonName})
	if err != nil {
		return nil, fmt.Errorf("kpki: %w", err)
	}
	return &CA{Cert: ca.Cert, Key: ca.Key, CertPEM: ca.CertPEM, KeyPEM: ca.KeyPEM}, nil
}

// ParseCA loads a CA from PEM, as NewCA made it (the key unsealed from the
// Raft state). It checks that the certificate is a CA and that the key is
// the certificate's, so a mix-up of the two CAs' keys fails here rather than
// as unverifiable certificates later.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	ca, err := pki.ParseCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("kpki: %w", err)
	}
	return &CA{Cert: ca.Cert, Key: ca.Key, CertPEM: ca.CertPEM, KeyPEM: ca.KeyPEM}, nil
}

// NewServiceAccountKey makes the key kube-apiserver signs service-account
// tokens with (--service-account-signing-key-file, PKCS #8) and its public
// half (--service-account-key-file, PKIX), which every control-plane node
// must share so a token issued by one apiserver is accepted by all.
func NewServiceAccountKey() (keyPEM, pubPEM []byte, err error) {
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, nil, err
	}
	pubPEM, err = marshalPublic(key.Public())
	if err != nil {
		return nil, nil, err
	}
	return keyPEM, pubPEM, nil
}

// ServiceAccountPublic derives the PKIX public key PEM from a
// service-account private key, so only the private key needs storing.
func ServiceAccountPublic(keyPEM []byte) ([]byte, error) {
	key, err := pki.ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("kpki: service-account key: %w", err)
	}
	return marshalPublic(key.Public())
}

// Request describes one leaf certificate. The role functions below build
// them; callers normally do not fill one by hand.
type Request struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []netip.Addr
	// Server and Client set ExtKeyUsage ServerAuth and ClientAuth; at
	// least one is required.
	Server, Client bool
	Validity       time.Duration // default DefaultValidity
}

// Issue makes a fresh key and a certificate for r signed by ca. The
// certificate never outlives the CA.
func (ca *CA) Issue(r Request) (certPEM, keyPEM []byte, err error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, nil, errors.New("kpki: issue: CA certificate and key are required")
	}
	if r.CommonName == "" {
		return nil, nil, errors.New("kpki: issue: common name is required")
	}
	if !r.Server && !r.Client {
		return nil, nil, fmt.Errorf("kpki: issue %q: neither server nor client usage requested", r.CommonName)
	}
	validity := r.Validity
	if validity == 0 {
		validity = DefaultValidity
	}
	if validity < 0 {
		return nil, nil, fmt.Errorf("kpki: issue %q: negative validity %v", r.CommonName, validity)
	}
	ips := make([]net.IP, 0, len(r.IPs))
	for _, ip := range r.IPs {
		if !ip.IsValid() {
			return nil, nil, fmt.Errorf("kpki: issue %q: invalid IP address in SANs", r.CommonName)
		}
		ips = append(ips, net.IP(ip.Unmap().AsSlice()))
	}
	for _, n := range r.DNSNames {
		if n == "" {
			return nil, nil, fmt.Errorf("kpki: issue %q: empty DNS name in SANs", r.CommonName)
		}
	}
	var eku []x509.ExtKeyUsage
	if r.Server {
		eku = append(eku, x509.ExtKeyUsageServerAuth)
	}
	if r.Client {
		eku = append(eku, x509.ExtKeyUsageClientAuth)
	}

	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, nil, err
	}
	serial, err := pki.RandomSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: r.CommonName, Organization: slices.Clone(r.Organization)},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		DNSNames:              slices.Clone(r.DNSNames),
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("kpki: issue %q: %w", r.CommonName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: der}), keyPEM, nil
}

// NeedsReissue reports whether certPEM (the file on disk; nil if missing)
// must be replaced by a fresh certificate for r: it is missing,
// unparsable, not signed by ca, not yet valid, expiring within RenewBefore
// (or within a third of r's validity, for short-lived requests, so they do
// not re-issue forever), lacks one of r's SANs or usages, or names another
// subject. Extra SANs are tolerated: they come from an earlier mesh
// address, and are harmless until the next renewal.
func NeedsReissue(certPEM []byte, ca *x509.Certificate, r Request) bool {
	if ca == nil {
		return true
	}
	cert, err := pki.ParseCert(certPEM)
	if err != nil {
		return true
	}
	var usages []x509.ExtKeyUsage
	if r.Server {
		usages = append(usages, x509.ExtKeyUsageServerAuth)
	}
	if r.Client {
		usages = append(usages, x509.ExtKeyUsageClientAuth)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	now := time.Now()
	// Each usage on its own: Verify with several KeyUsages accepts a chain
	// that allows any one of them.
	for _, u := range usages {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			return true
		}
	}
	if len(usages) == 0 {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return true
		}
	}
	validity := r.Validity
	if validity <= 0 {
		validity = DefaultValidity
	}
	if now.Add(min(RenewBefore, validity/3)).After(cert.NotAfter) {
		return true
	}
	if cert.Subject.CommonName != r.CommonName || !sameSet(cert.Subject.Organization, r.Organization) {
		return true
	}
	for _, n := range r.DNSNames {
		if !slices.Contains(cert.DNSNames, n) {
			return true
		}
	}
	for _, ip := range r.IPs {
		if !slices.ContainsFunc(cert.IPAddresses, func(c net.IP) bool { return c.Equal(net.IP(ip.Unmap().AsSlice())) }) {
			return true
		}
	}
	return false
}

// APIServerServing is kube-apiserver's serving certificate. Clients reach
// it by the mesh IP (other nodes' balancers), 127.0.0.1 (the local
// balancer and components), the service IP and the in-cluster names.
func APIServerServing(meshIP, serviceIP netip.Addr, clusterDomain string) Request {
	domain := strings.Trim(clusterDomain, ".")
	if domain == "" {
		domain = DefaultClusterDomain
	}
	return Request{
		CommonName: "kube-apiserver",
		DNSNames: []string{
			"kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc." + domain, "localhost",
		},
		IPs:    uniqueIPs(meshIP, loopback, serviceIP),
		Server: true,
	}
}

// APIServerKubeletClient is what kube-apiserver presents to kubelets
// (logs, exec, port-forward); system:masters so kubelet's webhook authz
// allows it without extra RBAC.
func APIServerKubeletClient() Request {
	return Request{CommonName: "kube-apiserver-kubelet-client", Organization: []string{groupMasters}, Client: true}
}

// APIServerEtcdClient is kube-apiserver's client certificate to etcd (etcd
// CA).
func APIServerEtcdClient() Request {
	return Request{CommonName: "kube-apiserver-etcd-client", Client: true}
}

// EtcdServer is etcd's client-facing serving certificate (etcd CA). Client
// usage too: etcd's gRPC gateway dials its own listener with it.
func EtcdServer(name string, meshIP netip.Addr) Request {
	return Request{
		CommonName: name,
		DNSNames:   uniqueNames("localhost", name),
		IPs:        uniqueIPs(meshIP, loopback),
		Server:     true,
		Client:     true,
	}
}

// EtcdPeer is etcd's peer certificate (etcd CA): members present it both
// when listening and when dialling each other.
func EtcdPeer(name string, meshIP netip.Addr) Request {
	return Request{CommonName: name, IPs: uniqueIPs(meshIP, loopback), Server: true, Client: true}
}

// EtcdAgentClient is the agent's own etcd client certificate (etcd CA), for
// membership changes.
func EtcdAgentClient() Request {
	return Request{CommonName: "runos-agent", Client: true}
}

// KubeletClient is the kubelet's identity towards the apiserver; the Node
// authorizer and NodeRestriction admission key on exactly this CN and O.
func KubeletClient(node string) Request {
	return Request{CommonName: "system:node:" + node, Organization: []string{groupNodes}, Client: true}
}

// KubeletServing is the kubelet's serving certificate (port 10250); the
// apiserver reaches it by the node's mesh IP (its InternalIP).
func KubeletServing(node string, meshIP netip.Addr) Request {
	return Request{CommonName: node, DNSNames: uniqueNames(node), IPs: uniqueIPs(meshIP), Server: true}
}

// ControllerManager is kube-controller-manager's client identity.
func ControllerManager() Request {
	return Request{CommonName: "system:kube-controller-manager", Client: true}
}

// Scheduler is kube-scheduler's client identity.
func Scheduler() Request {
	return Request{CommonName: "system:kube-scheduler", Client: true}
}

// KubeProxy is kube-proxy's client identity; system:node-proxier is the
// group its default ClusterRoleBinding names.
func KubeProxy() Request {
	return Request{CommonName: "system:kube-proxy", Organization: []string{groupNodeProxier}, Client: true}
}

// Admin is a cluster-admin client identity (the kubeconfig `runos-agent
// kube kubeconfig` hands out, and the agent's own workload client).
func Admin(name string) Request {
	return Request{CommonName: name, Organization: []string{groupMasters}, Client: true}
}

// uniqueIPs drops invalid and repeated addresses, keeping order: a test
// cluster on loopback has meshIP == 127.0.0.1.
func uniqueIPs(ips ...netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		ip = ip.Unmap()
		if !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out
}

func uniqueNames(names ...string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		if n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, s := range a {
		if !slices.Contains(b, s) {
			return false
		}
	}
	return true
}

func marshalPublic(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("kpki: marshal public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublic, Bytes: der}), nil
}

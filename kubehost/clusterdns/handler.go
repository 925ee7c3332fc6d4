// Package clusterdns answers Kubernetes' cluster domain (cluster.local):
// SERVICE.NAMESPACE.svc.DOMAIN from a Lookup, normally a KubeLookup over
// the cluster's Services and EndpointSlices. It is a handler only: the
// node resolver (package meshdns) owns the listeners on the mesh IP,
// where kubelet's clusterDNS points, checks every query's source,
// forwards the names outside the domain and mounts this Handler for it.
package clusterdns

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/miekg/dns"

	"github.com/runos/runos-agent/meshdns"
)

// Lookup is the source of the names under the cluster domain.
type Lookup interface {
	// Service returns the ClusterIP(s) of NAME.NAMESPACE (ok=false if
	// unknown); for a headless service, the ready endpoint IPs (possibly
	// none). The caller must not modify the returned slice.
	Service(namespace, name string) (ips []netip.Addr, ok bool)
}

// NamespaceLookup is optionally implemented by a Lookup that knows which
// namespaces have services. NAMESPACE.svc.DOMAIN then answers NOERROR
// without records for those and NXDOMAIN for the others; without it, such
// names are NXDOMAIN. This matters for musl's resolver, which stops walking
// the search list at the first NOERROR-without-records answer.
type NamespaceLookup interface {
	Namespace(name string) bool
}

// SyncedLookup is optionally implemented by a Lookup that starts empty and
// fills asynchronously (KubeLookup). Until Synced, names under the domain
// get SERVFAIL, which clients retry, rather than an NXDOMAIN they may
// believe.
type SyncedLookup interface {
	Synced() bool
}

// Config configures a Handler.
type Config struct {
	// Domain is the cluster domain (default "cluster.local").
	Domain string
	// Lookup answers names under Domain (required).
	Lookup Lookup
	// TTL of the records answered from Lookup and of negative answers
	// (default 5 s).
	TTL time.Duration
}

// DefaultDomain is the cluster domain when Config.Domain is empty.
const DefaultDomain = "cluster.local"

// Handler answers the names under the cluster domain (a meshdns.Handler).
type Handler struct {
	lookup Lookup
	auth   *meshdns.Authority
}

// New checks cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.Lookup == nil {
		return nil, errors.New("clusterdns: Lookup is required")
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 5 * time.Second
	}
	auth, err := meshdns.NewAuthority(cfg.Domain, uint32(cfg.TTL/time.Second), "ns.dns", false)
	if err != nil {
		return nil, fmt.Errorf("clusterdns: %w", err)
	}
	return &Handler{lookup: cfg.Lookup, auth: auth}, nil
}

// Domain is the cluster domain served, fully qualified.
func (h *Handler) Domain() string { return h.auth.Zone() }

// Answer answers req, a query for a name under the domain that the node
// resolver has checked (meshdns.Handler).
func (h *Handler) Answer(req *dns.Msg) *dns.Msg { return h.auth.Answer(req, h.find) }

// find is the Authority lookup. The names that exist are the domain
// itself, svc.DOMAIN and NAMESPACE.svc.DOMAIN (empty non-terminals:
// NOERROR without records) and SERVICE.NAMESPACE.svc.DOMAIN; everything
// else is NXDOMAIN. Pod names and SRV records are not served.
func (h *Handler) find(rel []string) ([]netip.Addr, int) {
	if sl, ok := h.lookup.(SyncedLookup); ok && !sl.Synced() {
		return nil, dns.RcodeServerFailure
	}
	switch {
	case len(rel) == 0, len(rel) == 1 && rel[0] == "svc":
		return nil, dns.RcodeSuccess
	case len(rel) == 2 && rel[1] == "svc":
		if nl, ok := h.lookup.(NamespaceLookup); ok && nl.Namespace(rel[0]) {
			return nil, dns.RcodeSuccess
		}
	case len(rel) == 3 && rel[2] == "svc":
		if ips, ok := h.lookup.Service(rel[1], rel[0]); ok {
			return ips, dns.RcodeSuccess
		}
	}
	return nil, dns.RcodeNameError
}

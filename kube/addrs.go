package kube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/runos/runos-agent/templates/kapi"

	"net/url"
)

// ServiceAddrs are the addresses a client reaches Service namespace/name
// at: its ClusterIPs, or for a headless Service the addresses of its
// ready endpoints (all of them when it publishes not-ready addresses), as
// cluster DNS would answer. A missing Service is nil, nil.
func (e *Executor) ServiceAddrs(ctx context.Context, namespace, name string) ([]netip.Addr, error) {
	ns := "/namespaces/" + url.PathEscape(namespace)
	svc, err := e.c.GetObject(ctx, "/api/v1"+ns+"/services/"+url.PathEscape(name), nil)
	if IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get Service %s/%s: %w", namespace, name, e.wrap(err))
	}
	ips := svc.Strings("spec", "clusterIPs")
	if len(ips) == 0 {
		ip, _ := svc.String("spec", "clusterIP")
		ips = []string{ip}
	}
	if ips[0] != "None" {
		return parseAddrs(ips), nil
	}
	all, _ := svc.Bool("spec", "publishNotReadyAddresses")
	list, err := e.c.List(ctx, "/apis/discovery.k8s.io/v1"+ns+"/endpointslices", url.Values{"labelSelector": {"kubernetes.io/service-name=" + name}})
	if err != nil {
		return nil, fmt.Errorf("list EndpointSlices of %s/%s: %w", namespace, name, e.wrap(err))
	}
	var out []string
	for _, es := range list {
		for _, ep := range es.Slice("endpoints") {
			m, ok := ep.(map[string]any)
			if !ok {
				continue
			}
			// A missing ready condition means ready (the API's own rule).
			if ready, found := kapi.Object(m).Bool("conditions", "ready"); found && !ready && !all {
				continue
			}
			out = append(out, kapi.Object(m).Strings("addresses")...)
		}
	}
	return parseAddrs(out), nil
}

// parseAddrs keeps the valid addresses, sorted and without repeats, so an
// unchanged set compares equal.
func parseAddrs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

package kube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	gvrService       = schema.GroupVersionResource{Version: "v1", Resource: "services"}
	gvrEndpointSlice = schema.GroupVersionResource{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"}
)

// ServiceAddrs are the addresses a client reaches Service namespace/name
// at: its ClusterIPs, or for a headless Service the addresses of its
// ready endpoints (all of them when it publishes not-ready addresses), as
// cluster DNS would answer. A missing Service is nil, nil.
func (e *Executor) ServiceAddrs(ctx context.Context, namespace, name string) ([]netip.Addr, error) {
	svc, err := e.dyn.Resource(gvrService).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get Service %s/%s: %w", namespace, name, e.wrap(err))
	}
	ips, _, _ := unstructured.NestedStringSlice(svc.Object, "spec", "clusterIPs")
	if len(ips) == 0 {
		ip, _, _ := unstructured.NestedString(svc.Object, "spec", "clusterIP")
		ips = []string{ip}
	}
	if ips[0] != "None" {
		return parseAddrs(ips), nil
	}
	all, _, _ := unstructured.NestedBool(svc.Object, "spec", "publishNotReadyAddresses")
	list, err := e.dyn.Resource(gvrEndpointSlice).Namespace(namespace).List(ctx, metav1.ListOptions{
		LabelSelector: "kubernetes.io/service-name=" + name})
	if err != nil {
		return nil, fmt.Errorf("list EndpointSlices of %s/%s: %w", namespace, name, e.wrap(err))
	}
	var out []string
	for _, es := range list.Items {
		eps, _, _ := unstructured.NestedSlice(es.Object, "endpoints")
		for _, ep := range eps {
			m, ok := ep.(map[string]any)
			if !ok {
				continue
			}
			// A missing ready condition means ready (the API's own rule).
			if ready, found, _ := unstructured.NestedBool(m, "conditions", "ready"); found && !ready && !all {
				continue
			}
			a, _, _ := unstructured.NestedStringSlice(m, "addresses")
			out = append(out, a...)
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

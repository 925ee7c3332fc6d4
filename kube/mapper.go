package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// mapper finds the resource (and scope) of a kind by asking the API server
// for that one group version's resource list, and caches the answer.
//
// client-go's discovery client would do this too, but it imports the
// typed clientset's scheme, which drags every Kubernetes API group into the
// agent binary and ~17 MB of it into every agent's resident memory at
// start (BenchmarkFootprint); the agent only ever needs a few kinds.
type mapper struct {
	hc   *http.Client // authenticated by the kubeconfig
	host string

	mu    sync.Mutex
	cache map[schema.GroupVersionKind]mapping // guarded by mu
}

type mapping struct {
	gvr        schema.GroupVersionResource
	namespaced bool
}

// errNoMatch means the server does not serve the kind: either not its
// group version at all (a CRD not installed) or not that kind within it (a
// typo, or a kind removed in this Kubernetes version); the message says
// which, since the fixes differ.
type errNoMatch struct {
	gvk      schema.GroupVersionKind
	gvServed bool
}

func (e *errNoMatch) Error() string {
	if e.gvServed {
		return fmt.Sprintf("the cluster serves %s but no kind %s in it", e.gvk.GroupVersion(), e.gvk.Kind)
	}
	return fmt.Sprintf("the cluster does not serve %s", e.gvk.GroupVersion())
}

func newMapper(hc *http.Client, host string) *mapper {
	return &mapper{hc: hc, host: strings.TrimSuffix(host, "/"), cache: map[schema.GroupVersionKind]mapping{}}
}

func (m *mapper) lookup(ctx context.Context, gvk schema.GroupVersionKind) (mapping, error) {
	m.mu.Lock()
	mp, ok := m.cache[gvk]
	m.mu.Unlock()
	if ok {
		return mp, nil
	}
	path := "/apis/" + gvk.Group + "/" + gvk.Version
	if gvk.Group == "" {
		path = "/api/" + gvk.Version
	}
	list, err := m.get(ctx, path)
	if err != nil {
		if errors.Is(err, errNotServed) {
			return mapping{}, &errNoMatch{gvk: gvk}
		}
		return mapping{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range list.APIResources {
		if strings.Contains(r.Name, "/") { // a subresource
			continue
		}
		k := schema.GroupVersionKind{Group: gvk.Group, Version: gvk.Version, Kind: r.Kind}
		m.cache[k] = mapping{gvr: k.GroupVersion().WithResource(r.Name), namespaced: r.Namespaced}
	}
	mp, ok = m.cache[gvk]
	if !ok {
		return mapping{}, &errNoMatch{gvk: gvk, gvServed: true}
	}
	return mp, nil
}

var errNotServed = errors.New("not served")

func (m *mapper) get(ctx context.Context, path string) (*metav1.APIResourceList, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.host+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := m.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, errNotServed
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body[:min(len(body), 200)])))
	}
	var list metav1.APIResourceList
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return &list, nil
}

package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// mapper finds the resource (and scope) of a kind by asking the API server
// for that one group version's resource list, and caches the answer.
//
// client-go's discovery client would do this too, but the agent links no
// client-go (BenchmarkFootprint: it cost every node about 8 MB resident)
// and only ever needs a few kinds.
type mapper struct {
	c *Client

	mu    sync.Mutex
	cache map[gvk]mapping // guarded by mu
}

type mapping struct {
	resource   string // "statefulsets"
	namespaced bool
}

// gvk is an object's group, version and kind.
type gvk struct {
	Group, Version, Kind string
}

func parseGVK(apiVersion, kind string) (gvk, error) {
	if apiVersion == "" || kind == "" {
		return gvk{}, errors.New("apiVersion and kind are required")
	}
	g, v, ok := strings.Cut(apiVersion, "/")
	if !ok {
		g, v = "", apiVersion
	}
	if v == "" || strings.Contains(v, "/") {
		return gvk{}, fmt.Errorf("bad apiVersion %q", apiVersion)
	}
	return gvk{Group: g, Version: v, Kind: kind}, nil
}

func (k gvk) groupVersion() string {
	if k.Group == "" {
		return k.Version
	}
	return k.Group + "/" + k.Version
}

func (k gvk) String() string { return k.groupVersion() + ", Kind=" + k.Kind }

// groupVersionPath is where the group version is served.
func (k gvk) groupVersionPath() string {
	if k.Group == "" {
		return "/api/" + url.PathEscape(k.Version)
	}
	return "/apis/" + url.PathEscape(k.Group) + "/" + url.PathEscape(k.Version)
}

// errNoMatch means the server does not serve the kind: either not its
// group version at all (a CRD not installed) or not that kind within it (a
// typo, or a kind removed in this Kubernetes version); the message says
// which, since the fixes differ.
type errNoMatch struct {
	gvk      gvk
	gvServed bool
}

func (e *errNoMatch) Error() string {
	if e.gvServed {
		return fmt.Sprintf("the cluster serves %s but no kind %s in it", e.gvk.groupVersion(), e.gvk.Kind)
	}
	return fmt.Sprintf("the cluster does not serve %s", e.gvk.groupVersion())
}

func newMapper(c *Client) *mapper {
	return &mapper{c: c, cache: map[gvk]mapping{}}
}

func (m *mapper) lookup(ctx context.Context, k gvk) (mapping, error) {
	m.mu.Lock()
	mp, ok := m.cache[k]
	m.mu.Unlock()
	if ok {
		return mp, nil
	}
	list, err := m.get(ctx, k.groupVersionPath())
	if err != nil {
		if IsNotFound(err) {
			return mapping{}, &errNoMatch{gvk: k}
		}
		return mapping{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range list.APIResources {
		if strings.Contains(r.Name, "/") { // a subresource
			continue
		}
		m.cache[gvk{Group: k.Group, Version: k.Version, Kind: r.Kind}] = mapping{resource: r.Name, namespaced: r.Namespaced}
	}
	mp, ok = m.cache[k]
	if !ok {
		return mapping{}, &errNoMatch{gvk: k, gvServed: true}
	}
	return mp, nil
}

// apiResourceList is the part of a group version's resource list the
// mapper reads.
type apiResourceList struct {
	APIResources []struct {
		Name       string `json:"name"`
		Namespaced bool   `json:"namespaced"`
		Kind       string `json:"kind"`
	} `json:"resources"`
}

func (m *mapper) get(ctx context.Context, path string) (*apiResourceList, error) {
	b, err := m.c.Do(ctx, http.MethodGet, path, nil, "", nil)
	if err != nil {
		return nil, err
	}
	var list apiResourceList
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return &list, nil
}

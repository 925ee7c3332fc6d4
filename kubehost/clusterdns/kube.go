package clusterdns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runos/runos-agent/kube"
)

// KubeLookup is a Lookup over a cluster's Services and EndpointSlices,
// kept by a list-then-watch of each (as client-go's informers do, over
// the plain API client of package kube). Answers come from a map rebuilt
// per service on every change, so a query costs one map read.
type KubeLookup struct {
	log *slog.Logger
	c   *kube.Client // no request timeout: watches are long

	// mu guards the stores and the answers built from them; a change and
	// the rebuild of the services it touches happen under one hold.
	mu       sync.RWMutex
	services map[string]*service        // guarded by mu; by "namespace/name"
	slices   map[string]*endpointSlice  // guarded by mu; by "namespace/name" of the slice
	bySvc    map[string]map[string]bool // guarded by mu; "namespace/service" -> slice keys
	records  map[string][]netip.Addr    // guarded by mu; by "namespace/name"; slices replaced, never modified
	perNS    map[string]int             // guarded by mu; number of records per namespace

	servicesSynced, slicesSynced atomic.Bool

	lifeMu  sync.Mutex
	started bool               // guarded by lifeMu
	closed  bool               // guarded by lifeMu
	cancel  context.CancelFunc // guarded by lifeMu
	wg      sync.WaitGroup     // the two watch loops
}

// service is what the lookup keeps of a Service.
type service struct {
	Metadata struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Type                     string   `json:"type"`
		ClusterIP                string   `json:"clusterIP"`
		ClusterIPs               []string `json:"clusterIPs"`
		PublishNotReadyAddresses bool     `json:"publishNotReadyAddresses"`
	} `json:"spec"`
}

// endpointSlice is what the lookup keeps of an EndpointSlice.
type endpointSlice struct {
	Metadata struct {
		Namespace string            `json:"namespace"`
		Name      string            `json:"name"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	AddressType string `json:"addressType"`
	Endpoints   []struct {
		Addresses  []string `json:"addresses"`
		Conditions struct {
			Ready *bool `json:"ready"`
		} `json:"conditions"`
	} `json:"endpoints"`
}

// serviceNameLabel names an EndpointSlice's Service.
const serviceNameLabel = "kubernetes.io/service-name"

func (s *endpointSlice) serviceKey() string {
	if svc := s.Metadata.Labels[serviceNameLabel]; svc != "" {
		return s.Metadata.Namespace + "/" + svc
	}
	return ""
}

// NewKubeLookup prepares the lookup; Start runs its watches.
func NewKubeLookup(k *kube.Kubeconfig, log *slog.Logger) (*KubeLookup, error) {
	if k == nil {
		return nil, errors.New("clusterdns: kubeconfig is required")
	}
	if log == nil {
		return nil, errors.New("clusterdns: logger is required")
	}
	return &KubeLookup{
		log:      log.With("component", "clusterdns-kube"),
		c:        kube.NewClient(k, 0),
		services: map[string]*service{},
		slices:   map[string]*endpointSlice{},
		bySvc:    map[string]map[string]bool{},
		records:  map[string][]netip.Addr{},
		perNS:    map[string]int{},
	}, nil
}

// Start runs the watches until Close (not until ctx ends) and returns at
// once; Synced tells when the first full listing is in.
func (l *KubeLookup) Start(ctx context.Context) error {
	l.lifeMu.Lock()
	defer l.lifeMu.Unlock()
	if l.closed {
		return errors.New("clusterdns: kube lookup closed")
	}
	if l.started {
		return errors.New("clusterdns: kube lookup already started")
	}
	l.started = true
	ctx, l.cancel = context.WithCancel(context.WithoutCancel(ctx))
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		l.run(ctx, "/api/v1/services", &l.servicesSynced, l.replaceServices, l.serviceEvent)
	}()
	go func() {
		defer l.wg.Done()
		l.run(ctx, "/apis/discovery.k8s.io/v1/endpointslices", &l.slicesSynced, l.replaceSlices, l.sliceEvent)
	}()
	l.log.Debug("watching services and endpoint slices")
	return nil
}

// Close stops the watches and waits for their goroutines. Idempotent.
func (l *KubeLookup) Close() error {
	l.lifeMu.Lock()
	if l.closed {
		l.lifeMu.Unlock()
		return nil
	}
	l.closed = true
	if l.cancel != nil {
		l.cancel()
	}
	l.lifeMu.Unlock()
	l.wg.Wait()
	l.c.Close()
	return nil
}

// Synced reports whether both kinds have been listed once (SyncedLookup).
func (l *KubeLookup) Synced() bool { return l.servicesSynced.Load() && l.slicesSynced.Load() }

// WaitSynced waits for Synced or ctx.
func (l *KubeLookup) WaitSynced(ctx context.Context) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !l.Synced() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("clusterdns: services not synced: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Service implements Lookup.
func (l *KubeLookup) Service(namespace, name string) ([]netip.Addr, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	ips, ok := l.records[namespace+"/"+name]
	return ips, ok
}

// Namespace implements NamespaceLookup: true if it has a service.
func (l *KubeLookup) Namespace(name string) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.perNS[name] > 0
}

// watchEvent is one line of a watch stream.
type watchEvent struct {
	Type   string          `json:"type"` // ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
	Object json.RawMessage `json:"object"`
}

// errExpired means the watch's resource version is too old: list again.
var errExpired = errors.New("resource version expired")

// run lists path, hands the items to replace, then watches from the
// list's resource version and hands each event to apply; it lists again
// when the version expires and backs off on errors, until ctx ends.
func (l *KubeLookup) run(ctx context.Context, path string, synced *atomic.Bool, replace func([]json.RawMessage), apply func(typ string, obj json.RawMessage)) {
	backoff := time.Second
	for ctx.Err() == nil {
		rv, err := l.list(ctx, path, replace)
		if err == nil {
			synced.Store(true)
			backoff = time.Second
			for err == nil {
				rv, err = l.watch(ctx, path, rv, apply)
			}
		}
		if ctx.Err() != nil {
			return
		}
		if !errors.Is(err, errExpired) {
			l.log.Debug("watch", "path", path, "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	}
}

func (l *KubeLookup) list(ctx context.Context, path string, replace func([]json.RawMessage)) (string, error) {
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	body, err := l.c.Open(lctx, path, nil)
	if err != nil {
		return "", err
	}
	defer body.Close()
	var list struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Items []json.RawMessage `json:"items"`
	}
	if err := json.NewDecoder(body).Decode(&list); err != nil {
		return "", fmt.Errorf("list %s: %w", path, err)
	}
	replace(list.Items)
	return list.Metadata.ResourceVersion, nil
}

// watch follows one watch request from rv and returns the last resource
// version seen when the server ends it (a nil error: watch again).
func (l *KubeLookup) watch(ctx context.Context, path, rv string, apply func(typ string, obj json.RawMessage)) (string, error) {
	body, err := l.c.Open(ctx, path, url.Values{
		"watch": {"1"}, "resourceVersion": {rv}, "allowWatchBookmarks": {"true"},
		// The server ends the watch after this; the next one resumes at
		// the last version seen.
		"timeoutSeconds": {"600"},
	})
	if err != nil {
		if code := statusCode(err); code == 410 {
			return rv, errExpired
		}
		return rv, err
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	for {
		var ev watchEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				return rv, nil
			}
			return rv, fmt.Errorf("watch %s: %w", path, err)
		}
		var meta struct {
			Code     int `json:"code"`
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
			} `json:"metadata"`
		}
		json.Unmarshal(ev.Object, &meta)
		switch ev.Type {
		case "ERROR":
			if meta.Code == 410 {
				return rv, errExpired
			}
			return rv, fmt.Errorf("watch %s: %s", path, ev.Object)
		case "ADDED", "MODIFIED", "DELETED":
			apply(ev.Type, ev.Object)
		}
		if meta.Metadata.ResourceVersion != "" {
			rv = meta.Metadata.ResourceVersion
		}
	}
}

func statusCode(err error) int {
	var e *kube.APIError
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func (l *KubeLookup) replaceServices(items []json.RawMessage) {
	next := map[string]*service{}
	for _, raw := range items {
		var s service
		if json.Unmarshal(raw, &s) == nil {
			next[s.Metadata.Namespace+"/"+s.Metadata.Name] = &s
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	touched := map[string]bool{}
	for k := range l.services {
		touched[k] = true
	}
	for k := range next {
		touched[k] = true
	}
	l.services = next
	for k := range touched {
		l.rebuild(k)
	}
}

func (l *KubeLookup) serviceEvent(typ string, raw json.RawMessage) {
	var s service
	if json.Unmarshal(raw, &s) != nil {
		return
	}
	key := s.Metadata.Namespace + "/" + s.Metadata.Name
	l.mu.Lock()
	defer l.mu.Unlock()
	if typ == "DELETED" {
		delete(l.services, key)
	} else {
		l.services[key] = &s
	}
	l.rebuild(key)
}

func (l *KubeLookup) replaceSlices(items []json.RawMessage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	touched := map[string]bool{}
	for k := range l.bySvc {
		touched[k] = true
	}
	l.slices, l.bySvc = map[string]*endpointSlice{}, map[string]map[string]bool{}
	for _, raw := range items {
		var s endpointSlice
		if json.Unmarshal(raw, &s) == nil {
			l.putSlice(&s)
			if k := s.serviceKey(); k != "" {
				touched[k] = true
			}
		}
	}
	for k := range touched {
		l.rebuild(k)
	}
}

func (l *KubeLookup) sliceEvent(typ string, raw json.RawMessage) {
	var s endpointSlice
	if json.Unmarshal(raw, &s) != nil {
		return
	}
	key := s.Metadata.Namespace + "/" + s.Metadata.Name
	l.mu.Lock()
	defer l.mu.Unlock()
	// The service label may have changed: rebuild the old service too.
	var old string
	if prev := l.slices[key]; prev != nil {
		old = prev.serviceKey()
		l.dropSlice(key, prev)
	}
	if typ != "DELETED" {
		l.putSlice(&s)
	}
	for _, k := range []string{old, s.serviceKey()} {
		if k != "" {
			l.rebuild(k)
		}
	}
}

// putSlice and dropSlice keep slices and bySvc in step; mu is held.
func (l *KubeLookup) putSlice(s *endpointSlice) {
	key := s.Metadata.Namespace + "/" + s.Metadata.Name
	l.slices[key] = s
	if svc := s.serviceKey(); svc != "" {
		if l.bySvc[svc] == nil {
			l.bySvc[svc] = map[string]bool{}
		}
		l.bySvc[svc][key] = true
	}
}

func (l *KubeLookup) dropSlice(key string, s *endpointSlice) {
	delete(l.slices, key)
	if svc := s.serviceKey(); svc != "" {
		delete(l.bySvc[svc], key)
		if len(l.bySvc[svc]) == 0 {
			delete(l.bySvc, svc)
		}
	}
}

// rebuild recomputes the record of one service ("namespace/name") from
// the stores; mu is held.
func (l *KubeLookup) rebuild(key string) {
	namespace, _, _ := strings.Cut(key, "/")
	ips, ok := l.compute(key)
	_, had := l.records[key]
	switch {
	case ok:
		l.records[key] = ips
		if !had {
			l.perNS[namespace]++
		}
	case had:
		delete(l.records, key)
		if l.perNS[namespace]--; l.perNS[namespace] <= 0 {
			delete(l.perNS, namespace)
		}
	}
}

// compute is the answer for a service: its cluster IPs, or for a headless
// one the ready endpoints of its slices. ExternalName services are not
// served (ok=false). mu is held.
func (l *KubeLookup) compute(key string) ([]netip.Addr, bool) {
	svc, ok := l.services[key]
	if !ok || svc.Spec.Type == "ExternalName" {
		return nil, false
	}
	var ips []netip.Addr
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !slices.Contains(ips, a.Unmap()) {
			ips = append(ips, a.Unmap())
		}
	}
	if svc.Spec.ClusterIP != "None" {
		for _, ip := range svc.Spec.ClusterIPs {
			add(ip)
		}
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			add(svc.Spec.ClusterIP)
		}
		return ips, true
	}
	for sk := range l.bySvc[key] {
		s := l.slices[sk]
		if s == nil || (s.AddressType != "IPv4" && s.AddressType != "IPv6") {
			continue
		}
		for _, ep := range s.Endpoints {
			// A nil Ready is unknown, which consumers are to take as ready.
			if !svc.Spec.PublishNotReadyAddresses && ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				add(a)
			}
		}
	}
	// Same order whichever slice event came last.
	slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	return ips, true
}

package clusterdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// KubeLookup is a Lookup over a cluster's Services and EndpointSlices,
// kept by client-go informers. Answers come from a map rebuilt per service
// on every change, so a query costs one map read.
//
// The informers run over plain REST clients for the two API groups rather
// than client-go's generated clientset and informer factory, which would
// link every API group's client into the agent (some 20 MB).
type KubeLookup struct {
	log        *slog.Logger
	httpClient *http.Client
	services   cache.SharedIndexInformer
	slices     cache.SharedIndexInformer
	regs       []cache.ResourceEventHandlerRegistration

	// mu is held across a rebuild, reads of the informer stores included:
	// the Service and the EndpointSlice handlers run on different
	// goroutines, and the later rebuild must also be the later write.
	mu      sync.RWMutex
	records map[string][]netip.Addr // guarded by mu; by "namespace/name"; slices replaced, never modified
	perNS   map[string]int          // guarded by mu; number of records per namespace

	lifeMu  sync.Mutex
	started bool               // guarded by lifeMu
	closed  bool               // guarded by lifeMu
	cancel  context.CancelFunc // guarded by lifeMu
	wg      sync.WaitGroup     // the informers' Run
}

// sliceServiceIndex indexes EndpointSlices by "namespace/service".
const sliceServiceIndex = "service"

// NewKubeLookup prepares the informers; Start runs them.
func NewKubeLookup(cfg *rest.Config, log *slog.Logger) (*KubeLookup, error) {
	if cfg == nil {
		return nil, errors.New("clusterdns: rest config is required")
	}
	if log == nil {
		return nil, errors.New("clusterdns: logger is required")
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = "runos-agent/clusterdns"
	}
	// Our own HTTP client, so Close can drop its idle connections.
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("clusterdns: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := discoveryv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	codecs := serializer.NewCodecFactory(scheme).WithoutConversion()
	client := func(gv schema.GroupVersion, apiPath string) (*rest.RESTClient, error) {
		c := rest.CopyConfig(cfg)
		c.GroupVersion, c.APIPath, c.NegotiatedSerializer = &gv, apiPath, codecs
		rc, err := rest.RESTClientForConfigAndClient(c, hc)
		if err != nil {
			return nil, fmt.Errorf("clusterdns: %w", err)
		}
		return rc, nil
	}
	core, err := client(corev1.SchemeGroupVersion, "/api")
	if err != nil {
		return nil, err
	}
	disco, err := client(discoveryv1.SchemeGroupVersion, "/apis")
	if err != nil {
		return nil, err
	}
	l := &KubeLookup{
		log:        log.With("component", "clusterdns-kube"),
		httpClient: hc,
		records:    map[string][]netip.Addr{},
		perNS:      map[string]int{},
	}
	l.services = cache.NewSharedIndexInformer(
		cache.NewListWatchFromClient(core, "services", metav1.NamespaceAll, fields.Everything()),
		&corev1.Service{}, 0, cache.Indexers{})
	l.slices = cache.NewSharedIndexInformer(
		cache.NewListWatchFromClient(disco, "endpointslices", metav1.NamespaceAll, fields.Everything()),
		&discoveryv1.EndpointSlice{}, 0, cache.Indexers{})
	for _, inf := range []cache.SharedIndexInformer{l.services, l.slices} {
		if err := inf.SetTransform(stripManagedFields); err != nil {
			return nil, err
		}
	}
	if err := l.slices.AddIndexers(cache.Indexers{sliceServiceIndex: func(obj any) ([]string, error) {
		if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
			if svc := s.Labels[discoveryv1.LabelServiceName]; svc != "" {
				return []string{s.Namespace + "/" + svc}, nil
			}
		}
		return nil, nil
	}}); err != nil {
		return nil, fmt.Errorf("clusterdns: %w", err)
	}
	reg, err := l.services.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { l.serviceChanged(obj) },
		UpdateFunc: func(_, obj any) { l.serviceChanged(obj) },
		DeleteFunc: func(obj any) { l.serviceChanged(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("clusterdns: %w", err)
	}
	l.regs = append(l.regs, reg)
	reg, err = l.slices.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { l.sliceChanged(obj) },
		UpdateFunc: func(old, obj any) {
			// The service label may have changed: both services.
			l.sliceChanged(old)
			l.sliceChanged(obj)
		},
		DeleteFunc: func(obj any) { l.sliceChanged(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("clusterdns: %w", err)
	}
	l.regs = append(l.regs, reg)
	return l, nil
}

// stripManagedFields keeps server-side-apply bookkeeping out of the cache.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// Start runs the informers until Close (not until ctx ends) and returns at
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
	for _, inf := range []cache.SharedIndexInformer{l.services, l.slices} {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			inf.RunWithContext(ctx)
		}()
	}
	l.log.Debug("watching services and endpoint slices")
	return nil
}

// Close stops the informers and waits for their goroutines. Idempotent.
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
	l.httpClient.CloseIdleConnections()
	return nil
}

// Synced reports whether both informers have listed everything once and
// the handlers have seen it (SyncedLookup).
func (l *KubeLookup) Synced() bool {
	for _, r := range l.regs {
		if !r.HasSynced() {
			return false
		}
	}
	return true
}

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

func (l *KubeLookup) serviceChanged(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if s, ok := obj.(*corev1.Service); ok {
		l.rebuild(s.Namespace, s.Name)
	}
}

func (l *KubeLookup) sliceChanged(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	if svc := s.Labels[discoveryv1.LabelServiceName]; svc != "" {
		l.rebuild(s.Namespace, svc)
	}
}

// rebuild recomputes the record of one service from the informer stores.
func (l *KubeLookup) rebuild(namespace, name string) {
	key := namespace + "/" + name
	l.mu.Lock()
	defer l.mu.Unlock()
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
// served (ok=false).
func (l *KubeLookup) compute(key string) ([]netip.Addr, bool) {
	obj, exists, err := l.services.GetIndexer().GetByKey(key)
	if err != nil || !exists {
		return nil, false
	}
	svc, ok := obj.(*corev1.Service)
	if !ok || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, false
	}
	var ips []netip.Addr
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !slices.Contains(ips, a.Unmap()) {
			ips = append(ips, a.Unmap())
		}
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		for _, ip := range svc.Spec.ClusterIPs {
			add(ip)
		}
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			add(svc.Spec.ClusterIP)
		}
		return ips, true
	}
	objs, err := l.slices.GetIndexer().ByIndex(sliceServiceIndex, key)
	if err != nil {
		return nil, true
	}
	for _, o := range objs {
		s, ok := o.(*discoveryv1.EndpointSlice)
		if !ok || (s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6) {
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

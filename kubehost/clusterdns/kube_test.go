package clusterdns_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/runos/runos-agent/kube"

	"github.com/runos/runos-agent/kube/kubetest"
	"github.com/runos/runos-agent/kubehost/clusterdns"
	"github.com/runos/runos-agent/meshdns/dnstest"
)

var (
	servicesGVR = schema.GroupVersionResource{Version: "v1", Resource: "services"}
	slicesGVR   = schema.GroupVersionResource{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"}
)

func toUnstructured(t *testing.T, obj runtime.Object, apiVersion, kind string) *unstructured.Unstructured {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion(apiVersion)
	u.SetKind(kind)
	return u
}

func endpoint(ip string, ready *bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
}

// eventually polls a query until it gives rcode and the wanted addresses;
// the informers see API changes after a moment.
func eventually(t *testing.T, h *clusterdns.Handler, name string, rcode int, want ...string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := ask(h, name, dns.TypeA)
		got := dnstest.AnswerIPs(r)
		if r.Rcode == rcode && slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s %v, want %s %v", name, dns.RcodeToString[r.Rcode], got, dns.RcodeToString[rcode], want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestKubeLookup resolves services of a real kube-apiserver through the
// handler: the default kubernetes service, a ClusterIP service, and a
// headless one whose ready endpoints come from an EndpointSlice, following
// changes as they happen.
func TestKubeLookup(t *testing.T) {
	api := kubetest.Start(t, kubetest.Options{NoControllerManager: true})
	rc, err := clientcmd.RESTConfigFromKubeConfig(api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := kubetest.Context(t, 5*time.Minute)

	kl := newKubeLookup(t, api.Kubeconfig)
	h := newHandler(t, kl)
	// Not listed yet: SERVFAIL, not NXDOMAIN.
	expect(t, ask(h, "kubernetes.default.svc.cluster.local.", dns.TypeA), dns.RcodeServerFailure)

	if err := kl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := kl.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	// The API server's own service: the first address of its service range
	// (created by the API server shortly after it is ready).
	eventually(t, h, "kubernetes.default.svc.cluster.local.", dns.RcodeSuccess, "10.96.0.1")
	expect(t, ask(h, "default.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess)
	expect(t, ask(h, "web.default.svc.cluster.local.", dns.TypeA), dns.RcodeNameError)

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}, Selector: map[string]string{"app": "web"}},
	}
	created, err := dyn.Resource(servicesGVR).Namespace("default").Create(ctx, toUnstructured(t, svc, "v1", "Service"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clusterIP, _, _ := unstructured.NestedString(created.Object, "spec", "clusterIP")
	if clusterIP == "" {
		t.Fatalf("no clusterIP allocated: %v", created.Object["spec"])
	}
	eventually(t, h, "web.default.svc.cluster.local.", dns.RcodeSuccess, clusterIP)

	// Headless, in a namespace of its own, with two slices (one endpoint
	// not ready, one of unknown readiness, which counts as ready).
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "db"}}
	if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).Create(ctx, toUnstructured(t, ns, "v1", "Namespace"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(t, ask(h, "db.svc.cluster.local.", dns.TypeA), dns.RcodeNameError) // no service yet
	headless := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "pg", Namespace: "db"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 5432}}},
	}
	if _, err := dyn.Resource(servicesGVR).Namespace("db").Create(ctx, toUnstructured(t, headless, "v1", "Service"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Known but no endpoints yet: NOERROR without addresses.
	eventually(t, h, "pg.db.svc.cluster.local.", dns.RcodeSuccess)
	expect(t, ask(h, "db.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess)

	yes, no := true, false
	slice := func(name string, eps ...discoveryv1.Endpoint) *unstructured.Unstructured {
		return toUnstructured(t, &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "db",
				Labels: map[string]string{discoveryv1.LabelServiceName: "pg"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   eps,
		}, "discovery.k8s.io/v1", "EndpointSlice")
	}
	sliceAPI := dyn.Resource(slicesGVR).Namespace("db")
	if _, err := sliceAPI.Create(ctx, slice("pg-a", endpoint("172.25.1.7", &yes), endpoint("172.25.1.8", &no)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := sliceAPI.Create(ctx, slice("pg-b", endpoint("172.25.2.9", nil)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, h, "pg.db.svc.cluster.local.", dns.RcodeSuccess, "172.25.1.7", "172.25.2.9")

	// The not-ready pod becomes ready; a slice goes away.
	got, err := sliceAPI.Get(ctx, "pg-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	upd := slice("pg-a", endpoint("172.25.1.7", &yes), endpoint("172.25.1.8", &yes))
	upd.SetResourceVersion(got.GetResourceVersion())
	if _, err := sliceAPI.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, h, "pg.db.svc.cluster.local.", dns.RcodeSuccess, "172.25.1.7", "172.25.1.8", "172.25.2.9")
	if err := sliceAPI.Delete(ctx, "pg-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, h, "pg.db.svc.cluster.local.", dns.RcodeSuccess, "172.25.1.7", "172.25.1.8")

	// Deleted services are gone.
	if err := dyn.Resource(servicesGVR).Namespace("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, h, "web.default.svc.cluster.local.", dns.RcodeNameError)
	if err := dyn.Resource(servicesGVR).Namespace("db").Delete(ctx, "pg", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, h, "pg.db.svc.cluster.local.", dns.RcodeNameError)
	expect(t, ask(h, "db.svc.cluster.local.", dns.TypeA), dns.RcodeNameError)

	// Close is idempotent and stops the informers (TestMain checks for
	// leaked goroutines).
	kl.Close()
	kl.Close()
	if err := kl.Start(context.Background()); err == nil {
		t.Error("Start after Close succeeded")
	}
}

// newKubeLookup is a KubeLookup of the API server kubeconfig names, not
// started; the test's end closes it.
func newKubeLookup(t *testing.T, kubeconfig []byte) *clusterdns.KubeLookup {
	t.Helper()
	kc, err := kube.Load(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kl, err := clusterdns.NewKubeLookup(kc, dnstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kl.Close() })
	return kl
}

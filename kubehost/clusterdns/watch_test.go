package clusterdns_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/runos/runos-agent/kube/kubetest"
)

// expiringAPI serves Services the way an API server whose watch cache
// moved on does: the first watch after a list answers 410 Gone (an ERROR
// event), and what the next list returns is what the lookup must show.
// The real API server (TestKubeLookup) cannot be made to expire a version
// on demand.
type expiringAPI struct {
	mu      sync.Mutex
	lists   int    // guarded by mu
	ip      string // guarded by mu; web's ClusterIP in the next list
	watches int    // guarded by mu
}

func (a *expiringAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	watch := r.URL.Query().Get("watch") == "1"
	if r.URL.Path == "/apis/discovery.k8s.io/v1/endpointslices" && watch {
		<-r.Context().Done() // nothing changes
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch r.URL.Path {
	case "/apis/discovery.k8s.io/v1/endpointslices":
		fmt.Fprint(w, `{"metadata":{"resourceVersion":"1"},"items":[]}`)
	case "/api/v1/services":
		if watch {
			a.watches++
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version"}}`+"\n")
			return
		}
		a.lists++
		fmt.Fprintf(w, `{"metadata":{"resourceVersion":"%d"},"items":[{"metadata":{"namespace":"shop","name":"web"},"spec":{"type":"ClusterIP","clusterIP":%q,"clusterIPs":[%q]}}]}`, a.lists, a.ip, a.ip)
	default:
		http.NotFound(w, r)
	}
}

func (a *expiringAPI) setIP(ip string) {
	a.mu.Lock()
	a.ip = ip
	a.mu.Unlock()
}

// A watch whose resource version expired leads to a new list,
// and the answers follow the new list.
func TestKubeLookupListsAgainWhenTheWatchExpires(t *testing.T) {
	api := &expiringAPI{ip: "10.96.0.10"}
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	kl := newKubeLookup(t, []byte("apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: "+srv.URL+
		"\nusers:\n- name: u\n  user: {}\ncontexts:\n- name: k\n  context:\n    cluster: k\n    user: u\ncurrent-context: k\n"))
	h := newHandler(t, kl)
	if err := kl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx := kubetest.Context(t, 30*time.Second)
	if err := kl.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	api.setIP("10.96.0.20")
	for {
		r := ask(h, "web.shop.svc.cluster.local.", dns.TypeA)
		if len(r.Answer) == 1 && r.Answer[0].(*dns.A).A.String() == "10.96.0.20" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("still answering %v after the watch expired", r.Answer)
		}
		time.Sleep(20 * time.Millisecond)
	}
	api.mu.Lock()
	defer api.mu.Unlock()
	if api.lists < 2 || api.watches < 1 {
		t.Errorf("%d lists, %d watches", api.lists, api.watches)
	}
}

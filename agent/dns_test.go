package agent

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/runos/runos-agent/kubehost/clusterdns"
	"github.com/runos/runos-agent/meshdns/dnstest"
)

// With the resolver off (--dns=false) nothing listens, until managed
// Kubernetes mounts its cluster DNS: its pods resolve through the mesh
// IP (kubelet's clusterDNS), so the resolver then serves there, and only
// there, until Kubernetes goes away again.
func TestDNSOffListensOnlyForManagedKubernetes(t *testing.T) {
	c := newCluster(t, 1)
	a := c.restartWith(0, func(cfg *Config) { cfg.DNS = DNSConfig{Off: true, Loopback: []string{"127.0.0.1:0"}} })
	if st := a.DNSStatus(); st.Enabled || len(a.dns.Addrs()) != 0 {
		t.Fatalf("resolver off: status %+v, listening on %v", st, a.dns.Addrs())
	}

	l := dnstest.NewLookup()
	l.Set("default", "web", netip.MustParseAddr("10.96.0.10"))
	h, err := clusterdns.New(clusterdns.Config{Lookup: l})
	if err != nil {
		t.Fatal(err)
	}
	a.mountClusterDNS(h.Domain(), h) // as kubehost does once its API is up
	mesh := netip.AddrPortFrom(a.cfg.MeshIP, 53)
	if st := a.DNSStatus(); !st.Enabled || !slices.Equal(st.Listen, []string{mesh.String()}) {
		t.Fatalf("with cluster DNS mounted: status %+v, want listening on %v only", st, mesh)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := a.Net().DialContext(ctx, "udp", mesh.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	m := new(dns.Msg)
	m.SetQuestion("web.default.svc.cluster.local.", dns.TypeA)
	r, _, err := (&dns.Client{}).ExchangeWithConn(m, &dns.Conn{Conn: conn})
	if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.96.0.10" {
		t.Fatalf("cluster name on %v: %v %v", mesh, r, err)
	}

	a.mountClusterDNS(h.Domain(), nil)
	if st := a.DNSStatus(); st.Enabled || len(a.dns.Addrs()) != 0 {
		t.Fatalf("after unmount: status %+v, listening on %v", st, a.dns.Addrs())
	}
}

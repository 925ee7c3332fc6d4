package agent_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/runos/runos-agent/agent"
	"github.com/runos/runos-agent/agent/agenttest"
	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/raftstore"
)

// queryOver asks addr ("meshIP:53") through from's overlay, so the query
// travels inside WireGuard and arrives from from's mesh IP.
func queryOver(from *agent.Agent, network, addr, name string, qtype uint16) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := from.Net().DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: network}
	r, _, err := c.ExchangeWithConn(m, &dns.Conn{Conn: conn})
	return r, err
}

// Every node resolves NODE.<zone> and OSID.<zone> from its own copy of the
// state: with the leader stopped, a follower still answers every name,
// the stopped leader's included, over UDP and TCP through the mesh; an
// unknown name is NXDOMAIN. The zone is the cluster's setting.
func TestDNSFromFollowerWithLeaderDown(t *testing.T) {
	c := agenttest.Start(t, 3)
	ctx := context.Background()
	l := c.Leader()

	// A service whose reconciler recorded its ClusterIP (written here as
	// the reconciler would: no Kubernetes in this test).
	const osid = "redis-x2abc"
	for _, cmd := range []*raftstore.Command{
		{Op: raftstore.OpWorkloadServiceCreate, Workload: &raftstore.WorkloadCmd{Service: &raftstore.ServiceRecord{
			OSID: osid, Service: "redis", Tier: "lightweight", Credentials: "sealed"}}},
		{Op: raftstore.OpWorkloadStatus, Workload: &raftstore.WorkloadCmd{OSID: osid, Status: &raftstore.Observed{
			Phase: raftstore.PhaseReady, Generation: 1, Addrs: []netip.Addr{netip.MustParseAddr("10.96.7.7")}}}},
	} {
		if res, err := l.Store().Apply(ctx, cmd); err != nil || res.Error() != nil {
			t.Fatalf("%s: %v %v", cmd.Op, err, res.Error())
		}
	}
	if _, err := l.SetDNSZone(ctx, api.DNSZoneRequest{Zone: "Lab.Example"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.SetDNSZone(ctx, api.DNSZoneRequest{Zone: "nodots"}); err == nil {
		t.Fatal("a one-label zone was accepted")
	}
	want := map[string]string{osid: "10.96.7.7"}
	for _, a := range c.Running() {
		want[a.Name()] = a.NodeConfig().MeshIP.String()
	}
	var asker, answerer *agent.Agent
	for _, a := range c.Running() {
		if a == l {
			continue
		}
		if answerer == nil {
			answerer = a
		} else {
			asker = a
		}
	}
	c.Stop(c.Index(l))
	t.Logf("leader %s stopped; %s asks %s", l.Name(), asker.Name(), answerer.Name())

	server := netip.AddrPortFrom(answerer.NodeConfig().MeshIP, 53).String()
	agenttest.Eventually(t, "names from the follower", func() error {
		for _, network := range []string{"udp", "tcp"} {
			for name, ip := range want {
				r, err := queryOver(asker, network, server, name+".lab.example.", dns.TypeA)
				if err != nil {
					return fmt.Errorf("%s %s: %w", network, name, err)
				}
				if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != ip {
					return fmt.Errorf("%s %s: %v, want %s", network, name, r, ip)
				}
			}
		}
		return nil
	})
	r, err := queryOver(asker, "udp", server, "nope.lab.example.", dns.TypeA)
	if err != nil || r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
		t.Fatalf("unknown name: %v %v, want NXDOMAIN with the SOA", r, err)
	}
	if r, err := queryOver(asker, "udp", server, l.Name()+".runos.internal.", dns.TypeA); err != nil || r.Rcode == dns.RcodeSuccess {
		t.Fatalf("old zone still answered locally: %v %v", r, err)
	}
	st := answerer.DNSStatus()
	if !st.Enabled || st.Zone != "lab.example" || !slices.Contains(st.Listen, server) || st.Queries["local"] == 0 {
		t.Fatalf("status %+v", st)
	}
}

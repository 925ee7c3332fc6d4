package raftstore

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

// The zone is cluster state: set, normalised, reset to the default with an
// empty zone; a bad name is refused and changes nothing.
func TestSetDNSZone(t *testing.T) {
	s := bootstrapped(t)
	if got := s.EffectiveDNSZone(); got != DefaultDNSZone {
		t.Fatalf("default zone %q", got)
	}
	set := func(idx uint64, zone string) error {
		return s.apply(idx, &Command{ID: "z" + string(rune('0'+idx)), Time: t0, Op: OpSetDNSZone, DNS: &DNSCmd{Zone: zone}}).Error()
	}
	if err := set(3, "Lab.Example."); err != nil || s.EffectiveDNSZone() != "lab.example" {
		t.Fatalf("set: %v, zone %q", err, s.EffectiveDNSZone())
	}
	for i, bad := range []string{"internal", "a..b", "-a.b", "a_b.c", "a b.c", "x.y-"} {
		if err := set(uint64(4+i), bad); !errors.Is(err, ErrDNSZone) {
			t.Fatalf("%q: %v, want ErrDNSZone", bad, err)
		}
	}
	if s.EffectiveDNSZone() != "lab.example" {
		t.Fatalf("a refused zone changed it to %q", s.EffectiveDNSZone())
	}
	if v := s.View(); v.EffectiveDNSZone() != "lab.example" {
		t.Fatal("View lost the zone")
	}
	if err := set(20, ""); err != nil || s.DNS != nil || s.EffectiveDNSZone() != DefaultDNSZone {
		t.Fatalf("reset: %v, %v", err, s.DNS)
	}
	if err := s.apply(21, &Command{ID: "z21", Time: t0, Op: OpSetDNSZone}).Error(); !errors.Is(err, ErrMalformedCmd) {
		t.Fatalf("no payload: %v", err)
	}
}

// The zone's names: nodes by name, workloads by OSID with their recorded
// addresses, apps also by their name when it is a DNS label nothing else
// holds, deleted workloads gone, and a node name wins a clash.
func TestDNSNames(t *testing.T) {
	s := NewState()
	s.Nodes["n1"] = &Node{ID: "n1", Name: "Alpha", MeshIP: netip.MustParseAddr("172.24.0.1")}
	s.Nodes["n2"] = &Node{ID: "n2", Name: "pg-x2abc", MeshIP: netip.MustParseAddr("172.24.0.2")}
	s.Workloads.Services = map[string]*ServiceRecord{
		"redis-y3def": {OSID: "redis-y3def", Desired: DesiredPresent, Status: Observed{Addrs: []netip.Addr{netip.MustParseAddr("10.96.0.7")}}},
		"pg-x2abc":    {OSID: "pg-x2abc", Desired: DesiredPresent, Status: Observed{Addrs: []netip.Addr{netip.MustParseAddr("10.96.0.8")}}},
		"old-z4ghj":   {OSID: "old-z4ghj", Desired: DesiredDeleted, Status: Observed{Addrs: []netip.Addr{netip.MustParseAddr("10.96.0.9")}}},
	}
	app := func(osid, name string, desired string, addr string) *AppRecord {
		r := &AppRecord{OSID: osid, Name: name, Desired: desired}
		if addr != "" {
			r.Status.Addrs = []netip.Addr{netip.MustParseAddr(addr)}
		}
		return r
	}
	s.Workloads.Apps = map[string]*AppRecord{
		"web-k5mnp":  app("web-k5mnp", "Shop", DesiredPresent, ""),
		"api-m6pqr":  app("api-m6pqr", "alpha", DesiredPresent, "10.96.0.11"),        // a node's name: the node wins
		"cron-n7stu": app("cron-n7stu", "redis-y3def", DesiredPresent, "10.96.0.12"), // an OSID: the OSID wins
		"bad-p8vwx":  app("bad-p8vwx", "my app", DesiredPresent, "10.96.0.13"),       // no DNS label: no alias
		"gone-q9xyz": app("gone-q9xyz", "gone", DesiredDeleted, "10.96.0.14"),
		"one-r2abc":  app("one-r2abc", "Blog", DesiredPresent, "10.96.0.15"), // two apps, one name in two cases:
		"two-s3def":  app("two-s3def", "blog", DesiredPresent, "10.96.0.16"), // neither gets it
	}
	got := s.DNSNames()
	want := map[string]string{"alpha": "[172.24.0.1]", "pg-x2abc": "[172.24.0.2]", "redis-y3def": "[10.96.0.7]", "web-k5mnp": "[]",
		"shop": "[]", "api-m6pqr": "[10.96.0.11]", "cron-n7stu": "[10.96.0.12]", "bad-p8vwx": "[10.96.0.13]",
		"one-r2abc": "[10.96.0.15]", "two-s3def": "[10.96.0.16]"}
	if len(got) != len(want) {
		t.Fatalf("names %v, want %v", got, want)
	}
	for k, v := range want {
		if a, ok := got[k]; !ok || fmt.Sprint(a) != v {
			t.Errorf("%s: %v (present %v), want %s", k, a, ok, v)
		}
	}
}

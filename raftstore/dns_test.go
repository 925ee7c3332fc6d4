package raftstore

import (
	"errors"
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

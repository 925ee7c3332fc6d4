package raftstore

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// The cluster's DNS zone: every node's resolver (package meshdns) answers
// NODE.<zone> and OSID.<zone> from this state. Changed by OpSetDNSZone.

// DefaultDNSZone is the zone of a cluster that never set one.
const DefaultDNSZone = "runos.internal"

// OpSetDNSZone replaces the cluster's DNS settings (Command.DNS).
const OpSetDNSZone = "set_dns_zone"

// ErrDNSZone means a zone name is not acceptable.
var ErrDNSZone = errors.New("invalid DNS zone")

// DNSState is the cluster's DNS settings. It is replaced, never mutated,
// so copies of the state may share it.
type DNSState struct {
	// Zone is lower case, without the trailing dot; empty: DefaultDNSZone.
	Zone string `json:"zone,omitempty"`
}

// DNSCmd is the payload of OpSetDNSZone.
type DNSCmd struct {
	Zone string `json:"zone"` // "": back to the default
}

// EffectiveDNSZone is the cluster's zone, the default filled in.
func (s *State) EffectiveDNSZone() string {
	if s.DNS == nil || s.DNS.Zone == "" {
		return DefaultDNSZone
	}
	return s.DNS.Zone
}

// NormalizeDNSZone checks a zone name and returns it lower case without
// the trailing dot: two or more labels of letters, digits and inner
// hyphens, 63 bytes each, 200 in all. A single label would shadow a
// top-level domain for every client of the resolver.
func NormalizeDNSZone(zone string) (string, error) {
	z := strings.ToLower(strings.TrimSuffix(zone, "."))
	labels := strings.Split(z, ".")
	if len(z) == 0 || len(z) > 200 || len(labels) < 2 {
		return "", fmt.Errorf("%q: want two or more labels, like runos.internal: %w", zone, ErrDNSZone)
	}
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", fmt.Errorf("%q: label %q: %w", zone, l, ErrDNSZone)
		}
		for _, c := range []byte(l) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return "", fmt.Errorf("%q: label %q: only letters, digits and hyphens: %w", zone, l, ErrDNSZone)
			}
		}
	}
	return z, nil
}

func (s *State) applySetDNSZone(cmd *Command) error {
	c := cmd.DNS
	if c == nil {
		return ErrMalformedCmd
	}
	if c.Zone == "" {
		s.DNS = nil
		return nil
	}
	z, err := NormalizeDNSZone(c.Zone)
	if err != nil {
		return err
	}
	s.DNS = &DNSState{Zone: z}
	return nil
}

// DNSNames are the zone's names, lower case: every service's and app's
// OSID to the addresses its reconciler recorded, an app's name too when it
// is free, every node's name to its mesh IP (a node name wins a clash: a
// node cannot be renamed away). Deleted workloads have none.
func (s *State) DNSNames() map[string][]netip.Addr {
	names := make(map[string][]netip.Addr, len(s.Nodes)+len(s.Workloads.Services)+len(s.Workloads.Apps))
	for _, r := range s.Workloads.Services {
		if r.Desired != DesiredDeleted {
			names[strings.ToLower(r.OSID)] = slices.Clone(r.Status.Addrs)
		}
	}
	for _, r := range s.Workloads.Apps {
		if r.Desired != DesiredDeleted {
			names[strings.ToLower(r.OSID)] = slices.Clone(r.Status.Addrs)
		}
	}
	// An app is also found by its name when that is a DNS label no OSID
	// holds and no other present app has in another case; a node's name
	// still wins.
	apps := map[string]*AppRecord{}
	clash := map[string]bool{}
	for _, r := range s.Workloads.Apps {
		alias := strings.ToLower(r.Name)
		if r.Desired == DesiredDeleted || !ValidDNSLabel(alias) {
			continue
		}
		if _, dup := apps[alias]; dup {
			clash[alias] = true
		}
		apps[alias] = r
	}
	for alias, r := range apps {
		if _, taken := names[alias]; !taken && !clash[alias] {
			names[alias] = slices.Clone(r.Status.Addrs)
		}
	}
	for _, n := range s.Nodes {
		names[strings.ToLower(n.Name)] = []netip.Addr{n.MeshIP}
	}
	return names
}

// DNSNames returns the zone and its names without copying the state: the
// node resolver reads them at every state change.
func (f *FSM) DNSNames() (string, map[string][]netip.Addr) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.EffectiveDNSZone(), f.state.DNSNames()
}

// DNSNames is FSM.DNSNames of this replica.
func (s *Store) DNSNames() (string, map[string][]netip.Addr) { return s.fsm.DNSNames() }

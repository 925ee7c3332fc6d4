package raftstore

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// A node record's certificate fingerprint comes with the join, and a record
// without one (made before fingerprints were recorded) is backfilled once by
// UpdateNode and never replaced after: a member that got in by serial
// cannot re-point another node's record at its own certificate.
func TestCertFingerprintJoinAndBackfill(t *testing.T) {
	fpA, fpB := strings.Repeat("a", 64), strings.Repeat("b", 64)
	s := bootstrapped(t) // alpha: a record without a fingerprint
	join := joinCmd("n2", "beta", "k2", "secret", t0.Add(time.Minute))
	join.Join.CertFingerprint = fpB
	if err := s.apply(3, join).Error(); err != nil {
		t.Fatal(err)
	}
	if got := s.Nodes["n2"].CertFingerprint; got != fpB {
		t.Fatalf("joined with fingerprint %q", got)
	}

	update := func(idx uint64, id, fp string) error {
		return s.apply(idx, &Command{ID: "u" + string(rune('0'+idx)), Time: t0, Op: OpUpdateNode,
			UpdateNode: &UpdateNodeCmd{NodeID: id, Version: "v2", CertFingerprint: fp}}).Error()
	}
	if err := update(4, "n1", "not hex"); !errors.Is(err, ErrMalformedCmd) {
		t.Fatalf("malformed fingerprint: %v", err)
	}
	if s.Nodes["n1"].Version == "v2" {
		t.Fatal("a refused update changed the record")
	}
	if err := update(5, "n1", fpA); err != nil || s.Nodes["n1"].CertFingerprint != fpA {
		t.Fatalf("backfill: %v, %q", err, s.Nodes["n1"].CertFingerprint)
	}
	if err := update(6, "n1", fpB); err != nil || s.Nodes["n1"].CertFingerprint != fpA {
		t.Fatalf("a recorded fingerprint was replaced: %v, %q", err, s.Nodes["n1"].CertFingerprint)
	}
	if err := update(7, "n2", fpA); err != nil || s.Nodes["n2"].CertFingerprint != fpB {
		t.Fatalf("a joined node's fingerprint was replaced: %v, %q", err, s.Nodes["n2"].CertFingerprint)
	}

	bad := joinCmd("n3", "gamma", "k3", "secret", t0.Add(time.Minute))
	bad.Join.CertFingerprint = strings.Repeat("A", 64) // uppercase is not what pki writes
	if err := s.apply(8, bad).Error(); !errors.Is(err, ErrMalformedCmd) {
		t.Fatalf("join with a malformed fingerprint: %v", err)
	}
}

// Raft, gossip and the node API serve the mesh, never the pod network or
// wg1 (user access), whose addresses share the wg0 routes.
func TestMemberSources(t *testing.T) {
	src := MemberSources()
	for addr, want := range map[string]bool{
		"172.24.0.1":        true,
		"172.24.199.255":    true,
		"::ffff:172.24.0.9": true,
		"172.24.200.1":      false, // wg1
		"172.24.207.255":    false,
		"172.24.208.0":      true,
		"172.25.3.7":        false, // a pod
		"127.0.0.1":         false,
		"10.96.0.1":         false,
		"fd00::1":           false,
	} {
		if got := src.Contains(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: %v, want %v", addr, got, want)
		}
	}
	if src.ContainsAddr(nil) || !src.ContainsAddr(&net.TCPAddr{IP: net.IPv4(172, 24, 0, 2), Port: 1}) || src.ContainsAddr(&net.UDPAddr{IP: net.IPv4(172, 25, 0, 2), Port: 1}) {
		t.Error("ContainsAddr disagrees with Contains")
	}
}

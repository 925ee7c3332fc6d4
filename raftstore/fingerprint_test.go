package raftstore

import (
	"errors"
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

package raftstore

import (
	"errors"
	"reflect"
	"testing"
)

// rotationFor prepares a rotation of s as a proposer would (with fake
// wraps and seals: the FSM sees only strings).
func rotationFor(s *State, id string) *Command {
	c := &RotateKeysCmd{Epoch: s.Keys.CurrentEpoch() + 1, Wrapped: map[string]string{}, Resealed: map[string]Reseal{}}
	for nid := range s.Nodes {
		c.Wrapped[nid] = "wrap-" + nid
	}
	for name, ref := range s.SealedValues() {
		c.Resealed[name] = Reseal{Old: ref.Value, New: "new-" + ref.Value}
	}
	return &Command{ID: id, Time: t0, Op: OpRotateKeys, RotateKeys: c}
}

func TestRotationSealsCAAndRotatesOnRemoval(t *testing.T) {
	s := bootstrapped(t) // an old state: plaintext CA key
	if err := s.apply(3, joinCmd("n2", "beta", "k2", "secret", t0)).Error(); err != nil {
		t.Fatal(err)
	}
	if err := s.apply(4, rotationFor(s, "r0")).Error(); !errors.Is(err, ErrRotationStale) {
		t.Fatalf("rotation before the CA key is sealed: %v", err)
	}
	if err := s.apply(5, &Command{ID: "ca", Time: t0, Op: OpSealCAKey, SealCAKey: &SealCAKeyCmd{Sealed: "sealed-ca"}}).Error(); err != nil {
		t.Fatal(err)
	}
	if len(s.CAKeyPEM) != 0 || s.CAKeySealed != "sealed-ca" {
		t.Fatal("the CA key was not replaced by its sealed form")
	}
	if err := s.apply(6, &Command{ID: "ca2", Time: t0, Op: OpSealCAKey, SealCAKey: &SealCAKeyCmd{Sealed: "x"}}).Error(); !errors.Is(err, ErrRotationStale) {
		t.Fatalf("second sealing: %v", err)
	}
	s.UI.SessionKey = "ui-sealed"
	s.Cloud.Registration = &CloudRegistration{ClientKeySealed: "cloud-sealed"}
	if err := s.apply(7, &Command{ID: "rm", Time: t0, Op: OpRemoveNode, RemoveNode: &RemoveNodeCmd{Name: "beta"}}).Error(); err != nil {
		t.Fatal(err)
	}
	if !s.Keys.RotatePending {
		t.Fatal("a removal did not ask for a rotation")
	}
	stale := rotationFor(s, "stale")
	stale.RotateKeys.Wrapped["n2"] = "wrap for the removed node"
	cases := map[string]*Command{
		"wraps for a removed node": stale,
		"a value changed since": func() *Command {
			c := rotationFor(s, "changed")
			c.RotateKeys.Resealed["ui"] = Reseal{Old: "something else", New: "n"}
			return c
		}(),
		"a value left out": func() *Command {
			c := rotationFor(s, "left")
			delete(c.RotateKeys.Resealed, "cloud")
			return c
		}(),
		"an epoch skipped": func() *Command {
			c := rotationFor(s, "skip")
			c.RotateKeys.Epoch++
			return c
		}(),
	}
	for name, cmd := range cases {
		before := s.Clone()
		if err := s.apply(8, cmd).Error(); !errors.Is(err, ErrRotationStale) {
			t.Fatalf("%s: err = %v", name, err)
		}
		before.Applied, before.Results = s.Applied, s.Results
		if !reflect.DeepEqual(before, s) {
			t.Fatalf("%s: a refused rotation changed the state", name)
		}
	}
	if err := s.apply(9, rotationFor(s, "ok")).Error(); err != nil {
		t.Fatal(err)
	}
	if s.Keys.Epoch != 2 || s.Keys.RotatePending || s.Keys.Wrapped["n1"] != "wrap-n1" || len(s.Keys.Wrapped) != 1 {
		t.Fatalf("keys = %+v", s.Keys)
	}
	if s.UI.SessionKey != "new-ui-sealed" || s.CAKeySealed != "new-sealed-ca" || s.Cloud.Registration.ClientKeySealed != "new-cloud-sealed" {
		t.Fatal("sealed values were not replaced")
	}
	if !s.Cloud.RotateCredential {
		t.Fatal("the cloud credential is not marked for re-issue")
	}
	if v := s.View(); v.Keys.Wrapped["n1"] != "wrap-n1" || v.CAKeySealed == "" {
		t.Fatal("View drops the key state")
	}
}

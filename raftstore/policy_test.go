package raftstore

import (
	"errors"
	"testing"
	"time"

	"github.com/runos/runos-agent/pki"
)

func tokenCmd(id string, at time.Time, ttl time.Duration, uses int) *Command {
	return &Command{ID: "tok-" + id, Time: at, Op: OpCreateToken, CreateToken: &CreateTokenCmd{Token: Token{
		ID: id, SecretHash: pki.HashSecret("s-" + id), ExpiresAt: at.Add(ttl), UsesLeft: uses}}}
}

// Attack: whoever can propose a CreateToken (the local API, the cloud, a
// member with a minted certificate through the node API) asked for a
// 100-year or a 1000-use token and got it. The FSM refuses both.
func TestAttackTokenBeyondPolicyRefused(t *testing.T) {
	s := bootstrapped(t)
	for _, tc := range []struct {
		id   string
		ttl  time.Duration
		uses int
	}{
		{"century", 100 * 365 * 24 * time.Hour, 1},
		{"thousand", time.Hour, 1000},
	} {
		res := s.apply(10, tokenCmd(tc.id, t0, tc.ttl, tc.uses))
		if res.Error() == nil {
			t.Errorf("token %s (ttl %s, %d uses) accepted", tc.id, tc.ttl, tc.uses)
		}
		if _, ok := s.Tokens[tc.id]; ok {
			t.Errorf("token %s stored", tc.id)
		}
	}
}

func TestTokenPolicy(t *testing.T) {
	s := bootstrapped(t)
	if p := s.EffectiveTokenPolicy(); p != DefaultTokenPolicy() || p.MaxTTL != 24*time.Hour || p.MaxUses != 10 {
		t.Fatalf("default policy = %+v", p)
	}
	// At the limits, and a few seconds of clock skew past the lifetime.
	for i, tc := range []struct {
		ttl  time.Duration
		uses int
		ok   bool
	}{
		{24 * time.Hour, 10, true},
		{24*time.Hour + time.Minute, 1, true},
		{25 * time.Hour, 1, false},
		{time.Hour, 11, false},
	} {
		id := string(rune('a' + i))
		err := s.apply(uint64(10+i), tokenCmd(id, t0, tc.ttl, tc.uses)).Error()
		if tc.ok != (err == nil) || (!tc.ok && !errors.Is(err, ErrTokenPolicy)) {
			t.Errorf("ttl %s uses %d: err = %v, want ok=%v", tc.ttl, tc.uses, err, tc.ok)
		}
	}
	// The policy changes through a command, within bounds, and then binds.
	for _, p := range []TokenPolicy{{MaxTTL: time.Second}, {MaxTTL: 365 * 24 * time.Hour}, {MaxUses: 1001}, {MaxUses: -1}} {
		if err := s.apply(20, &Command{ID: "bad-" + p.MaxTTL.String(), Time: t0, Op: OpSetTokenPolicy, TokenPolicy: &p}).Error(); !errors.Is(err, ErrTokenPolicy) {
			t.Errorf("policy %+v: err = %v, want ErrTokenPolicy", p, err)
		}
	}
	if err := s.apply(21, &Command{ID: "pol", Time: t0, Op: OpSetTokenPolicy, TokenPolicy: &TokenPolicy{MaxTTL: 72 * time.Hour}}).Error(); err != nil {
		t.Fatal(err)
	}
	if p := s.EffectiveTokenPolicy(); p.MaxTTL != 72*time.Hour || p.MaxUses != 10 {
		t.Fatalf("policy = %+v", p)
	}
	if err := s.apply(22, tokenCmd("long", t0, 48*time.Hour, 1)).Error(); err != nil {
		t.Errorf("48 h token under a 72 h policy: %v", err)
	}
	if v := s.View().EffectiveTokenPolicy(); v.MaxTTL != 72*time.Hour {
		t.Errorf("view lost the policy: %+v", v)
	}
}

package raftstore

import (
	"errors"
	"fmt"
	"time"
)

// Join-token policy: every token the FSM stores, whoever proposes it (the
// local API, the cloud, a member's node API), lives at most MaxTTL and
// admits at most MaxUses nodes. The policy is cluster state, changed by
// OpSetTokenPolicy.

// Default token policy (a State whose TokenPolicy is nil has it).
const (
	DefaultTokenMaxTTL  = 24 * time.Hour
	DefaultTokenMaxUses = 10
)

// Bounds of what a policy may be set to.
const (
	MinTokenMaxTTL  = time.Minute
	MaxTokenMaxTTL  = 30 * 24 * time.Hour
	MaxTokenMaxUses = 1000
)

// tokenClockSlack is how far a token's lifetime may exceed MaxTTL when
// measured in the FSM: the proposer stamps ExpiresAt from its own clock
// (the cloud from its command's creation time), the command's Time may
// come from another clock, and a policy check must not refuse a token for
// a few seconds of skew.
const tokenClockSlack = 5 * time.Minute

// ErrTokenPolicy means a token's lifetime or use count exceeds the
// cluster's policy, or a policy is out of bounds.
var ErrTokenPolicy = errors.New("join token exceeds the cluster's token policy")

// OpSetTokenPolicy replaces the cluster's token policy (Command.TokenPolicy).
const OpSetTokenPolicy = "set_token_policy"

// TokenPolicy bounds join tokens. Zero fields mean the defaults.
type TokenPolicy struct {
	MaxTTL  time.Duration `json:"max_ttl,omitempty"`
	MaxUses int           `json:"max_uses,omitempty"`
}

// DefaultTokenPolicy is the policy of a cluster that never set one.
func DefaultTokenPolicy() TokenPolicy {
	return TokenPolicy{MaxTTL: DefaultTokenMaxTTL, MaxUses: DefaultTokenMaxUses}
}

// withDefaults fills zero fields.
func (p TokenPolicy) withDefaults() TokenPolicy {
	if p.MaxTTL == 0 {
		p.MaxTTL = DefaultTokenMaxTTL
	}
	if p.MaxUses == 0 {
		p.MaxUses = DefaultTokenMaxUses
	}
	return p
}

// Validate checks a policy before it is set.
func (p TokenPolicy) Validate() error {
	if p.MaxTTL < 0 || p.MaxUses < 0 {
		return fmt.Errorf("negative limits: %w", ErrTokenPolicy)
	}
	p = p.withDefaults()
	if p.MaxTTL < MinTokenMaxTTL || p.MaxTTL > MaxTokenMaxTTL {
		return fmt.Errorf("max ttl must be between %s and %s: %w", MinTokenMaxTTL, MaxTokenMaxTTL, ErrTokenPolicy)
	}
	if p.MaxUses > MaxTokenMaxUses {
		return fmt.Errorf("max uses must be between 1 and %d: %w", MaxTokenMaxUses, ErrTokenPolicy)
	}
	return nil
}

// Allow checks a token's lifetime (ttl) and use count against the policy;
// the error says which limit and wraps ErrTokenPolicy. Proposers call it
// to refuse early with a clear message; the FSM calls it for every token.
func (p TokenPolicy) Allow(ttl time.Duration, uses int) error {
	p = p.withDefaults()
	if ttl > p.MaxTTL {
		return fmt.Errorf("lifetime %s is longer than the maximum %s: %w", ttl, p.MaxTTL, ErrTokenPolicy)
	}
	if uses > p.MaxUses {
		return fmt.Errorf("%d uses are more than the maximum %d: %w", uses, p.MaxUses, ErrTokenPolicy)
	}
	return nil
}

// EffectiveTokenPolicy is the cluster's token policy, defaults filled in:
// the one lookup the local API, the cloud link and the FSM share.
func (s *State) EffectiveTokenPolicy() TokenPolicy {
	if s.TokenPolicy == nil {
		return DefaultTokenPolicy()
	}
	return s.TokenPolicy.withDefaults()
}

// checkTokenPolicy is the FSM's check of a new token against the policy,
// lifetime measured from the command's time.
func (s *State) checkTokenPolicy(now time.Time, t *Token) error {
	p := s.EffectiveTokenPolicy()
	ttl := t.ExpiresAt.Sub(now)
	if ttl > p.MaxTTL && ttl <= p.MaxTTL+tokenClockSlack {
		ttl = p.MaxTTL
	}
	return p.Allow(ttl, t.UsesLeft)
}

func (s *State) applySetTokenPolicy(cmd *Command) error {
	p := cmd.TokenPolicy
	if p == nil {
		return ErrMalformedCmd
	}
	if err := p.Validate(); err != nil {
		return err
	}
	np := p.withDefaults()
	s.TokenPolicy = &np
	return nil
}

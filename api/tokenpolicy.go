package api

import (
	"context"
	"net/http"
)

// TokenPolicy is POST /v1/tokens/policy, and its answer: the cluster's
// bounds on join tokens. In a request, empty fields keep their current
// value (an empty request reads the policy).
type TokenPolicy struct {
	MaxTTL  string `json:"max_ttl,omitempty"` // Go duration
	MaxUses int    `json:"max_uses,omitempty"`
}

// SetTokenPolicy changes (or, with an empty req, reads) the token policy.
func (c *Client) SetTokenPolicy(ctx context.Context, req TokenPolicy) (*TokenPolicy, error) {
	var p TokenPolicy
	return &p, c.do(ctx, http.MethodPost, "/v1/tokens/policy", req, &p)
}

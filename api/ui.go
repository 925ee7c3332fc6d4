package api

import (
	"context"
	"net/http"
)

// UIPassword answers POST /v1/ui/reset-password (unix socket only): the new
// admin credential, shown once.
type UIPassword struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// ResetUIPassword replaces the web UI's admin password; every UI session on
// every node ends.
func (c *Client) ResetUIPassword(ctx context.Context) (*UIPassword, error) {
	var p UIPassword
	return &p, c.do(ctx, http.MethodPost, "/v1/ui/reset-password", nil, &p)
}

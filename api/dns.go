package api

import (
	"context"
	"net/http"
)

// DNSStatus is GET /v1/dns: this node's resolver and the cluster's zone.
type DNSStatus struct {
	// Zone is the cluster's zone (NODE.<zone>, OSID.<zone>).
	Zone string `json:"zone"`
	// Enabled is false when the node runs without its resolver.
	Enabled bool `json:"enabled"`
	// Listen are the addresses served (UDP and TCP).
	Listen []string `json:"listen,omitempty"`
	// ListenError is why an address asked for is not served, if any.
	ListenError string `json:"listen_error,omitempty"`
	// Upstreams receive names outside the cluster.
	Upstreams []string `json:"upstreams,omitempty"`
	// Mounted are domains answered in process (cluster.local with
	// managed Kubernetes).
	Mounted []string `json:"mounted,omitempty"`
	// Names is how many names the zone holds on this node.
	Names int `json:"names"`
	// Queries counts this node's queries by result since it started.
	Queries map[string]uint64 `json:"queries,omitempty"`
	// CacheEntries is the number of cached forwarded answers.
	CacheEntries int `json:"cache_entries"`
}

// DNSZoneRequest is POST /v1/dns/zone: "" goes back to the default.
type DNSZoneRequest struct {
	Zone string `json:"zone"`
}

// DNS reads this node's resolver status.
func (c *Client) DNS(ctx context.Context) (*DNSStatus, error) {
	var s DNSStatus
	return &s, c.do(ctx, http.MethodGet, "/v1/dns", nil, &s)
}

// SetDNSZone changes the cluster's zone, on every node.
func (c *Client) SetDNSZone(ctx context.Context, zone string) (*DNSStatus, error) {
	var s DNSStatus
	return &s, c.do(ctx, http.MethodPost, "/v1/dns/zone", DNSZoneRequest{Zone: zone}, &s)
}

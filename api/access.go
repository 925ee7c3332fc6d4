package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// AccessAddRequest adds a user device (wg1).
type AccessAddRequest struct {
	Name string `json:"name"`
	// Via is the entry node's name ("": the node asked).
	Via string `json:"via,omitempty"`
	// PublicKey is the device's WireGuard public key when the user made
	// the key pair; "" makes the node generate one and return the private
	// key once, in the config.
	PublicKey string `json:"public_key,omitempty"`
	// Endpoint overrides the entry node's address in the config (host or
	// host:port), for a node behind a port forward or with a DNS name.
	Endpoint string `json:"endpoint,omitempty"`
	// AllowPeers lets the device reach other devices that allow it too.
	AllowPeers bool `json:"allow_peers,omitempty"`
}

// AccessMoveRequest gives a device another entry node.
type AccessMoveRequest struct {
	To       string `json:"to"`
	Endpoint string `json:"endpoint,omitempty"`
}

// AccessDevice is a user device as `access list` shows it.
type AccessDevice struct {
	Name       string    `json:"name"`
	Address    string    `json:"address"`
	PublicKey  string    `json:"public_key"`
	Via        string    `json:"via"` // the entry node's name
	AllowPeers bool      `json:"allow_peers,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	// FirstHandshake is when the device first connected (zero: never).
	FirstHandshake time.Time `json:"first_handshake,omitzero"`
	// Live counters, from the entry node's wg1 (absent when it did not
	// answer: StatsError says why).
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	RxBytes       uint64    `json:"rx_bytes"`
	TxBytes       uint64    `json:"tx_bytes"`
	// Endpoint is where the entry node last heard the device from.
	Endpoint   string `json:"endpoint,omitempty"`
	StatsError string `json:"stats_error,omitempty"`
}

// AccessConfig is a device with its WireGuard client config: the answer to
// add (the only time it carries a private key) and to move.
type AccessConfig struct {
	Device AccessDevice `json:"device"`
	// Config is the client config (wg-quick format).
	Config string `json:"config"`
	// QRPNG is Config as a QR code picture (PNG).
	QRPNG []byte `json:"qr_png,omitempty"`
}

// AccessDevices lists the devices.
type AccessDevices struct {
	Devices []AccessDevice `json:"devices"`
}

// AccessPeerStats is one device's counters as its entry node reports them
// on the node API.
type AccessPeerStats struct {
	PublicKey     string    `json:"public_key"`
	Endpoint      string    `json:"endpoint,omitempty"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	RxBytes       uint64    `json:"rx_bytes"`
	TxBytes       uint64    `json:"tx_bytes"`
}

// AccessAdd adds a device.
func (c *Client) AccessAdd(ctx context.Context, req AccessAddRequest) (*AccessConfig, error) {
	var out AccessConfig
	return &out, c.do(ctx, http.MethodPost, "/v1/access", req, &out)
}

// AccessList lists the devices with their entry nodes' counters.
func (c *Client) AccessList(ctx context.Context) (*AccessDevices, error) {
	var out AccessDevices
	return &out, c.do(ctx, http.MethodGet, "/v1/access", nil, &out)
}

// AccessRemove removes a device.
func (c *Client) AccessRemove(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/access/"+url.PathEscape(name), nil, nil)
}

// AccessMove gives a device another entry node; the answer's config has a
// placeholder for the private key (only the Endpoint line changed).
func (c *Client) AccessMove(ctx context.Context, name string, req AccessMoveRequest) (*AccessConfig, error) {
	var out AccessConfig
	return &out, c.do(ctx, http.MethodPost, "/v1/access/"+url.PathEscape(name)+"/move", req, &out)
}

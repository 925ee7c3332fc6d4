package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Services and apps on Kubernetes (issue 6).

// Kube is GET /v1/kube: the Kubernetes cluster services are applied to.
type Kube struct {
	Configured bool      `json:"configured"`
	Server     string    `json:"server,omitempty"`
	SetAt      time.Time `json:"set_at,omitzero"`
	// Error is the leader's last failure to reach the API ("" when fine
	// or unknown on this node).
	Error string `json:"error,omitempty"`
}

// KubeSetRequest is PUT /v1/kube.
type KubeSetRequest struct {
	Kubeconfig string `json:"kubeconfig"`
}

// CatalogService is one entry of GET /v1/catalog.
type CatalogService struct {
	Name        string           `json:"name"`
	Title       string           `json:"title"`
	Kind        string           `json:"kind"`
	Version     string           `json:"version"`
	Description string           `json:"description"`
	Tiers       []CatalogTier    `json:"tiers"`
	Settings    []CatalogSetting `json:"settings"`
	Provides    string           `json:"provides,omitempty"`
	Env         []string         `json:"env,omitempty"`
}

// CatalogTier is one tier of a catalog service.
type CatalogTier struct {
	Name     string `json:"name"`
	Replicas int    `json:"replicas"`
	HA       bool   `json:"ha"`
	Note     string `json:"note,omitempty"`
}

// CatalogSetting is one `--set` key.
type CatalogSetting struct {
	Key         string `json:"key"`
	Default     string `json:"default"`
	Description string `json:"description"`
}

// ServiceRequest is POST /v1/services.
type ServiceRequest struct {
	Service string            `json:"service"`
	Tier    string            `json:"tier,omitempty"` // default lightweight
	Set     map[string]string `json:"set,omitempty"`
}

// Workload status values (Service.Status, App.Status).
const (
	StatusPending  = "pending"
	StatusApplying = "applying"
	StatusReady    = "ready"
	StatusFailed   = "failed"
	StatusDeleting = "deleting"
)

// Service is one service instance (GET /v1/services, /v1/services/{osid}).
type Service struct {
	OSID    string `json:"osid"`
	Service string `json:"service"`
	Tier    string `json:"tier"`
	// TierNote is the catalog's note on this tier (e.g. why ha is not
	// fault tolerant for this service without an operator).
	TierNote   string            `json:"tier_note,omitempty"`
	Set        map[string]string `json:"set,omitempty"`
	Status     string            `json:"status"` // pending|applying|ready|failed|deleting
	Reason     string            `json:"reason,omitempty"`
	Ready      int               `json:"ready"`
	Total      int               `json:"total"`
	Conditions []string          `json:"conditions,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
	UpdatedAt  time.Time         `json:"updated_at"`
	// Connection is filled by GET /v1/services/{osid}; its password
	// (and the password inside the URL) only with ?reveal=1.
	Connection *Connection `json:"connection,omitempty"`
	// UsedBy lists the apps using this instance.
	UsedBy []string `json:"used_by,omitempty"`
}

// Connection is how apps and people reach a service instance.
type Connection struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`
	Database string `json:"database,omitempty"`
	URL      string `json:"url,omitempty"`
	// Secret is the Kubernetes Secret (in the instance's namespace)
	// holding the credentials.
	Secret string `json:"secret"`
	// Env are the variables an app using the instance receives.
	Env []string `json:"env,omitempty"`
	// Revealed says whether secrets are shown.
	Revealed bool `json:"revealed"`
}

// AppRequest is POST /v1/apps.
type AppRequest struct {
	Name  string            `json:"name"`
	Image string            `json:"image"`
	Port  int               `json:"port,omitempty"`
	Env   map[string]string `json:"env,omitempty"`
	Use   []string          `json:"use,omitempty"` // service OSIDs
}

// App is one app (GET /v1/apps, /v1/apps/{osid}).
type App struct {
	OSID       string            `json:"osid"`
	Name       string            `json:"name"`
	Image      string            `json:"image"`
	Port       int               `json:"port,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Uses       []string          `json:"uses,omitempty"`
	Tier       string            `json:"tier"` // always "app", so list items share a shape
	Status     string            `json:"status"`
	Reason     string            `json:"reason,omitempty"`
	Ready      int               `json:"ready"`
	Total      int               `json:"total"`
	Conditions []string          `json:"conditions,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
	UpdatedAt  time.Time         `json:"updated_at"`
	// InjectedEnv names the variables --use put in the container.
	InjectedEnv []string `json:"injected_env,omitempty"`
}

// Kube returns the Kubernetes target.
func (c *Client) Kube(ctx context.Context) (*Kube, error) {
	var k Kube
	return &k, c.do(ctx, http.MethodGet, "/v1/kube", nil, &k)
}

// SetKube stores a kubeconfig (sealed in the cluster state).
func (c *Client) SetKube(ctx context.Context, kubeconfig []byte) (*Kube, error) {
	var k Kube
	return &k, c.do(ctx, http.MethodPut, "/v1/kube", KubeSetRequest{Kubeconfig: string(kubeconfig)}, &k)
}

// Catalog lists the services that can be deployed.
func (c *Client) Catalog(ctx context.Context) ([]CatalogService, error) {
	var out []CatalogService
	return out, c.do(ctx, http.MethodGet, "/v1/catalog", nil, &out)
}

// DeployService deploys a service instance.
func (c *Client) DeployService(ctx context.Context, req ServiceRequest) (*Service, error) {
	var s Service
	return &s, c.do(ctx, http.MethodPost, "/v1/services", req, &s)
}

// Services lists service instances, optionally of one service.
func (c *Client) Services(ctx context.Context, service string) ([]Service, error) {
	var out []Service
	path := "/v1/services"
	if service != "" {
		path += "?type=" + url.QueryEscape(service)
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// ServiceInfo returns one instance with its connection details; reveal
// includes the password.
func (c *Client) ServiceInfo(ctx context.Context, osid string, reveal bool) (*Service, error) {
	var s Service
	path := "/v1/services/" + url.PathEscape(osid)
	if reveal {
		path += "?reveal=1"
	}
	return &s, c.do(ctx, http.MethodGet, path, nil, &s)
}

// DeleteService deletes an instance (its namespace, then its record).
func (c *Client) DeleteService(ctx context.Context, osid string) error {
	return c.do(ctx, http.MethodDelete, "/v1/services/"+url.PathEscape(osid), nil, nil)
}

// DeployApp deploys an app.
func (c *Client) DeployApp(ctx context.Context, req AppRequest) (*App, error) {
	var a App
	return &a, c.do(ctx, http.MethodPost, "/v1/apps", req, &a)
}

// Apps lists apps.
func (c *Client) Apps(ctx context.Context) ([]App, error) {
	var out []App
	return out, c.do(ctx, http.MethodGet, "/v1/apps", nil, &out)
}

// AppInfo returns one app.
func (c *Client) AppInfo(ctx context.Context, osid string) (*App, error) {
	var a App
	return &a, c.do(ctx, http.MethodGet, "/v1/apps/"+url.PathEscape(osid), nil, &a)
}

// DeleteApp deletes an app.
func (c *Client) DeleteApp(ctx context.Context, osid string) error {
	return c.do(ctx, http.MethodDelete, "/v1/apps/"+url.PathEscape(osid), nil, nil)
}

package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/runos/runos-agent/templates/kapi"
)

// maxResponse bounds what is read of one API response: lists of a
// namespace's EndpointSlices and resource lists stay far below it.
const maxResponse = 32 << 20

// Client makes JSON requests to one API server with the credentials of a
// kubeconfig. It is safe for concurrent use.
type Client struct {
	hc   *http.Client
	host string // base URL, no trailing slash
}

// NewClient returns a client for k; timeout bounds each request (0: none).
func NewClient(k *Kubeconfig, timeout time.Duration) *Client {
	return &Client{hc: k.HTTPClient(timeout), host: k.Server}
}

// Host is the API server's base URL.
func (c *Client) Host() string { return c.host }

// Close drops idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// APIError is a request the API server refused, from its Status answer.
type APIError struct {
	Code    int    // HTTP status
	Reason  string // "NotFound", "Conflict", "Invalid", ...
	Message string
}

func (e *APIError) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return fmt.Sprintf("%d %s", e.Code, e.Reason)
}

// IsNotFound reports whether err is the API server's 404.
func IsNotFound(err error) bool { return apiCode(err) == http.StatusNotFound }

func apiCode(err error) int {
	var e *APIError
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// Do sends one request (body is JSON unless contentType says otherwise)
// and returns the response body of a 2xx answer; anything else is an
// *APIError (or a transport error).
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, contentType string, body []byte) ([]byte, error) {
	resp, err := c.send(ctx, method, path, query, contentType, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, maxResponse))
}

// GetObject reads one object (an *APIError with IsNotFound when absent).
func (c *Client) GetObject(ctx context.Context, path string, query url.Values) (kapi.Object, error) {
	b, err := c.Do(ctx, http.MethodGet, path, query, "", nil)
	if err != nil {
		return nil, err
	}
	return kapi.DecodeObject(b)
}

// List reads a list's items.
func (c *Client) List(ctx context.Context, path string, query url.Values) ([]kapi.Object, error) {
	b, err := c.Do(ctx, http.MethodGet, path, query, "", nil)
	if err != nil {
		return nil, err
	}
	l, err := kapi.DecodeObject(b)
	if err != nil {
		return nil, err
	}
	items, _ := l.Get("items")
	arr, _ := items.([]any)
	out := make([]kapi.Object, 0, len(arr))
	for _, it := range arr {
		if m, ok := it.(map[string]any); ok {
			out = append(out, kapi.Object(m))
		}
	}
	return out, nil
}

// Open sends a GET and hands over the body of a 2xx answer for the caller
// to stream and close (a watch); anything else is an *APIError. Use a
// client without a request timeout for it.
func (c *Client) Open(ctx context.Context, path string, query url.Values) (io.ReadCloser, error) {
	resp, err := c.send(ctx, http.MethodGet, path, query, "", nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// send makes one request and returns the response of a 2xx answer, its
// body still to be read; any other answer becomes an *APIError.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, contentType string, body []byte) (*http.Response, error) {
	u := c.host + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		if contentType == "" {
			contentType = "application/json"
		}
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return nil, statusError(method, path, resp.Status, resp.StatusCode, b)
}

// statusError is the *APIError of a non-2xx answer with body b.
func statusError(method, path, status string, code int, b []byte) *APIError {
	e := &APIError{Code: code}
	var st struct {
		Kind    string `json:"kind"`
		Reason  string `json:"reason"`
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &st) == nil && st.Kind == "Status" {
		e.Reason, e.Message = st.Reason, st.Message
	} else {
		e.Reason = http.StatusText(code)
		e.Message = fmt.Sprintf("%s %s: %s: %s", method, path, status, strings.TrimSpace(string(b[:min(len(b), 200)])))
	}
	return e
}

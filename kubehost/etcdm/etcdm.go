// Package etcdm manages etcd cluster membership through etcd 3.4's gRPC
// JSON gateway (POST /v3/cluster/member/...) over mutual TLS. It speaks
// plain HTTPS+JSON on purpose: the agent only needs four membership calls
// and a health probe, not the etcd client library and its gRPC stack.
package etcdm

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Member is one etcd cluster member. A learner that was added but has not
// started yet has no Name and no ClientURLs.
type Member struct {
	ID         uint64
	Name       string
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

// Errors etcd reports that callers act on. etcd's gateway only gives the
// gRPC status message, so these are recognised by message text (stable
// across etcd 3.4 and 3.5).
var (
	// ErrLearnerNotReady: Promote refused because the learner has not
	// caught up with the leader (or not started); retry later.
	ErrLearnerNotReady = errors.New("etcdm: learner not yet in sync with the leader")
	// ErrMemberNotLearner: Promote of a member that is already a voter.
	ErrMemberNotLearner = errors.New("etcdm: member is not a learner")
	// ErrMemberNotFound: Remove or Promote of an unknown member ID.
	ErrMemberNotFound = errors.New("etcdm: member not found")
	// ErrMemberExists: AddLearner with a peer URL already in the cluster
	// (e.g. a retried add whose first attempt went through). etcd says
	// "member ID already exist" when the add repeats within a second (the
	// ID hashes the URLs and the time), "Peer URLs already exists" later.
	ErrMemberExists = errors.New("etcdm: member with this peer URL already in the cluster")
	// ErrUnhealthyCluster: etcd's strict reconfiguration check refused to
	// remove a voter because quorum would then rest on members that have
	// not been connected for 5 s (or have not started). Retry later.
	ErrUnhealthyCluster = errors.New("etcdm: removal refused while the cluster is not fully connected")
	// ErrTooManyLearners: etcd 3.4 allows one learner at a time.
	ErrTooManyLearners = errors.New("etcdm: too many learners in the cluster")
)

var messageErrors = []struct {
	substr string
	err    error
}{
	// Order matters: the not-ready message contains the not-learner one.
	{"can only promote a learner member which is in sync with leader", ErrLearnerNotReady},
	{"can only promote a learner member", ErrMemberNotLearner},
	{"member not found", ErrMemberNotFound},
	{"Peer URLs already exists", ErrMemberExists},
	{"member ID already exist", ErrMemberExists},
	{"too many learner members in cluster", ErrTooManyLearners},
	{"unhealthy cluster", ErrUnhealthyCluster},
	{"not enough started members", ErrUnhealthyCluster},
}

// gRPC status codes the gateway puts into error bodies.
const codeUnavailable = 14

// APIError is an error answer from etcd's gateway.
type APIError struct {
	Endpoint   string
	HTTPStatus int
	Code       int // gRPC status code
	Message    string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("etcd %s: %s (http %d, grpc code %d)", e.Endpoint, e.Message, e.HTTPStatus, e.Code)
}

// Is maps etcd's messages onto the package's sentinel errors.
func (e *APIError) Is(target error) bool {
	for _, m := range messageErrors {
		if strings.Contains(e.Message, m.substr) {
			return target == m.err
		}
	}
	return false
}

// unavailable: the endpoint cannot serve this now (no leader, a learner,
// stopping) but another member may.
func (e *APIError) unavailable() bool {
	return e.Code == codeUnavailable || e.HTTPStatus == http.StatusServiceUnavailable
}

// notExecuted: etcd refused before proposing anything, so a non-idempotent
// request may safely go to another member.
func (e *APIError) notExecuted() bool {
	return strings.Contains(e.Message, "rpc not supported for learner") ||
		strings.Contains(e.Message, "no leader")
}

// attemptTimeout bounds one request to one endpoint, so a black-holed
// member (its node gone from the mesh) does not use up the caller's whole
// deadline before the next endpoint is tried. etcd's own proposal timeout
// is about 7 s.
const attemptTimeout = 10 * time.Second

// Client talks to a set of etcd client endpoints (https://IP:2379).
type Client struct {
	hc *http.Client

	mu sync.Mutex // guards endpoints and preferred
	// endpoints are tried in order starting at preferred, the last one
	// that answered.
	endpoints []string
	preferred int
}

// New returns a client for endpoints (https URLs). tlsConfig carries the
// etcd CA (RootCAs) and the client certificate etcd's --client-cert-auth
// requires.
func New(endpoints []string, tlsConfig *tls.Config) (*Client, error) {
	if tlsConfig == nil {
		return nil, errors.New("etcdm: nil TLS config")
	}
	eps, err := normalize(endpoints)
	if err != nil {
		return nil, err
	}
	if len(eps) == 0 {
		return nil, errors.New("etcdm: no endpoints")
	}
	tc := tlsConfig.Clone()
	// HTTP/1.1 only: etcd multiplexes gRPC on h2 over the same port, and
	// the gateway needs nothing more.
	tc.NextProtos = []string{"http/1.1"}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: attemptTimeout,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       30 * time.Second,
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	return &Client{hc: &http.Client{Transport: tr}, endpoints: eps}, nil
}

func normalize(endpoints []string) ([]string, error) {
	var out []string
	for _, e := range endpoints {
		u, err := url.Parse(e)
		if err != nil {
			return nil, fmt.Errorf("etcdm: endpoint %q: %w", e, err)
		}
		if u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("etcdm: endpoint %q: want https://host:port", e)
		}
		out = append(out, "https://"+u.Host)
	}
	return out, nil
}

// SetEndpoints replaces the endpoints (e.g. after a membership change).
// Invalid URLs are dropped.
func (c *Client) SetEndpoints(endpoints []string) {
	var eps []string
	for _, e := range endpoints {
		if n, err := normalize([]string{e}); err == nil {
			eps = append(eps, n...)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.endpoints = eps
	c.preferred = 0
}

// Close drops idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// List returns the members as the answering member knows them. etcd 3.4
// serves this from its local copy, not through a quorum read: right after
// a change made through another member it can lag for a moment.
func (c *Client) List(ctx context.Context) ([]Member, error) {
	var resp struct {
		Members []jsonMember `json:"members"`
	}
	if err := c.call(ctx, "/v3/cluster/member/list", struct{}{}, &resp, true); err != nil {
		return nil, err
	}
	return toMembers(resp.Members), nil
}

// AddLearner adds a non-voting member with peerURL. It returns the new
// member (no Name yet) and the whole membership, as InitialCluster needs.
// Not retried on another endpoint once a request may have reached etcd: if
// it fails ambiguously, List shows whether the member exists
// (ErrMemberExists on a second add says the same).
func (c *Client) AddLearner(ctx context.Context, peerURL string) (Member, []Member, error) {
	u, err := url.Parse(peerURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return Member{}, nil, fmt.Errorf("etcdm: peer URL %q: want https://host:port", peerURL)
	}
	req := struct {
		PeerURLs  []string `json:"peerURLs"`
		IsLearner bool     `json:"isLearner"`
	}{[]string{peerURL}, true}
	var resp struct {
		Member  jsonMember   `json:"member"`
		Members []jsonMember `json:"members"`
	}
	if err := c.call(ctx, "/v3/cluster/member/add", req, &resp, false); err != nil {
		return Member{}, nil, err
	}
	added := resp.Member.member()
	if added.ID == 0 {
		return Member{}, nil, errors.New("etcdm: member add: answer without the new member")
	}
	return added, toMembers(resp.Members), nil
}

// Promote makes learner id a voter. etcd refuses while the learner lags
// behind the leader: errors.Is(err, ErrLearnerNotReady), retry later.
// etcd runs that catch-up check before checking the member is a learner,
// so a promote repeated after success may also say ErrLearnerNotReady
// (else ErrMemberNotLearner): List tells whether it already is a voter.
func (c *Client) Promote(ctx context.Context, id uint64) error {
	return c.call(ctx, "/v3/cluster/member/promote", idRequest(id), nil, true)
}

// Remove removes member id (voter or learner). Removing a voter soon after
// any voter (re)connected gives ErrUnhealthyCluster: retry later.
func (c *Client) Remove(ctx context.Context, id uint64) error {
	return c.call(ctx, "/v3/cluster/member/remove", idRequest(id), nil, true)
}

// Healthy asks one endpoint's /health: nil when it reports healthy (it has
// a leader and serves). endpoint is an https URL like the client's.
func (c *Client) Healthy(ctx context.Context, endpoint string) error {
	eps, err := normalize([]string{endpoint})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, eps[0]+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("etcdm: health %s: %w", eps[0], err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("etcdm: health %s: %w", eps[0], err)
	}
	var h struct {
		Health string `json:"health"`
		Reason string `json:"reason"` // etcd 3.5+
	}
	if err := json.Unmarshal(body, &h); err != nil {
		return fmt.Errorf("etcdm: health %s: http %d: %q", eps[0], resp.StatusCode, truncate(body))
	}
	if resp.StatusCode != http.StatusOK || h.Health != "true" {
		msg := fmt.Sprintf("etcdm: health %s: unhealthy (http %d, health %q)", eps[0], resp.StatusCode, h.Health)
		if h.Reason != "" {
			msg += ": " + h.Reason
		}
		return errors.New(msg)
	}
	return nil
}

// InitialCluster renders --initial-cluster for a member joining an
// existing cluster: every member of members (as AddLearner returned them,
// or List) by name, with the joining one named joining. etcd checks the
// list against the cluster's peer URLs, so every member must appear; one
// that has not started yet (no name) gets its hex ID as a stand-in name.
func InitialCluster(members []Member, joining string, joiningPeerURL string) string {
	var parts []string
	found := false
	for _, m := range members {
		name := m.Name
		if slices.Contains(m.PeerURLs, joiningPeerURL) {
			name, found = joining, true
		} else if name == joining {
			// A stale entry under the joining name with other URLs:
			// keep it distinct so etcd sees the member count right.
			name = strconv.FormatUint(m.ID, 16)
		} else if name == "" {
			name = strconv.FormatUint(m.ID, 16)
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, name+"="+u)
		}
	}
	if !found {
		parts = append(parts, joining+"="+joiningPeerURL)
	}
	// etcd does not care about the order; sorted, the same membership
	// always gives the same string (it is stored in Raft).
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// idRequest: jsonpb takes uint64 as a JSON string (a number would lose
// precision in JavaScript-minded parsers; etcd accepts both).
func idRequest(id uint64) any {
	return struct {
		ID string `json:"ID"`
	}{strconv.FormatUint(id, 10)}
}

// call POSTs req to path on the endpoints in turn. idempotent calls move on
// after any transport failure or an "unavailable" answer; others only when
// the request surely was not executed (no connection, or etcd said so).
func (c *Client) call(ctx context.Context, path string, req, resp any, idempotent bool) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	c.mu.Lock()
	eps := append([]string(nil), c.endpoints...)
	start := c.preferred
	c.mu.Unlock()
	if len(eps) == 0 {
		return errors.New("etcdm: no endpoints")
	}
	var errs []error
	for i := range eps {
		ep := eps[(start+i)%len(eps)]
		err := c.post(ctx, ep, path, body, resp)
		if err == nil {
			c.mu.Lock()
			for j, e := range c.endpoints {
				if e == ep {
					c.preferred = j
				}
			}
			c.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			return errors.Join(append(errs, err)...)
		}
		if !retryable(err, idempotent) {
			return err
		}
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return fmt.Errorf("etcdm: %s failed on all %d endpoints: %w", path, len(eps), errors.Join(errs...))
}

func retryable(err error, idempotent bool) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		if idempotent {
			return ae.unavailable()
		}
		return ae.notExecuted()
	}
	if idempotent {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

func (c *Client) post(ctx context.Context, ep, path string, body []byte, resp any) error {
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	r, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("etcdm: %s%s: %w", ep, path, err)
	}
	defer r.Body.Close()
	data, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("etcdm: %s%s: %w", ep, path, err)
	}
	if r.StatusCode != http.StatusOK {
		ae := &APIError{Endpoint: ep, HTTPStatus: r.StatusCode}
		var eb struct {
			Error   string `json:"error"`
			Message string `json:"message"`
			Code    int    `json:"code"`
		}
		if json.Unmarshal(data, &eb) == nil && (eb.Message != "" || eb.Error != "") {
			ae.Code, ae.Message = eb.Code, eb.Message
			if ae.Message == "" {
				ae.Message = eb.Error
			}
		} else {
			ae.Message = truncate(data)
		}
		return ae
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(data, resp); err != nil {
		return fmt.Errorf("etcdm: %s%s: decoding answer: %w", ep, path, err)
	}
	return nil
}

func truncate(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// jsonMember is etcdserverpb.Member as grpc-gateway renders it.
type jsonMember struct {
	ID         jsonUint64 `json:"ID"`
	Name       string     `json:"name"`
	PeerURLs   []string   `json:"peerURLs"`
	ClientURLs []string   `json:"clientURLs"`
	IsLearner  bool       `json:"isLearner"`
}

func (m jsonMember) member() Member {
	return Member{ID: uint64(m.ID), Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner}
}

func toMembers(in []jsonMember) []Member {
	out := make([]Member, 0, len(in))
	for _, m := range in {
		out = append(out, m.member())
	}
	return out
}

// jsonUint64 accepts a uint64 as a JSON string (grpc-gateway's jsonpb) or
// a number.
type jsonUint64 uint64

func (u *jsonUint64) UnmarshalJSON(b []byte) error {
	s := string(b)
	if s == "null" {
		return nil
	}
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("etcdm: uint64 %s: %w", b, err)
	}
	*u = jsonUint64(v)
	return nil
}

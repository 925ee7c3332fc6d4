package cloud

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudproto"
)

// ClusterInfo is one row of `runos-cloud clusters`.
type ClusterInfo struct {
	Name            string    `json:"name"`
	ID              string    `json:"id"`
	AgentClusterID  string    `json:"agent_cluster_id,omitempty"`
	Connected       bool      `json:"connected"`
	Leader          string    `json:"leader,omitempty"`
	LastSeenSeconds float64   `json:"last_seen_seconds"` // -1: never
	Nodes           int       `json:"nodes"`
	Revoked         bool      `json:"revoked"`
	Registered      bool      `json:"registered"`
	RegisteredAt    time.Time `json:"registered_at,omitzero"`
	Cursor          uint64    `json:"cursor"`
	ChangesApplied  uint64    `json:"changes_applied"`
	Duplicates      uint64    `json:"duplicates_ignored"`
	Resyncs         uint64    `json:"resyncs"`
}

// Clusters lists every cluster.
func (s *Server) Clusters() ([]ClusterInfo, error) {
	recs, err := s.store.clusters()
	if err != nil {
		return nil, err
	}
	out := []ClusterInfo{}
	for _, c := range recs {
		ci := ClusterInfo{Name: c.Name, ID: c.ID, AgentClusterID: c.AgentClusterID, Revoked: c.Revoked, Registered: c.CertSerial != "",
			RegisteredAt: c.RegisteredAt, Cursor: c.Cursor, ChangesApplied: c.ChangesApplied, Duplicates: c.DuplicatesIgnored, Resyncs: c.Resyncs, LastSeenSeconds: -1}
		ci.Leader, ci.Connected = s.connected(c.ID)
		last := c.LastSeen
		s.mu.Lock()
		if h, ok := s.health[c.ID]; ok && h.at.After(last) {
			last = h.at
		}
		s.mu.Unlock()
		if ci.Connected {
			last = time.Now()
		}
		if !last.IsZero() {
			ci.LastSeenSeconds = time.Since(last).Round(time.Millisecond).Seconds()
		}
		if m, err := s.store.readMirror(c.ID, false); err == nil {
			ci.Nodes = len(m.Nodes)
		}
		out = append(out, ci)
	}
	return out, nil
}

// Nodes is the mirrored node list of a cluster, with the latest health the
// leader reported (ages advanced by the time since the report).
func (s *Server) Nodes(ref string) (*api.NodesResponse, error) {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return nil, err
	}
	m, err := s.store.readMirror(c.ID, false)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	h, haveHealth := s.health[c.ID]
	s.mu.Unlock()
	live := map[string]api.Node{}
	if haveHealth {
		for _, n := range h.health.Nodes {
			live[n.ID] = n
		}
	}
	_, connected := s.connected(c.ID)
	out := &api.NodesResponse{Index: c.Cursor, Nodes: make([]api.Node, 0, len(m.Nodes))}
	for _, n := range m.Nodes {
		if v, ok := live[n.ID]; ok {
			n = v
			if n.LastHeartbeatSeconds >= 0 {
				n.LastHeartbeatSeconds += time.Since(h.at).Round(time.Millisecond).Seconds()
			}
		}
		if n.HealthReason == "this node" {
			// The agent's words for itself; here it is the node that
			// reported the cluster's health.
			n.HealthReason = "reported by this node (the leader)"
		}
		switch {
		case n.Health == "":
			n.Health, n.HealthReason = "unknown", "no health report from the cluster yet"
		case !connected:
			// The last report stands, but say how old it is.
			n.HealthReason = fmt.Sprintf("%s (as last reported; the cluster is not connected to the cloud)", n.HealthReason)
		}
		out.Nodes = append(out.Nodes, n)
	}
	return out, nil
}

// Events is the mirrored event log after seq.
func (s *Server) Events(ref string, after uint64) (*api.EventsResponse, error) {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return nil, err
	}
	m, err := s.store.readMirror(c.ID, false)
	if err != nil {
		return nil, err
	}
	out := &api.EventsResponse{Events: []api.Event{}, Last: after}
	for _, e := range m.Events {
		if e.Seq > after {
			out.Events = append(out.Events, e)
			out.Last = e.Seq
		}
	}
	return out, nil
}

// Mirror is a cluster's whole mirror (for comparisons and the console).
type Mirror struct {
	Cluster ClusterInfo        `json:"cluster"`
	Nodes   []api.Node         `json:"nodes"`
	Tokens  []cloudproto.Token `json:"tokens"`
	Events  []api.Event        `json:"events"`
	Changes []uint64           `json:"changes"` // Raft indexes received, in order
	// Services and apps as last reported, by OSID.
	Services []api.Service `json:"services"`
	Apps     []api.App     `json:"apps"`
}

// MirrorOf returns a cluster's mirror.
func (s *Server) MirrorOf(ref string) (*Mirror, error) {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return nil, err
	}
	m, err := s.store.readMirror(c.ID, true)
	if err != nil {
		return nil, err
	}
	out := &Mirror{Nodes: m.Nodes, Tokens: m.Tokens, Events: m.Events, Changes: m.Changes, Services: m.Services, Apps: m.Apps}
	cs, _ := s.Clusters()
	for _, ci := range cs {
		if ci.ID == c.ID {
			out.Cluster = ci
		}
	}
	return out, nil
}

// Command returns a command's record.
func (s *Server) Command(ref, id string) (*CommandRecord, error) {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return nil, err
	}
	return s.store.command(c.ID, id)
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, errNoCluster), errors.Is(err, errNoCommand):
		return http.StatusNotFound
	case errors.Is(err, errBadInput):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// TokenRequest is POST /api/tokens.
type TokenRequest struct {
	Cluster string `json:"cluster"`
	TTL     string `json:"ttl"`
}

// CommandRequest is POST /api/clusters/{c}/commands.
type CommandRequest struct {
	Kind string          `json:"kind"`
	Args json.RawMessage `json:"args"`
}

// apiHandler serves the admin socket and the console: the JSON API, the
// read-only agent API paths answered from the mirror under
// /clusters/{id}/v1/..., and the console page.
func (s *Server) apiHandler() http.Handler {
	mux := http.NewServeMux()
	decode := func(w http.ResponseWriter, r *http.Request, v any) bool {
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(v); err != nil {
			httpErr(w, http.StatusBadRequest, fmt.Errorf("malformed request: %w", err))
			return false
		}
		return true
	}
	reply := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			httpErr(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
	mux.HandleFunc("GET /api/clusters", func(w http.ResponseWriter, r *http.Request) {
		v, err := s.Clusters()
		reply(w, v, err)
	})
	mux.HandleFunc("POST /api/tokens", func(w http.ResponseWriter, r *http.Request) {
		var req TokenRequest
		if !decode(w, r, &req) {
			return
		}
		ttl := 24 * time.Hour
		if req.TTL != "" {
			d, err := time.ParseDuration(req.TTL)
			if err != nil || d <= 0 {
				httpErr(w, http.StatusBadRequest, fmt.Errorf("invalid ttl %q", req.TTL))
				return
			}
			ttl = d
		}
		v, err := s.CreateToken(req.Cluster, ttl)
		reply(w, v, err)
	})
	mux.HandleFunc("GET /api/clusters/{c}/mirror", func(w http.ResponseWriter, r *http.Request) {
		v, err := s.MirrorOf(r.PathValue("c"))
		reply(w, v, err)
	})
	mux.HandleFunc("POST /api/clusters/{c}/revoke", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]bool{"revoked": true}, s.Revoke(r.PathValue("c")))
	})
	mux.HandleFunc("POST /api/clusters/{c}/resync", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]bool{"reset": true}, s.ResetMirror(r.PathValue("c")))
	})
	mux.HandleFunc("GET /api/clusters/{c}/commands", func(w http.ResponseWriter, r *http.Request) {
		c, err := s.store.findCluster(r.PathValue("c"))
		if err != nil {
			httpErr(w, statusOf(err), err)
			return
		}
		v, err := s.store.commands(c.ID)
		if v == nil {
			v = []CommandRecord{}
		}
		reply(w, v, err)
	})
	mux.HandleFunc("GET /api/clusters/{c}/commands/{id}", func(w http.ResponseWriter, r *http.Request) {
		v, err := s.Command(r.PathValue("c"), r.PathValue("id"))
		reply(w, v, err)
	})
	mux.HandleFunc("POST /api/clusters/{c}/commands", func(w http.ResponseWriter, r *http.Request) {
		var req CommandRequest
		if !decode(w, r, &req) {
			return
		}
		v, err := s.SendCommand(r.PathValue("c"), req.Kind, req.Args)
		reply(w, v, err)
	})
	s.workloadRoutes(mux)
	// The agent's read paths, from the mirror, for the shared web UI.
	mux.HandleFunc("GET /clusters/{c}/v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		v, err := s.Nodes(r.PathValue("c"))
		reply(w, v, err)
	})
	mux.HandleFunc("GET /clusters/{c}/v1/events", func(w http.ResponseWriter, r *http.Request) {
		var after uint64
		if v := r.URL.Query().Get("after"); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				httpErr(w, http.StatusBadRequest, fmt.Errorf("invalid after=%q", v))
				return
			}
			after = n
		}
		// ?wait=D long-polls like the agent (at most a minute), so the
		// shared UI's event loop does not spin against the mirror.
		var wait time.Duration
		if v := r.URL.Query().Get("wait"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				httpErr(w, http.StatusBadRequest, fmt.Errorf("invalid wait=%q", v))
				return
			}
			wait = min(d, time.Minute)
		}
		deadline := time.Now().Add(wait)
		for {
			v, err := s.Events(r.PathValue("c"), after)
			if err != nil || len(v.Events) > 0 || !time.Now().Before(deadline) {
				reply(w, v, err)
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	})
	mux.HandleFunc("GET /clusters/{c}/v1/status", func(w http.ResponseWriter, r *http.Request) {
		v, err := s.clusterStatus(r.PathValue("c"))
		reply(w, v, err)
	})
	// The link as the cloud sees it, in the agent's GET /v1/cloud shape.
	mux.HandleFunc("GET /clusters/{c}/v1/cloud", func(w http.ResponseWriter, r *http.Request) {
		v, err := s.clusterLink(r.PathValue("c"))
		reply(w, v, err)
	})
	// Cloud only: what became of a command the UI's write turned into.
	mux.HandleFunc("GET /clusters/{c}/v1/commands/{id}", func(w http.ResponseWriter, r *http.Request) {
		v, err := s.Command(r.PathValue("c"), r.PathValue("id"))
		reply(w, v, err)
	})
	// Writes through the shared UI become cloud commands.
	mux.HandleFunc("POST /clusters/{c}/v1/tokens", func(w http.ResponseWriter, r *http.Request) {
		var req api.TokenRequest
		if !decode(w, r, &req) {
			return
		}
		args, _ := json.Marshal(cloudproto.CreateTokenArgs{TTL: req.TTL, Uses: req.Uses})
		v, err := s.SendCommand(r.PathValue("c"), "create_token", args)
		if err != nil {
			httpErr(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusAccepted, v)
	})
	mux.HandleFunc("DELETE /clusters/{c}/v1/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		args, _ := json.Marshal(cloudproto.RemoveNodeArgs{Name: r.PathValue("name")})
		v, err := s.SendCommand(r.PathValue("c"), "remove_node", args)
		if err != nil {
			httpErr(w, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusAccepted, v)
	})
	return mux
}

// clusterLink is GET /clusters/{id}/v1/cloud: the agent's CloudStatus as
// the cloud sees the link (connected or not, since when, who holds it, the
// cursor it has acknowledged).
func (s *Server) clusterLink(ref string) (*api.CloudStatus, error) {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return nil, err
	}
	out := &api.CloudStatus{Registered: c.CertSerial != "", URL: s.URL(), CloudClusterID: c.ID, RegisteredAt: c.RegisteredAt,
		AckIndex: c.Cursor, Index: c.Cursor, State: "not_registered"}
	if c.CertSerial == "" {
		return out, nil
	}
	leader, connected := s.connected(c.ID)
	out.Holder = leader
	s.mu.Lock()
	h, ok := s.health[c.ID]
	s.mu.Unlock()
	switch {
	case c.Revoked:
		out.State, out.LastError = "revoked", "the cloud refuses this cluster (revoked)"
	case connected:
		out.State, out.Since = "connected", c.LastSeen
	default:
		out.State, out.Since = "disconnected", c.LastSeen
		if ok && h.at.After(out.Since) {
			out.Since = h.at
		}
	}
	if ok {
		out.AckTime = h.at
	}
	return out, nil
}

// socketHandler is the admin socket: the JSON API and what only the
// machine's owner may do.
func (s *Server) socketHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", s.apiHandler())
	mux.HandleFunc("POST /api/admin/reset-password", func(w http.ResponseWriter, r *http.Request) {
		pw, err := s.ResetConsolePassword()
		if err != nil {
			httpErr(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"password": pw})
	})
	return mux
}

// clusterStatus is GET /clusters/{id}/v1/status from the mirror: the
// cluster's identity and leader as last reported.
func (s *Server) clusterStatus(ref string) (*api.Status, error) {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return nil, err
	}
	out := &api.Status{Name: c.Name, ClusterID: c.AgentClusterID, Peers: []api.Peer{},
		Raft: api.RaftStatus{State: "unknown", AppliedIndex: c.Cursor, Voters: []string{}, NonVoters: []string{}}}
	s.mu.Lock()
	h, ok := s.health[c.ID]
	s.mu.Unlock()
	if ok {
		out.Raft.Leader = h.health.Leader
		for _, n := range h.health.Nodes {
			switch n.RaftRole {
			case api.RoleLeader, api.RoleVoter:
				out.Raft.Voters = append(out.Raft.Voters, n.Name)
			default:
				out.Raft.NonVoters = append(out.Raft.NonVoters, n.Name)
			}
		}
	}
	if _, conn := s.connected(c.ID); conn {
		out.Raft.State = "connected"
	} else {
		out.Raft.State = "disconnected"
	}
	return out, nil
}

// ClusterConnected reports whether the cluster has a session now, and the
// node holding it.
func (s *Server) ClusterConnected(ref string) (leader string, ok bool) {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return "", false
	}
	return s.connected(c.ID)
}

// Package cloud is the reference backend behind runos-cloud: its own CA,
// registration with one-time tokens, the mTLS session each cluster's leader
// holds, a mirror of each cluster's state in bbolt, downlink commands, an
// admin socket, a STUN responder, and the console (the shared web UI behind
// a sign-in, and a JSON API).
package cloud

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/pki"
)

// SocketName is the admin socket in the data dir.
const SocketName = "cloud.sock"

// Config configures a Server.
type Config struct {
	DataDir string // required
	// Listen is the public TLS address: registration and sessions.
	Listen string // default 127.0.0.1:8443
	// ConsoleListen serves the console (the agent's web UI for every
	// cluster, and the JSON API) behind the admin sign-in over plain HTTP
	// ("" : the JSON API only on the admin socket). Keep it on loopback or
	// behind a TLS proxy: the session cookie must not cross a network in
	// the clear.
	ConsoleListen string
	// STUNListen is a UDP address for the STUN responder ("" : off).
	STUNListen string
}

var (
	errNoCluster = errors.New("no such cluster")
	errNoCommand = errors.New("no such command")
	errBadInput  = errors.New("bad request")
)

// Server is a running runos-cloud.
type Server struct {
	cfg     Config
	log     *slog.Logger
	store   *store
	ca      *pki.CA
	srvCert tls.Certificate

	mu       sync.Mutex
	sessions map[string]*session    // guarded by mu; by cloud cluster ID
	live     map[*session]bool      // guarded by mu; every upgraded connection, for Close
	health   map[string]healthState // guarded by mu; by cloud cluster ID

	closed    bool // guarded by mu; no new sessions once set
	listener  net.Listener
	servers   []*http.Server
	stun      *stunResponder
	startOnce sync.Once
	closeOnce sync.Once
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	initialPassword string // the console password this start created, else ""
}

type healthState struct {
	at     time.Time
	health cloudproto.Health
}

// New opens (or creates) the data dir: store, CA, server certificate.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("cloud: DataDir is required")
	}
	if log == nil {
		return nil, errors.New("cloud: logger is required")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8443"
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	st, err := openStore(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log.With("component", "cloud"), store: st, sessions: map[string]*session{}, live: map[*session]bool{}, health: map[string]healthState{}}
	if err := s.loadOrCreateCA(); err != nil {
		st.Close()
		return nil, err
	}
	if s.initialPassword, err = st.setConsoleAdmin(true); err != nil {
		st.Close()
		return nil, fmt.Errorf("console admin password: %w", err)
	}
	return s, nil
}

// Start listens on the public address, the admin socket, and the console
// and STUN addresses if configured.
func (s *Server) Start(ctx context.Context) error {
	err := errors.New("cloud: already started")
	s.startOnce.Do(func() {
		s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
		err = s.start()
		if err != nil {
			s.Close()
		}
	})
	return err
}

func (s *Server) start() error {
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.Cert)
	tc := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{s.srvCert},
		// Registration comes without a client certificate; sessions
		// must present one the cloud CA signed (checked per request).
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  pool,
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	s.listener = ln
	pub := http.NewServeMux()
	pub.HandleFunc("POST "+cloudproto.RegisterPath, s.handleRegister)
	pub.HandleFunc("GET "+cloudproto.LinkPath, s.handleLink)
	s.serve(tls.NewListener(ln, tc), pub, &http.Server{
		// HTTP/1.1 only: the session hijacks the connection.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	})

	sock := filepath.Join(s.cfg.DataDir, SocketName)
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		return fmt.Errorf("another runos-cloud is already running on %s", s.cfg.DataDir)
	}
	os.Remove(sock)
	uln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	os.Chmod(sock, 0o600)
	s.serve(uln, s.socketHandler(), &http.Server{})
	if s.cfg.ConsoleListen != "" {
		h, err := s.consoleHandler()
		if err != nil {
			return err
		}
		cln, err := net.Listen("tcp", s.cfg.ConsoleListen)
		if err != nil {
			return fmt.Errorf("console: %w", err)
		}
		s.cfg.ConsoleListen = cln.Addr().String()
		s.serve(cln, h, &http.Server{})
	}
	if s.cfg.STUNListen != "" {
		r, err := newSTUNResponder(s.cfg.STUNListen, s.log)
		if err != nil {
			return err
		}
		s.stun = r
		s.cfg.STUNListen = r.Addr().String()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			r.serve()
		}()
	}
	s.log.Info("runos-cloud listening", "addr", ln.Addr().String(), "ca_fingerprint", s.Fingerprint(), "console", s.cfg.ConsoleListen, "stun", s.cfg.STUNListen)
	return nil
}

func (s *Server) serve(ln net.Listener, h http.Handler, srv *http.Server) {
	srv.Handler = h
	srv.ReadHeaderTimeout = 10 * time.Second
	srv.BaseContext = func(net.Listener) context.Context { return s.ctx }
	srv.ErrorLog = slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	s.servers = append(s.servers, srv)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		srv.Serve(ln)
	}()
}

// Addr is the public address actually bound.
func (s *Server) Addr() string { return s.listener.Addr().String() }

// URL is the public URL clusters connect to.
func (s *Server) URL() string { return "https://" + s.Addr() }

// ConsoleAddr is the console's address ("" : off).
func (s *Server) ConsoleAddr() string { return s.cfg.ConsoleListen }

// STUNAddr is the STUN responder's address ("" : off).
func (s *Server) STUNAddr() string { return s.cfg.STUNListen }

// Close stops everything and waits. Idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		for _, srv := range s.servers {
			srv.Close()
		}
		s.mu.Lock()
		s.closed = true
		for ss := range s.live {
			ss.close()
		}
		s.mu.Unlock()
		if s.stun != nil {
			s.stun.close()
		}
		s.wg.Wait()
		s.store.Close()
	})
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func httpErr(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// TokenInfo is what token create returns.
type TokenInfo struct {
	Token     string    `json:"token"`
	Cluster   string    `json:"cluster"`
	ClusterID string    `json:"cluster_id"`
	ExpiresAt time.Time `json:"expires_at"`
	Connect   string    `json:"connect_command"`
}

// CreateToken makes a one-time registration token for the cluster named
// name (created if new). Registering with it (again) binds the cluster to
// a new client certificate; the old one stops working.
func (s *Server) CreateToken(name string, ttl time.Duration) (*TokenInfo, error) {
	if name == "" || len(name) > 63 {
		return nil, fmt.Errorf("%w: cluster name must be 1-63 characters", errBadInput)
	}
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	tok := cloudproto.RegToken{CAFingerprint: s.Fingerprint(), ID: randomHex(6), Secret: randomHex(16)}
	now := time.Now().UTC()
	var clusterID string
	err := s.store.db.Update(func(tx *bolt.Tx) error {
		var found *clusterRec
		tx.Bucket(bClusters).ForEach(func(k, v []byte) error {
			var c clusterRec
			if json.Unmarshal(v, &c) == nil && c.Name == name {
				found = &c
			}
			return nil
		})
		if found == nil {
			found = &clusterRec{ID: "cl-" + randomHex(6), Name: name}
			if err := s.store.putCluster(tx, found); err != nil {
				return err
			}
		}
		if found.Revoked {
			return fmt.Errorf("%w: cluster %s is revoked", errBadInput, name)
		}
		clusterID = found.ID
		return putJSON(tx.Bucket(bTokens), []byte(tok.ID), regToken{
			ID: tok.ID, SecretHash: pki.HashSecret(tok.Secret), ClusterID: found.ID, ExpiresAt: now.Add(ttl), CreatedAt: now,
		})
	})
	if err != nil {
		return nil, err
	}
	return &TokenInfo{Token: tok.String(), Cluster: name, ClusterID: clusterID, ExpiresAt: now.Add(ttl),
		Connect: fmt.Sprintf("runos-agent cloud connect --token %s %s", tok, s.URL())}, nil
}

// handleRegister exchanges a token and a CSR for a client certificate.
func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	var req cloudproto.RegisterRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		httpErr(w, http.StatusBadRequest, fmt.Errorf("malformed registration: %w", err))
		return
	}
	resp, err := s.register(req)
	if err != nil {
		s.log.Warn("registration refused", "remote", r.RemoteAddr, "err", err)
		httpErr(w, http.StatusForbidden, err)
		return
	}
	s.log.Info("cluster registered", "cluster", resp.Name, "id", resp.CloudClusterID, "agent_cluster", req.ClusterID)
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) register(req cloudproto.RegisterRequest) (*cloudproto.RegisterResponse, error) {
	tok, err := cloudproto.ParseRegToken(req.Token)
	if err != nil {
		return nil, err
	}
	if req.ClusterID == "" {
		return nil, errors.New("cluster_id is required")
	}
	var out *cloudproto.RegisterResponse
	err = s.store.db.Update(func(tx *bolt.Tx) error {
		var rt regToken
		if !getJSON(tx.Bucket(bTokens), []byte(tok.ID), &rt) || rt.SecretHash != pki.HashSecret(tok.Secret) {
			return errors.New("registration token is invalid")
		}
		if rt.Used {
			return errors.New("registration token has already been used")
		}
		if !time.Now().Before(rt.ExpiresAt) {
			return errors.New("registration token has expired")
		}
		c, ok := s.store.cluster(tx, rt.ClusterID)
		if !ok {
			return errors.New("registration token's cluster no longer exists")
		}
		if c.Revoked {
			return fmt.Errorf("cluster %s is revoked", c.Name)
		}
		cert, serial, fp, err := s.signClient([]byte(req.CSR), c.ID)
		if err != nil {
			return err
		}
		rt.Used = true
		if err := putJSON(tx.Bucket(bTokens), []byte(rt.ID), rt); err != nil {
			return err
		}
		// A (re-)registration starts a fresh mirror: the cluster sends
		// a full resync on its first session.
		if err := s.store.resetMirror(tx, c.ID); err != nil {
			return err
		}
		c.AgentClusterID, c.CertSerial, c.RegisteredAt, c.Cursor = req.ClusterID, serial, time.Now().UTC(), 0
		c.CertFingerprint, c.CertIssuedAt = fp, c.RegisteredAt
		c.ChangesApplied, c.DuplicatesIgnored, c.Resyncs = 0, 0, 0
		if err := s.store.putCluster(tx, c); err != nil {
			return err
		}
		out = &cloudproto.RegisterResponse{CloudClusterID: c.ID, Name: c.Name, ClientCertPEM: string(cert), CACertPEM: string(s.ca.CertPEM)}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// A session with the previous certificate must not outlive it.
	s.dropSession(out.CloudClusterID, nil)
	return out, nil
}

// Revoke refuses the cluster from now on and ends its session.
func (s *Server) Revoke(ref string) error {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return err
	}
	err = s.store.db.Update(func(tx *bolt.Tx) error {
		c, _ := s.store.cluster(tx, c.ID)
		c.Revoked = true
		return s.store.putCluster(tx, c)
	})
	if err == nil {
		s.dropSession(c.ID, nil)
		s.log.Info("cluster revoked", "cluster", c.Name, "id", c.ID)
	}
	return err
}

// CommandKinds are the command kinds clusters understand.
var CommandKinds = map[string]bool{"create_token": true, "remove_node": true,
	"deploy_service": true, "delete_service": true, "deploy_app": true, "delete_app": true}

// SendCommand records a command for a cluster and pushes it now if the
// cluster is connected; otherwise it goes out when the cluster connects.
func (s *Server) SendCommand(ref, kind string, args json.RawMessage) (*CommandRecord, error) {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return nil, err
	}
	if !CommandKinds[kind] {
		return nil, fmt.Errorf("%w: unknown command kind %q (create_token, remove_node, deploy_service, delete_service, deploy_app, delete_app)", errBadInput, kind)
	}
	rec := &CommandRecord{Command: cloudproto.Command{ID: "cmd-" + randomHex(8), Kind: kind, Args: args, CreatedAt: time.Now().UTC()}, Cluster: c.ID, State: CmdPending}
	if err := s.store.putCommand(c.ID, rec); err != nil {
		return nil, err
	}
	s.mu.Lock()
	ss := s.sessions[c.ID]
	s.mu.Unlock()
	if ss != nil {
		ss.sendCommand(rec.Command)
	}
	return rec, nil
}

// sendRaw pushes an arbitrary command frame to a connected cluster (tests
// replay IDs with it).
func (s *Server) sendRaw(clusterID string, c cloudproto.Command) bool {
	s.mu.Lock()
	ss := s.sessions[clusterID]
	s.mu.Unlock()
	if ss == nil {
		return false
	}
	ss.sendCommand(c)
	return true
}

func (s *Server) dropSession(id string, only *session) {
	s.mu.Lock()
	ss := s.sessions[id]
	if ss != nil && (only == nil || ss == only) {
		delete(s.sessions, id)
	} else {
		ss = nil
	}
	s.mu.Unlock()
	if ss != nil && only == nil {
		ss.close()
	}
}

// Resend pushes a recorded command to the connected cluster again, as if
// its result had been lost. The cluster answers with the recorded outcome
// and applies nothing (replays are refused by command ID).
func (s *Server) Resend(ref, cmdID string) error {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return err
	}
	rec, err := s.store.command(c.ID, cmdID)
	if err != nil {
		return err
	}
	if !s.sendRaw(c.ID, rec.Command) {
		return fmt.Errorf("cluster %s is not connected", c.Name)
	}
	return nil
}

// ResetMirror forgets a cluster's mirror, as a cloud restored from an old
// backup or with lost mirror data would, and ends its session: the cluster
// reconnects, finds the cloud's cursor at 0 and sends a full resync.
func (s *Server) ResetMirror(ref string) error {
	c, err := s.store.findCluster(ref)
	if err != nil {
		return err
	}
	err = s.store.db.Update(func(tx *bolt.Tx) error {
		c, _ := s.store.cluster(tx, c.ID)
		if err := s.store.resetMirror(tx, c.ID); err != nil {
			return err
		}
		c.Cursor = 0
		return s.store.putCluster(tx, c)
	})
	if err == nil {
		s.dropSession(c.ID, nil)
		s.log.Info("mirror reset; the cluster resyncs on reconnect", "cluster", c.Name)
	}
	return err
}

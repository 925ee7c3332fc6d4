// Package cloudlink is the agent side of the cloud link: registration with
// a runos-cloud backend, the one mTLS session the Raft leader holds, the
// uplink (heartbeats, health and the outbox of state changes) and the
// downlink (commands applied through Raft exactly once). Nothing local ever
// waits for it. It speaks the wire protocol of package cloudproto; the
// backend (package cloud) speaks it from the other end.
package cloudlink

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
)

// Host is what the link needs from the agent: the Raft replica and the
// health view. It is an interface so tests can drive the link without an
// agent (the agent package must not be imported here). Leadership is not
// part of it: the leader loop runs RunSession while this node leads.
type Host interface {
	State() (*raftstore.State, uint64)
	Changed() <-chan struct{}
	// Apply commits a command through the leader, retrying with the same
	// ID until ctx ends (raftstore.Store.Apply).
	Apply(ctx context.Context, cmd *raftstore.Command) (*raftstore.Result, error)
	// Nodes is every node with its health as this node sees it.
	Nodes() []api.Node
}

// Kind is one type of downlink command. Prepare must be deterministic in
// the command (a retried or replayed command yields the same Raft command);
// Result turns the applied outcome into the data reported to the cloud.
type Kind struct {
	Prepare func(c cloudproto.Command) (*raftstore.Command, error)
	Result  func(c cloudproto.Command, data json.RawMessage) (json.RawMessage, error)
	// Allow is the level the cloud needs for it (raftstore.CloudAllow*;
	// "" : admin).
	Allow string
}

// Config configures a Link.
type Config struct {
	Host     Host        // required
	DataKey  seal.Sealer // required: opens the client key, derives token secrets (current key); a *seal.Keyring follows rotations
	NodeName string      // required
	Version  string
	// JoinToken formats a join token from its ID and secret and the join
	// command that uses it (the agent's format). Required.
	JoinToken func(id, secret string) (token, joinCommand string)
	// Kinds adds command kinds (deploying services, later).
	Kinds map[string]Kind

	HealthInterval time.Duration // default 15s
	PingInterval   time.Duration // default 30s
	BackoffMin     time.Duration // default 1s
	BackoffMax     time.Duration // default 60s
	// StableAfter: a session that lasted this long resets the backoff.
	StableAfter time.Duration // default 60s
	// AckEvery is how often an advanced ack cursor is written to Raft.
	AckEvery time.Duration // default 2s
}

// Link states.
const (
	StateOff        = "not_registered"
	StateStandby    = "standby" // not the leader: the leader holds the session
	StateConnecting = "connecting"
	StateConnected  = "connected"
	StateBackoff    = "backoff"
)

// Status is the link's own view, for `cloud status`.
type Status struct {
	State     string    `json:"state"`
	Since     time.Time `json:"since"`
	NextRetry time.Time `json:"next_retry,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	Attempt   int       `json:"attempt"`
	// Cursor is the index the cloud has confirmed in the current session.
	Cursor        uint64 `json:"cursor"`
	BytesSent     uint64 `json:"bytes_sent"`
	BytesReceived uint64 `json:"bytes_received"`
}

// Link holds the cluster's session to the cloud while this node leads:
// Start runs what outlives a session (commands being applied, the idle
// status), RunSession the session itself.
type Link struct {
	cfg   Config
	log   *slog.Logger
	kinds map[string]Kind

	mu     sync.Mutex
	status Status // guarded by mu
	// running: RunSession runs, and only then may the state be
	// connecting, connected or backoff. Guarded by mu.
	running bool
	closed  bool // guarded by mu; no RunSession starts after Close
	// ctx lives from Start to Close: commands and ack writes run on it, so
	// a leadership change mid-apply still completes them. Set once by
	// Start (under mu).
	ctx context.Context

	sent, recv atomic.Uint64 // bytes on the wire (TLS included)
	// persisting: a re-issued credential is being written to Raft; no
	// new re-issue starts meanwhile.
	persisting atomic.Bool
	// handling are command IDs being applied now; guarded by mu.
	handling map[string]bool

	// The registration as of the last state change: the run loop asks
	// several times a second, and a state copy each time was most of an
	// idle agent's CPU. Guarded by regMu.
	regMu      sync.Mutex
	reg        *raftstore.CloudRegistration
	regChanged <-chan struct{} // closed at the next state change; nil: read now

	startOnce sync.Once
	closeOnce sync.Once
	cancel    context.CancelFunc // guarded by mu
	wg        sync.WaitGroup
}

// New returns a Link; Start runs it.
func New(cfg Config, log *slog.Logger) (*Link, error) {
	switch {
	case cfg.Host == nil:
		return nil, errors.New("cloudlink: Host is required")
	case cfg.DataKey == nil || cfg.DataKey.Current().IsZero():
		return nil, errors.New("cloudlink: DataKey is required")
	case cfg.NodeName == "":
		return nil, errors.New("cloudlink: NodeName is required")
	case cfg.JoinToken == nil:
		return nil, errors.New("cloudlink: JoinToken is required")
	case log == nil:
		return nil, errors.New("cloudlink: logger is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.HealthInterval, 15*time.Second)
	def(&cfg.PingInterval, 30*time.Second)
	def(&cfg.BackoffMin, time.Second)
	def(&cfg.BackoffMax, 60*time.Second)
	def(&cfg.StableAfter, 60*time.Second)
	def(&cfg.AckEvery, 2*time.Second)
	l := &Link{cfg: cfg, log: log.With("component", "cloudlink"), handling: map[string]bool{}}
	l.status = Status{State: StateOff, Since: time.Now()}
	const admin, deploy = raftstore.CloudAllowAdmin, raftstore.CloudAllowDeploy
	l.kinds = map[string]Kind{
		"create_token":   {Prepare: l.prepareToken, Result: l.tokenResult, Allow: admin},
		"remove_node":    {Prepare: prepareRemove, Result: func(cloudproto.Command, json.RawMessage) (json.RawMessage, error) { return nil, nil }, Allow: admin},
		"deploy_service": {Prepare: l.prepareService, Result: l.serviceResult, Allow: deploy},
		"delete_service": {Prepare: prepareDelete("delete_service", raftstore.OpWorkloadServiceDelete), Result: deleteResult, Allow: deploy},
		"deploy_app":     {Prepare: l.prepareApp, Result: l.appResult, Allow: deploy},
		"delete_app":     {Prepare: prepareDelete("delete_app", raftstore.OpWorkloadAppDelete), Result: deleteResult, Allow: deploy},
	}
	for k, v := range cfg.Kinds {
		if v.Allow == "" {
			v.Allow = admin
		}
		l.kinds[k] = v
	}
	return l, nil
}

// Start runs the link's background work until Close; RunSession needs it.
func (l *Link) Start(ctx context.Context) {
	l.startOnce.Do(func() {
		l.mu.Lock()
		l.ctx, l.cancel = context.WithCancel(ctx)
		ctx = l.ctx
		l.mu.Unlock()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.idle(ctx)
		}()
	})
}

// Close stops the link, ends a running session and waits for both.
// Idempotent.
func (l *Link) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		cancel := l.cancel
		l.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		l.wg.Wait()
	})
	return nil
}

// Status reports the link's state.
func (l *Link) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.status
	if s.State == StateOff {
		if reg := l.registration(); reg != nil {
			// Registered a moment ago: the link wakes at the state change.
			s.State, s.Since = StateStandby, reg.RegisteredAt
			if l.running {
				s.State = StateConnecting
			}
		}
	}
	s.BytesSent, s.BytesReceived = l.sent.Load(), l.recv.Load()
	return s
}

func (l *Link) setState(state string, next time.Time, lastErr error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.setStateLocked(state, next, lastErr)
}

func (l *Link) setStateLocked(state string, next time.Time, lastErr error) {
	if l.status.State != state {
		l.status.State, l.status.Since = state, time.Now()
	}
	l.status.NextRetry = next
	if lastErr != nil {
		l.status.LastError = lastErr.Error()
	} else if state == StateConnected {
		l.status.LastError = ""
	}
}

// setIdleLocked sets the state a link without a session reports: standby,
// or not registered. Lock order: mu, then regMu.
func (l *Link) setIdleLocked() {
	state := StateOff
	if l.registration() != nil {
		state = StateStandby
	}
	l.setStateLocked(state, time.Time{}, nil)
}

// idle keeps the state of a link without a session current as the
// registration comes and goes.
func (l *Link) idle(ctx context.Context) {
	for {
		changed := l.cfg.Host.Changed()
		l.mu.Lock()
		if !l.running {
			l.setIdleLocked()
		}
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// registration is the state's cloud registration, read again only after
// the state changed.
func (l *Link) registration() *raftstore.CloudRegistration {
	l.regMu.Lock()
	defer l.regMu.Unlock()
	if l.regChanged != nil {
		select {
		case <-l.regChanged:
		default:
			return l.reg
		}
	}
	l.regChanged = l.cfg.Host.Changed()
	st, _ := l.cfg.Host.State()
	l.reg = st.Cloud.Registration
	return l.reg
}

// regKey names a registration and its credential: a re-issued
// certificate is a new key too, so the session reconnects with it.
func regKey(r *raftstore.CloudRegistration) string {
	if r == nil {
		return ""
	}
	sum := sha256.Sum256(r.ClientCertPEM)
	return fmt.Sprintf("%s/%d/%x", r.CloudClusterID, r.Index, sum[:8])
}

// errStepDown ends a session because the registration changed: reconnect
// (or wait for one) at once, no backoff.
var errStepDown = errors.New("cloudlink: step down")

// RunSession holds the cluster's one session to the cloud until ctx ends
// (or the link closes), reconnecting with backoff, and then returns nil. It
// is a leader task: the leader loop runs it exactly while this node leads,
// and the link reports connecting, connected or backoff only meanwhile.
// Start must have been called; one RunSession runs at a time.
func (l *Link) RunSession(ctx context.Context) error {
	l.mu.Lock()
	switch {
	case l.ctx == nil:
		l.mu.Unlock()
		return errors.New("cloudlink: RunSession before Start")
	case l.closed:
		l.mu.Unlock()
		return nil
	case l.running:
		l.mu.Unlock()
		return errors.New("cloudlink: a session is already running")
	}
	l.running = true
	l.wg.Add(1)
	lctx := l.ctx
	l.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(lctx, cancel)
	defer func() {
		stop()
		cancel()
		l.mu.Lock()
		l.running = false
		l.setIdleLocked()
		l.mu.Unlock()
		l.wg.Done()
	}()
	attempt := 0
	for ctx.Err() == nil {
		reg := l.registration()
		if reg == nil {
			l.setState(StateOff, time.Time{}, nil)
			attempt = 0
			l.waitChange(ctx, time.Hour, "")
			continue
		}
		l.setState(StateConnecting, time.Time{}, nil)
		l.mu.Lock()
		l.status.Attempt = attempt + 1
		l.mu.Unlock()
		t0 := time.Now()
		err := l.session(ctx, lctx, reg)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(t0) >= l.cfg.StableAfter {
			attempt = 0
		}
		if errors.Is(err, errStepDown) {
			continue
		}
		delay := l.backoff(attempt)
		attempt++
		l.log.Warn("cloud session failed", "err", err, "retry_in", delay.Round(time.Millisecond))
		l.setState(StateBackoff, time.Now().Add(delay), err)
		l.waitChange(ctx, delay, regKey(reg))
	}
	return nil
}

// backoff is full jitter over an exponential ceiling: uniform in
// [0, min(max, min*2^attempt)], never below a millisecond.
func (l *Link) backoff(attempt int) time.Duration {
	ceil := l.cfg.BackoffMax
	if attempt < 30 {
		ceil = min(l.cfg.BackoffMax, l.cfg.BackoffMin<<attempt)
	}
	return max(time.Millisecond, time.Duration(rand.Int64N(int64(ceil)+1)))
}

// waitChange sleeps for d, waking early when the registration is no longer
// the one key names ("": none).
func (l *Link) waitChange(ctx context.Context, d time.Duration, key string) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		changed := l.cfg.Host.Changed()
		if regKey(l.registration()) != key {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		case <-changed:
		}
	}
}

type countingConn struct {
	net.Conn
	l *Link
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.recv.Add(uint64(n))
	return n, err
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.l.sent.Add(uint64(n))
	return n, err
}

// dial opens the mTLS session: TLS pinned to the cloud CA with the
// cluster's client certificate, then an HTTP/1.1 Upgrade to the link
// protocol on the same port as registration.
func (l *Link) dial(ctx context.Context, reg *raftstore.CloudRegistration) (net.Conn, *bufio.Reader, error) {
	keyPEM, err := l.cfg.DataKey.Open(raftstore.CloudKeyPurpose, reg.ClientKeySealed)
	if err != nil {
		return nil, nil, fmt.Errorf("open cloud client key: %w", err)
	}
	cert, err := tls.X509KeyPair(reg.ClientCertPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("cloud client certificate: %w", err)
	}
	u, err := url.Parse(reg.URL)
	if err != nil {
		return nil, nil, err
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "443")
	}
	tc := pki.PinnedClientConfig(reg.CAFingerprint)
	tc.Certificates = []tls.Certificate{cert}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	d := tls.Dialer{Config: tc}
	raw, err := d.DialContext(dctx, "tcp", host)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", host, err)
	}
	conn := countingConn{raw, l}
	raw.SetDeadline(time.Now().Add(15 * time.Second))
	req := "GET " + cloudproto.LinkPath + " HTTP/1.1\r\nHost: " + u.Host + "\r\nConnection: Upgrade\r\nUpgrade: " + cloudproto.LinkProtocol + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		raw.Close()
		return nil, nil, fmt.Errorf("cloud session: %w", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		raw.Close()
		return nil, nil, fmt.Errorf("cloud session: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		var e struct {
			Error string `json:"error"`
		}
		json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e)
		resp.Body.Close()
		raw.Close()
		if e.Error == "" {
			e.Error = resp.Status
		}
		return nil, nil, fmt.Errorf("cloud refused the session: %s", e.Error)
	}
	raw.SetDeadline(time.Time{})
	return conn, br, nil
}

// maxBatch bounds one changes frame by entries and (roughly) bytes, well
// below cloudproto.MaxFrame.
const (
	maxBatch      = 1000
	maxBatchBytes = 1 << 20
)

// session runs one session on ctx (this leadership); what must outlive it
// (command applies, ack writes) runs on the link's own context.
func (l *Link) session(ctx, lctx context.Context, reg *raftstore.CloudRegistration) error {
	conn, br, err := l.dial(ctx, reg)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	var swg sync.WaitGroup
	defer func() {
		cancel()
		conn.Close()
		swg.Wait()
	}()
	write := func(m *cloudproto.Msg) error {
		conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		return cloudproto.WriteFrame(conn, m)
	}
	st, idx := l.cfg.Host.State()
	if err := write(&cloudproto.Msg{Type: cloudproto.MsgHello, Hello: &cloudproto.Hello{
		CloudClusterID: reg.CloudClusterID, ClusterID: st.ClusterID, Node: l.cfg.NodeName, Version: l.cfg.Version, Index: idx,
	}}); err != nil {
		return fmt.Errorf("cloud session: send hello: %w", err)
	}
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	w, err := cloudproto.ReadFrame(br)
	if err != nil {
		return fmt.Errorf("cloud session: read welcome: %w", err)
	}
	if w.Type == cloudproto.MsgError {
		return fmt.Errorf("cloud refused the session: %s", w.Error)
	}
	if w.Type != cloudproto.MsgWelcome {
		return fmt.Errorf("cloud session: expected welcome, got %q", w.Type)
	}
	conn.SetReadDeadline(time.Time{})
	cursor := w.Index
	l.mu.Lock()
	l.status.Cursor = cursor
	l.mu.Unlock()
	l.setState(StateConnected, time.Time{}, nil)
	l.log.Info("cloud session up", "url", reg.URL, "cloud_cluster", reg.CloudClusterID, "cloud_cursor", cursor, "index", idx)

	in := make(chan *cloudproto.Msg, 16)
	readErr := make(chan error, 1)
	swg.Add(1)
	go func() {
		defer swg.Done()
		for {
			// A cloud that says nothing for three pings is gone.
			conn.SetReadDeadline(time.Now().Add(3 * l.cfg.PingInterval))
			m, err := cloudproto.ReadFrame(br)
			if err != nil {
				readErr <- err
				return
			}
			select {
			case in <- m:
			case <-sctx.Done():
				return
			}
		}
	}()
	results := make(chan *cloudproto.CmdResult, 64)

	health := time.NewTicker(l.cfg.HealthInterval)
	defer health.Stop()
	ping := time.NewTicker(l.cfg.PingInterval)
	defer ping.Stop()
	ackTick := time.NewTicker(l.cfg.AckEvery)
	defer ackTick.Stop()

	var (
		sentThrough = cursor
		inflight    bool
		persisted   = st.Cloud.AckIndex
		acking      atomic.Bool
	)
	if cursor > idx {
		// A leader elected a moment ago may not have applied all that its
		// predecessor sent: give its FSM a few seconds to catch up before
		// concluding the cloud holds a history we do not.
		deadline := time.NewTimer(5 * time.Second)
	wait:
		for idx < cursor {
			changed := l.cfg.Host.Changed()
			if _, idx = l.cfg.Host.State(); idx >= cursor {
				break
			}
			select {
			case <-changed:
			case <-deadline.C:
				break wait
			case <-ctx.Done():
				deadline.Stop()
				return ctx.Err()
			}
		}
		deadline.Stop()
	}
	if cursor > idx || cursor < reg.Index {
		// The cloud is ahead of us (a restored data dir) or has nothing
		// since registration: resend everything.
		sentThrough = 0
	}
	sendMore := func() error {
		if inflight {
			return nil
		}
		st, idx := l.cfg.Host.State()
		changes, ok := st.Cloud.ChangesAfter(sentThrough)
		if !ok || sentThrough == 0 {
			snap := l.snapshot(st, idx)
			l.log.Info("cloud full resync", "index", idx, "nodes", len(snap.Nodes), "cloud_cursor", sentThrough)
			if err := write(&cloudproto.Msg{Type: cloudproto.MsgSnapshot, Snapshot: snap}); err != nil {
				return err
			}
			sentThrough, inflight = idx, true
			return nil
		}
		if len(changes) == 0 {
			return nil
		}
		batch := l.buildChanges(st, changes)
		if err := write(&cloudproto.Msg{Type: cloudproto.MsgChanges, Changes: batch}); err != nil {
			return err
		}
		sentThrough, inflight = batch[len(batch)-1].Index, true
		return nil
	}
	// Health goes out every HealthInterval, and within a second of any
	// node changing health, role or first being heard from, so the cloud
	// sees transitions at once without a chatty period.
	var lastSig string
	sendHealth := func(nodes []api.Node) error {
		lastSig = healthSig(nodes)
		return write(&cloudproto.Msg{Type: cloudproto.MsgHealth, Health: &cloudproto.Health{Leader: l.cfg.NodeName, Nodes: nodes}})
	}
	healthCheck := time.NewTicker(time.Second)
	defer healthCheck.Stop()
	// A pending rotation: one CSR at a time; a refused one is asked again
	// at a later health tick.
	var (
		reissueKey []byte // the key of the CSR sent; nil: none awaited
		reissueAt  time.Time
	)
	maybeReissue := func() error {
		if reissueKey != nil || l.persisting.Load() || time.Since(reissueAt) < l.cfg.HealthInterval {
			return nil
		}
		if st, _ := l.cfg.Host.State(); !st.Cloud.RotateCredential {
			return nil
		}
		key, keyPEM, err := pki.NewKey()
		if err != nil {
			return err
		}
		csr, err := pki.NewCSR(key, "runos-cluster")
		if err != nil {
			return err
		}
		reissueKey, reissueAt = keyPEM, time.Now()
		l.log.Info("re-issuing the cloud client credential")
		return write(&cloudproto.Msg{Type: cloudproto.MsgReissue, Reissue: &cloudproto.Reissue{CSR: string(csr)}})
	}
	if err := sendHealth(l.cfg.Host.Nodes()); err != nil {
		return err
	}
	if err := sendMore(); err != nil {
		return err
	}
	if err := maybeReissue(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			// No longer leading (or closing): the next leader resumes from
			// the cursor, so write it down.
			l.persistAck(lctx, cursor, &persisted, &acking, &l.wg)
			l.log.Info("cloud session handed over", "reason", "no longer leader")
			return ctx.Err()
		case err := <-readErr:
			if errors.Is(err, io.EOF) {
				return errors.New("cloud closed the session")
			}
			return fmt.Errorf("cloud session: %w", err)
		case <-l.cfg.Host.Changed():
			if regKey(l.registration()) != regKey(reg) {
				l.persistAck(lctx, cursor, &persisted, &acking, &l.wg)
				l.log.Info("cloud session handed over", "reason", "registration changed")
				return errStepDown
			}
			if err := sendMore(); err != nil {
				return err
			}
			if err := maybeReissue(); err != nil {
				return err
			}
		case m := <-in:
			switch m.Type {
			case cloudproto.MsgAck:
				if m.Index >= cursor {
					cursor = m.Index
				}
				inflight = false
				l.mu.Lock()
				l.status.Cursor = cursor
				l.mu.Unlock()
				if err := sendMore(); err != nil {
					return err
				}
			case cloudproto.MsgCommand:
				if m.Command != nil {
					l.handle(lctx, *m.Command, results)
				}
			case cloudproto.MsgPing:
				if err := write(&cloudproto.Msg{Type: cloudproto.MsgPong}); err != nil {
					return err
				}
			case cloudproto.MsgReissued:
				keyPEM := reissueKey
				reissueKey = nil
				if err := l.reissued(lctx, reg, keyPEM, m.Reissue); err != nil {
					l.log.Warn("cloud credential not re-issued", "err", err)
				}
			case cloudproto.MsgPong:
			case cloudproto.MsgError:
				return fmt.Errorf("cloud ended the session: %s", m.Error)
			default:
				l.log.Warn("ignoring unknown frame from the cloud", "type", m.Type)
			}
		case r := <-results:
			if err := write(&cloudproto.Msg{Type: cloudproto.MsgResult, Result: r}); err != nil {
				return err
			}
		case <-health.C:
			if err := sendHealth(l.cfg.Host.Nodes()); err != nil {
				return err
			}
			if err := maybeReissue(); err != nil {
				return err
			}
		case <-healthCheck.C:
			if nodes := l.cfg.Host.Nodes(); healthSig(nodes) != lastSig {
				if err := sendHealth(nodes); err != nil {
					return err
				}
			}
		case <-ping.C:
			if err := write(&cloudproto.Msg{Type: cloudproto.MsgPing}); err != nil {
				return err
			}
		case <-ackTick.C:
			l.persistAck(lctx, cursor, &persisted, &acking, &l.wg)
		}
	}
}

// reissued checks the cloud's answer to a re-issue (a certificate of the
// cloud CA, for this cluster, for the key of the CSR) and writes it to
// Raft, sealed, in one command that also clears the pending rotation. The
// cloud accepts only the new certificate from now on, so the write
// outlives the session (and a leadership change: Apply forwards and
// retries with the same ID until the link closes). The registration's
// change then moves the session onto the new certificate.
func (l *Link) reissued(ctx context.Context, reg *raftstore.CloudRegistration, keyPEM []byte, r *cloudproto.Reissue) error {
	switch {
	case keyPEM == nil:
		return errors.New("the cloud sent a certificate nobody asked for")
	case r == nil:
		return fmt.Errorf("%w: reissued without body", cloudproto.ErrMalformed)
	case r.Error != "":
		return fmt.Errorf("the cloud refused: %s", r.Error)
	}
	if err := checkClientCert(reg, []byte(r.CertPEM), keyPEM); err != nil {
		return fmt.Errorf("the cloud answered an unusable certificate: %w", err)
	}
	sealed, err := l.cfg.DataKey.Seal(raftstore.CloudKeyPurpose, keyPEM)
	if err != nil {
		return err
	}
	next := *reg
	next.ClientCertPEM, next.ClientKeySealed = []byte(r.CertPEM), sealed
	sum := sha256.Sum256(next.ClientCertPEM)
	cmd := &raftstore.Command{ID: "cloud-reissue-" + hex.EncodeToString(sum[:8]), Op: raftstore.OpCloudReissue, Cloud: &raftstore.CloudCmd{Register: &next}}
	l.persisting.Store(true)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer l.persisting.Store(false)
		res, err := l.cfg.Host.Apply(ctx, cmd)
		if err == nil {
			err = res.Error()
		}
		if err != nil {
			l.log.Error("re-issued cloud credential not stored; reconnect with a new registration token if the session stays refused", "err", err)
			return
		}
		l.log.Info("cloud client credential re-issued", "index", res.Index)
	}()
	return nil
}

// checkClientCert checks a client certificate from the cloud: signed by
// the registration's cloud CA for client auth, naming the cloud cluster,
// for keyPEM.
func checkClientCert(reg *raftstore.CloudRegistration, certPEM, keyPEM []byte) error {
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return err
	}
	cert, err := pki.ParseCert(certPEM)
	if err != nil {
		return err
	}
	ca, err := pki.ParseCert(reg.CACertPEM)
	if err != nil {
		return fmt.Errorf("registration's cloud CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return err
	}
	if cert.Subject.CommonName != reg.CloudClusterID {
		return fmt.Errorf("certificate names %q, not cloud cluster %s", cert.Subject.CommonName, reg.CloudClusterID)
	}
	return nil
}

// healthSig summarises what a health report says beyond ages and gauges.
func healthSig(nodes []api.Node) string {
	var b strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&b, "%s:%s:%s:%v;", n.ID, n.Health, n.RaftRole, n.LastHeartbeatSeconds >= 0)
	}
	return b.String()
}

// persistAck writes an advanced cursor to Raft in the background (so any
// future leader and `cloud status` see it); one write at a time.
func (l *Link) persistAck(ctx context.Context, cursor uint64, persisted *uint64, busy *atomic.Bool, wg *sync.WaitGroup) {
	if cursor <= *persisted || !busy.CompareAndSwap(false, true) {
		return
	}
	*persisted = cursor
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer busy.Store(false)
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := l.cfg.Host.Apply(actx, &raftstore.Command{Op: raftstore.OpCloudAck, Cloud: &raftstore.CloudCmd{AckIndex: cursor}}); err != nil {
			l.log.Debug("persist cloud ack", "err", err)
		}
	}()
}

func tokensOf(st *raftstore.State) []cloudproto.Token {
	out := make([]cloudproto.Token, 0, len(st.Tokens))
	for _, t := range st.Tokens {
		out = append(out, cloudproto.Token{ID: t.ID, ExpiresAt: t.ExpiresAt, UsesLeft: t.UsesLeft, CreatedAt: t.CreatedAt})
	}
	return out
}

func (l *Link) nodeRecords() map[string]api.Node {
	out := map[string]api.Node{}
	for _, n := range l.cfg.Host.Nodes() {
		out[n.ID] = n
	}
	return out
}

func (l *Link) snapshot(st *raftstore.State, idx uint64) *cloudproto.Snapshot {
	s := &cloudproto.Snapshot{Index: idx, Nodes: []api.Node{}, Tokens: tokensOf(st), Events: make([]api.Event, 0, len(st.Events))}
	live := l.nodeRecords()
	for _, n := range st.SortedNodes() {
		s.Nodes = append(s.Nodes, nodeRecord(n, live))
	}
	s.Services, s.Apps = workloadLists(st)
	for _, e := range st.Events {
		if e.Seq <= idx {
			s.Events = append(s.Events, api.Event(e))
		}
	}
	return s
}

// nodeRecord is the node in the api shape: the live view if the host has
// it, else the state's record.
func nodeRecord(n *raftstore.Node, live map[string]api.Node) api.Node {
	if v, ok := live[n.ID]; ok {
		return v
	}
	return api.Node{Name: n.Name, ID: n.ID, MeshIP: n.MeshIP.String(), PodCIDR: n.PodCIDR.String(), Version: n.Version,
		Endpoints: n.Endpoints, Relay: n.Relay, JoinedAt: n.JoinedAt, LastHeartbeatSeconds: -1}
}

func (l *Link) buildChanges(st *raftstore.State, changes []raftstore.CloudChange) []cloudproto.Change {
	events := map[uint64][]api.Event{}
	for _, e := range st.Events {
		events[e.Seq] = append(events[e.Seq], api.Event(e))
	}
	live := l.nodeRecords()
	out := make([]cloudproto.Change, 0, min(len(changes), maxBatch))
	size := 0
	for _, c := range changes {
		if len(out) >= maxBatch || size >= maxBatchBytes {
			break
		}
		ch := cloudproto.Change{Index: c.Index, Op: c.Op, Events: events[c.Index]}
		switch c.Op {
		case raftstore.OpBootstrap, raftstore.OpJoin, raftstore.OpRemoveNode, raftstore.OpUpdateNode:
			ch.NodeID = c.Subject
			if n, ok := st.Nodes[c.Subject]; ok {
				rec := nodeRecord(n, live)
				ch.Node = &rec
				size += 400
			}
		}
		switch c.Op {
		case raftstore.OpWorkloadServiceCreate, raftstore.OpWorkloadAppCreate, raftstore.OpWorkloadServiceDelete, raftstore.OpWorkloadAppDelete,
			raftstore.OpWorkloadServicePurge, raftstore.OpWorkloadAppPurge, raftstore.OpWorkloadStatus:
			if c.Subject != "" {
				workloadChange(st, &ch, c.Subject)
				size += 400
			}
		}
		switch c.Op {
		case raftstore.OpCreateToken, raftstore.OpJoin:
			// Tokens are few (spent and expired ones go within a day),
			// but a backlog of thousands of token creations must not
			// send the list with each: only the last of a batch does.
			ch.TokensChanged = true
		}
		size += 64 + 200*len(ch.Events)
		out = append(out, ch)
	}
	for i := len(out) - 1; i >= 0; i-- {
		if out[i].TokensChanged {
			out[i].Tokens = tokensOf(st)
			for j := range i {
				out[j].TokensChanged = false
			}
			break
		}
	}
	return out
}

// handle applies a command in the background and queues its result. The
// apply runs on the link's context, not the session's: a leader change
// mid-apply still completes it (raftstore retries with the same ID), and
// the cloud's resend then gets the recorded result.
func (l *Link) handle(ctx context.Context, c cloudproto.Command, results chan<- *cloudproto.CmdResult) {
	l.mu.Lock()
	if l.handling[c.ID] {
		l.mu.Unlock()
		return
	}
	l.handling[c.ID] = true
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer func() {
			l.mu.Lock()
			delete(l.handling, c.ID)
			l.mu.Unlock()
		}()
		r := l.apply(ctx, c)
		select {
		case results <- r:
		default:
			l.log.Warn("cloud command result not delivered (session busy or gone); the cloud will resend", "id", c.ID)
		}
	}()
}

func (l *Link) apply(ctx context.Context, c cloudproto.Command) *cloudproto.CmdResult {
	out := &cloudproto.CmdResult{ID: c.ID}
	kind, ok := l.kinds[c.Kind]
	finish := func(errText string, data json.RawMessage, index uint64, replayed bool) *cloudproto.CmdResult {
		out.Error, out.Index, out.Replayed = errText, index, replayed
		if errText == "" {
			d, err := kind.Result(c, data)
			if err != nil {
				out.Error = err.Error()
			}
			out.Data = d
		}
		return out
	}
	st, _ := l.cfg.Host.State()
	if prev := st.Cloud.Result(c.ID); c.ID != "" && prev != nil {
		l.log.Warn("refusing replayed cloud command: applied before", "id", c.ID, "index", prev.Index)
		return finish(prev.Err, prev.Data, prev.Index, true)
	}
	var inner *raftstore.Command
	var refused error
	recID, kindName := c.ID, c.Kind
	if !ok && (len(kindName) > 64 || !validCommandID(kindName)) {
		// What is recorded in Raft stays small whatever the cloud sends.
		kindName = "(malformed)"
	}
	switch {
	case c.ID == "":
		refused = errors.New("command without an ID")
	case !validCommandID(c.ID):
		// Recorded without it: an ID that does not survive the Raft
		// log's JSON as it is would never match its record.
		refused, recID = errors.New("malformed command ID"), ""
	case !ok:
		refused = fmt.Errorf("unknown command kind %q", kindName)
	case st.Cloud.Registration == nil:
		refused = errors.New("not connected to a cloud")
	case !raftstore.CloudAllows(st.Cloud.Registration.Allow, kind.Allow):
		refused = raftstore.CloudLevelError(c.Kind, st.Cloud.Registration.Allow, kind.Allow)
	default:
		inner, refused = kind.Prepare(c)
	}
	cmd := &raftstore.Command{Op: raftstore.OpCloudExec, Cloud: &raftstore.CloudCmd{CommandID: recID, Kind: kindName, Inner: inner}}
	if recID != "" {
		cmd.ID = "cloud-" + recID
	}
	if refused != nil {
		// Refused, and recorded so: the event names it, and a resend
		// gets the same answer.
		reason := refused.Error()
		if len(reason) > maxReason {
			reason = strings.ToValidUTF8(reason[:maxReason], "") + "…"
		}
		l.log.Warn("refusing cloud command", "id", recID, "kind", kindName, "err", reason)
		cmd.Cloud.Inner, cmd.Cloud.Refused = nil, reason
		out.Error = reason
	}
	actx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	res, err := l.cfg.Host.Apply(actx, cmd)
	if err != nil {
		if refused == nil {
			out.Error = err.Error()
		}
		return out
	}
	if strings.Contains(res.Err, raftstore.ErrCloudReplay.Error()) {
		st, _ := l.cfg.Host.State()
		if prev := st.Cloud.Result(c.ID); prev != nil {
			return finish(prev.Err, prev.Data, prev.Index, true)
		}
	}
	if refused != nil {
		out.Index = res.Index
		return out
	}
	l.log.Info("applied cloud command", "id", c.ID, "kind", c.Kind, "index", res.Index, "err", res.Err)
	return finish(res.Err, res.Data, res.Index, false)
}

// maxReason bounds a refusal as recorded in Raft (it may quote the
// cloud's arguments).
const maxReason = 512

// validCommandID: 1 to 128 printable UTF-8 characters.
func validCommandID(id string) bool {
	if id == "" || len(id) > 128 || !utf8.ValidString(id) {
		return false
	}
	for _, r := range id {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// tokenSecret derives a cloud-created join token's ID and secret from the
// command ID with the cluster data key: the same command always yields the
// same token, so a retry or replay reports the token that was stored, and
// the secret itself is never stored anywhere.
func (l *Link) tokenSecret(cmdID string) (id, secret string) {
	// The current key: a node removed since (holding only older keys)
	// cannot derive the secret of a token created after its removal.
	key := l.cfg.DataKey.Current()
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte("runos cloud join token\x00" + cmdID))
	sum := m.Sum(nil)
	return hex.EncodeToString(sum[:6]), hex.EncodeToString(sum[6:22])
}

// tokenCmd builds a cloud-created join token from the command: the same
// command always yields the same token.
func (l *Link) tokenCmd(c cloudproto.Command) (*raftstore.Command, time.Duration, error) {
	var a cloudproto.CreateTokenArgs
	if len(c.Args) > 0 {
		if err := json.Unmarshal(c.Args, &a); err != nil {
			return nil, 0, fmt.Errorf("create_token: malformed args: %w", err)
		}
	}
	ttl := time.Hour
	if a.TTL != "" {
		d, err := time.ParseDuration(a.TTL)
		if err != nil || d <= 0 {
			return nil, 0, fmt.Errorf("create_token: invalid ttl %q", a.TTL)
		}
		ttl = d
	}
	if a.Uses == 0 {
		a.Uses = 1
	}
	if a.Uses < 0 {
		return nil, 0, fmt.Errorf("create_token: invalid uses %d", a.Uses)
	}
	if c.CreatedAt.IsZero() {
		return nil, 0, errors.New("create_token: command has no created_at")
	}
	id, secret := l.tokenSecret(c.ID)
	return &raftstore.Command{Op: raftstore.OpCreateToken, CreateToken: &raftstore.CreateTokenCmd{Token: raftstore.Token{
		ID: id, SecretHash: pki.HashSecret(secret), ExpiresAt: c.CreatedAt.Add(ttl).UTC(), UsesLeft: a.Uses,
	}}}, ttl, nil
}

// prepareToken refuses a token beyond the cluster's token policy (24 h and
// 10 uses unless changed locally) before it reaches Raft, where the FSM
// checks it again: a compromised cloud mints nothing long-lived or widely
// reusable.
func (l *Link) prepareToken(c cloudproto.Command) (*raftstore.Command, error) {
	cmd, ttl, err := l.tokenCmd(c)
	if err != nil {
		return nil, err
	}
	st, _ := l.cfg.Host.State()
	if err := st.EffectiveTokenPolicy().Allow(ttl, cmd.CreateToken.Token.UsesLeft); err != nil {
		return nil, fmt.Errorf("create_token: %w", err)
	}
	return cmd, nil
}

func (l *Link) tokenResult(c cloudproto.Command, _ json.RawMessage) (json.RawMessage, error) {
	inner, _, err := l.tokenCmd(c)
	if err != nil {
		return nil, err
	}
	id, secret := l.tokenSecret(c.ID)
	tok, cmd := l.cfg.JoinToken(id, secret)
	return json.Marshal(api.Token{Token: tok, ExpiresAt: inner.CreateToken.Token.ExpiresAt, Uses: inner.CreateToken.Token.UsesLeft, JoinCommand: cmd})
}

func prepareRemove(c cloudproto.Command) (*raftstore.Command, error) {
	var a cloudproto.RemoveNodeArgs
	if err := json.Unmarshal(c.Args, &a); err != nil || a.Name == "" || len(a.Name) > 253 {
		return nil, errors.New("remove_node: args must name the node ({\"name\": ...})")
	}
	return &raftstore.Command{Op: raftstore.OpRemoveNode, RemoveNode: &raftstore.RemoveNodeCmd{Name: a.Name}}, nil
}

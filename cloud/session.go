package cloud

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/runos/runos-agent/cloudproto"
	"github.com/runos/runos-agent/pki"
)

// session is one cluster's live link. Writes come from the read loop and
// from API requests pushing commands, so they are serialised by mu.
type session struct {
	s         *Server
	clusterID string
	conn      net.Conn
	br        *bufio.Reader
	leader    string
	// serial and certFP name the client certificate the session proved
	// (a re-issue over the session moves them to the new one). Guarded
	// by s.mu.
	serial, certFP string

	mu        sync.Mutex // guards writes to conn
	closeOnce sync.Once
}

func (ss *session) write(m *cloudproto.Msg) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	return cloudproto.WriteFrame(ss.conn, m)
}

func (ss *session) close() { ss.closeOnce.Do(func() { ss.conn.Close() }) }

func (ss *session) sendCommand(c cloudproto.Command) {
	if err := ss.write(&cloudproto.Msg{Type: cloudproto.MsgCommand, Command: &c}); err != nil {
		ss.s.log.Warn("send command", "cluster", ss.clusterID, "id", c.ID, "err", err)
		ss.close()
		return
	}
	ss.s.store.markSent(ss.clusterID, c.ID)
}

// fail tells the peer why, logs, and closes.
func (ss *session) fail(err error) {
	ss.s.log.Warn("cloud session refused", "cluster", ss.clusterID, "remote", ss.conn.RemoteAddr().String(), "err", err)
	ss.write(&cloudproto.Msg{Type: cloudproto.MsgError, Error: err.Error()})
	ss.close()
}

// handleLink authenticates the client certificate, upgrades the
// connection and runs the session.
func (s *Server) handleLink(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		httpErr(w, http.StatusUnauthorized, errors.New("a session needs the cluster's client certificate (register first)"))
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), cloudproto.LinkProtocol) {
		httpErr(w, http.StatusBadRequest, fmt.Errorf("expected Upgrade: %s", cloudproto.LinkProtocol))
		return
	}
	leaf := r.TLS.PeerCertificates[0]
	certCluster := leaf.Subject.CommonName
	c, err := s.store.findCluster(certCluster)
	switch {
	case err != nil:
		err = fmt.Errorf("client certificate names unknown cluster %q", certCluster)
	case c.ID != certCluster:
		err = fmt.Errorf("client certificate names %q, which is not a cluster ID", certCluster)
	case c.Revoked:
		err = fmt.Errorf("cluster %s is revoked", c.Name)
	case !c.currentCert(pki.Fingerprint(leaf), pki.SerialOf(leaf)):
		err = fmt.Errorf("client certificate %s of cluster %s was replaced by a later registration or re-issue", pki.SerialOf(leaf), c.Name)
	}
	if err != nil {
		s.log.Warn("cloud session refused", "remote", r.RemoteAddr, "err", err)
		httpErr(w, http.StatusForbidden, err)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		httpErr(w, http.StatusInternalServerError, errors.New("connection cannot be upgraded"))
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+cloudproto.LinkProtocol+"\r\n\r\n")
	ss := &session{s: s, clusterID: c.ID, conn: conn, br: brw.Reader, serial: pki.SerialOf(leaf), certFP: pki.Fingerprint(leaf)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return
	}
	s.live[ss] = true
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer func() {
			ss.close()
			s.mu.Lock()
			delete(s.live, ss)
			s.mu.Unlock()
		}()
		ss.run()
	}()
}

func (ss *session) run() {
	s := ss.s
	ss.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	m, err := cloudproto.ReadFrame(ss.br)
	if err != nil {
		ss.fail(fmt.Errorf("reading hello: %w", err))
		return
	}
	if m.Type != cloudproto.MsgHello || m.Hello == nil {
		ss.fail(fmt.Errorf("expected hello, got %q", m.Type))
		return
	}
	if m.Hello.CloudClusterID != ss.clusterID {
		ss.fail(fmt.Errorf("client certificate belongs to cluster %s, not %s", ss.clusterID, m.Hello.CloudClusterID))
		return
	}
	var c *clusterRec
	s.store.db.Update(func(tx *bolt.Tx) error {
		var ok bool
		if c, ok = s.store.cluster(tx, ss.clusterID); ok {
			c.LastSeen = time.Now().UTC()
			return s.store.putCluster(tx, c)
		}
		return nil
	})
	if c == nil {
		ss.fail(errNoCluster)
		return
	}
	if c.AgentClusterID != "" && m.Hello.ClusterID != c.AgentClusterID {
		ss.fail(fmt.Errorf("cluster %s registered as agent cluster %s, hello says %s", c.Name, c.AgentClusterID, m.Hello.ClusterID))
		return
	}
	// The newest session wins (a new leader replaces the old one's), but
	// only with the newest certificate: checked again here, under the
	// lock a re-issue holds, so a certificate replaced since the upgrade
	// (a removed node's copy) never displaces the current session.
	s.mu.Lock()
	cur, err := s.store.findCluster(ss.clusterID)
	if err != nil || !cur.currentCert(ss.certFP, ss.serial) || cur.Revoked {
		s.mu.Unlock()
		ss.fail(fmt.Errorf("client certificate %s of cluster %s was replaced by a later registration or re-issue", ss.serial, c.Name))
		return
	}
	ss.leader = m.Hello.Node
	old := s.sessions[ss.clusterID]
	s.sessions[ss.clusterID] = ss
	s.mu.Unlock()
	if old != nil {
		old.close()
	}
	defer s.dropSession(ss.clusterID, ss)
	s.log.Info("cluster connected", "cluster", c.Name, "leader", ss.leader, "cursor", c.Cursor, "index", m.Hello.Index)
	if err := ss.write(&cloudproto.Msg{Type: cloudproto.MsgWelcome, Index: c.Cursor}); err != nil {
		return
	}
	cmds, _ := s.store.commands(ss.clusterID)
	for _, rec := range cmds {
		if rec.State == CmdPending {
			ss.sendCommand(rec.Command)
		}
	}
	for {
		ss.conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
		m, err := cloudproto.ReadFrame(ss.br)
		if err != nil {
			if errors.Is(err, cloudproto.ErrFrameTooLarge) || errors.Is(err, cloudproto.ErrMalformed) {
				ss.fail(err)
			} else {
				s.log.Info("cluster disconnected", "cluster", c.Name, "err", err)
			}
			return
		}
		if err := ss.handle(m); err != nil {
			ss.fail(err)
			return
		}
	}
}

func (ss *session) handle(m *cloudproto.Msg) error {
	s := ss.s
	switch m.Type {
	case cloudproto.MsgSnapshot:
		if m.Snapshot == nil {
			return fmt.Errorf("%w: snapshot without body", cloudproto.ErrMalformed)
		}
		if err := s.store.applySnapshot(ss.clusterID, m.Snapshot); err != nil {
			return err
		}
		s.log.Info("mirror resynced", "cluster", ss.clusterID, "index", m.Snapshot.Index, "nodes", len(m.Snapshot.Nodes))
		return ss.write(&cloudproto.Msg{Type: cloudproto.MsgAck, Index: m.Snapshot.Index})
	case cloudproto.MsgChanges:
		for i := 1; i < len(m.Changes); i++ {
			if m.Changes[i].Index <= m.Changes[i-1].Index {
				return fmt.Errorf("%w: changes out of order at index %d", cloudproto.ErrMalformed, m.Changes[i].Index)
			}
		}
		cursor, err := s.store.applyChanges(ss.clusterID, m.Changes)
		if err != nil {
			return err
		}
		return ss.write(&cloudproto.Msg{Type: cloudproto.MsgAck, Index: cursor})
	case cloudproto.MsgHealth:
		if m.Health == nil {
			return fmt.Errorf("%w: health without body", cloudproto.ErrMalformed)
		}
		s.mu.Lock()
		s.health[ss.clusterID] = healthState{at: time.Now(), health: *m.Health}
		s.mu.Unlock()
		return nil
	case cloudproto.MsgResult:
		if m.Result == nil {
			return fmt.Errorf("%w: result without body", cloudproto.ErrMalformed)
		}
		if err := s.store.recordResult(ss.clusterID, m.Result); err != nil {
			s.log.Warn("result for an unknown command", "cluster", ss.clusterID, "err", err)
		}
		return nil
	case cloudproto.MsgReissue:
		if m.Reissue == nil {
			return fmt.Errorf("%w: reissue without body", cloudproto.ErrMalformed)
		}
		out := &cloudproto.Reissue{}
		if cert, err := s.reissue(ss, m.Reissue.CSR); err != nil {
			s.log.Warn("client certificate not re-issued", "cluster", ss.clusterID, "err", err)
			out.Error = err.Error()
		} else {
			out.CertPEM = string(cert)
		}
		return ss.write(&cloudproto.Msg{Type: cloudproto.MsgReissued, Reissue: out})
	case cloudproto.MsgPing:
		return ss.write(&cloudproto.Msg{Type: cloudproto.MsgPong})
	case cloudproto.MsgPong:
		return nil
	case cloudproto.MsgError:
		return fmt.Errorf("cluster reported: %s", m.Error)
	}
	return fmt.Errorf("%w: unexpected frame type %q", cloudproto.ErrMalformed, m.Type)
}

// reissue signs a new client certificate for the cluster of the current
// session ss and makes it the only one accepted: sessions with the old one
// (a removed node's copy) are refused from now on, and any still open
// besides ss end. Only the session that holds the cluster, with the newest
// certificate, may ask; the check and the switch happen under s.mu, which
// a session taking over holds too.
func (s *Server) reissue(ss *session, csr string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[ss.clusterID] != ss {
		return nil, errors.New("only the cluster's current session may re-issue its certificate")
	}
	var certPEM []byte
	var serial, fp string
	err := s.store.db.Update(func(tx *bolt.Tx) error {
		c, ok := s.store.cluster(tx, ss.clusterID)
		switch {
		case !ok:
			return errNoCluster
		case c.Revoked:
			return fmt.Errorf("cluster %s is revoked", c.Name)
		case !c.currentCert(ss.certFP, ss.serial):
			return errors.New("this session's certificate is no longer the cluster's newest")
		}
		var err error
		if certPEM, serial, fp, err = s.signClient([]byte(csr), c.ID); err != nil {
			return err
		}
		c.CertSerial, c.CertFingerprint, c.CertIssuedAt = serial, fp, time.Now().UTC()
		return s.store.putCluster(tx, c)
	})
	if err != nil {
		return nil, err
	}
	// The session asked with the new certificate's key (the CSR's
	// signature): it holds the new credential now.
	ss.serial, ss.certFP = serial, fp
	for o := range s.live {
		if o != ss && o.clusterID == ss.clusterID {
			o.close()
		}
	}
	s.log.Info("client certificate re-issued", "cluster", ss.clusterID, "serial", serial)
	return certPEM, nil
}

func (s *Server) connected(id string) (leader string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.sessions[id]
	if ss == nil {
		return "", false
	}
	return ss.leader, true
}

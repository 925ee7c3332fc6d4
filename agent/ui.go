package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/runos/runos-agent/api"
	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/ui"
)

// The web UI (issue 7).

// startUI serves the web UI (and, behind its sign-in, the local API) on
// loopback TCP, and applies init's admin credential once the cluster exists.
func (a *Agent) startUI(ctx context.Context) error {
	a.goLoop(ctx, a.uiInitLoop)
	if a.uiListen == "" {
		return nil
	}
	srv, err := ui.New(ui.Config{API: a.LocalAPIHandler(), Auth: &uiAuthority{a: a}, Node: a.cfg.Name, Cluster: a.cfg.ClusterID}, a.log.With("component", "ui"))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", a.uiListen)
	if err != nil {
		host, _, _ := net.SplitHostPort(a.uiListen)
		if ln, err = net.Listen("tcp", net.JoinHostPort(host, "0")); err != nil {
			return fmt.Errorf("ui: %w", err)
		}
		a.log.Info("ui address taken, using another port", "wanted", a.uiListen, "using", ln.Addr())
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		a.log.Warn("ui listens beyond loopback over plain HTTP: the password and session cookie cross the network unencrypted; prefer 127.0.0.1 and an SSH tunnel", "addr", ln.Addr())
	}
	a.uiURL = "http://" + ln.Addr().String() + "/"
	a.serve(ln, srv, "ui")
	a.log.Info("ui listening", "url", a.uiURL)
	return nil
}

// UIURL is the web UI's address, or "" when it is off.
func (a *Agent) UIURL() string { return a.uiURL }

// uiInitLoop applies ui-init.json after the bootstrap (any node holding
// it may: writes are forwarded to the leader) and then deletes it.
func (a *Agent) uiInitLoop(ctx context.Context) {
	path := filepath.Join(a.dir, datadir.FileUIInit)
	var cmd raftstore.Command
	if err := datadir.ReadJSON(path, &cmd); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			a.log.Error("cannot read the UI admin credential", "file", path, "err", err)
		}
		return
	}
	for {
		if st, _ := a.store.State(); st.ClusterID != "" {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			res, err := a.store.Apply(cctx, &cmd)
			cancel()
			if err == nil && (res.Error() == nil || res.UIAdminWasSet()) {
				os.Remove(path)
				a.log.Info("ui admin credential stored in the cluster state")
				return
			}
			if err == nil {
				err = res.Error()
			}
			a.log.Debug("ui admin credential not applied yet", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-a.store.Changed():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// uiAuthority serves the UI's credential from this node's state copy.
type uiAuthority struct {
	a *Agent

	mu     sync.Mutex
	sealed string // guarded by mu; the sealed key last opened
	key    []byte // guarded by mu
}

var _ ui.Authority = (*uiAuthority)(nil)

func (u *uiAuthority) Credential() (ui.Credential, error) {
	st, _ := u.a.store.State()
	if st.UI.AdminHash == "" {
		return ui.Credential{}, ui.ErrNoCredential
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if st.UI.SessionKey != u.sealed {
		key, err := u.a.keys.Open(datadir.UISessionKeyPurpose, st.UI.SessionKey)
		if err != nil {
			return ui.Credential{}, fmt.Errorf("ui session key: %w", err)
		}
		u.sealed, u.key = st.UI.SessionKey, key
	}
	return ui.Credential{PasswordHash: st.UI.AdminHash, SessionKey: u.key, Revoked: st.UI.Revoked}, nil
}

func (u *uiAuthority) RevokeSession(ctx context.Context, id string, until time.Time) error {
	res, err := u.a.store.Apply(ctx, &raftstore.Command{Time: u.a.now().UTC(), Op: raftstore.OpUIRevokeSession,
		UI: &raftstore.UICmd{SessionID: id, Until: until}})
	if err != nil {
		return err
	}
	return res.Error()
}

// ResetUIPassword replaces the admin password with a new random one and a
// new session key: every UI session on every node ends.
func (a *Agent) ResetUIPassword(ctx context.Context) (*api.UIPassword, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		return nil, err
	}
	password, cmd, err := datadir.NewUICredential(a.keys, false)
	if err != nil {
		return nil, err
	}
	res, err := a.store.Apply(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if err := res.Error(); err != nil {
		return nil, err
	}
	// A credential still waiting in ui-init.json must not come back later.
	os.Remove(filepath.Join(a.dir, datadir.FileUIInit))
	return &api.UIPassword{User: ui.AdminUser, Password: password}, nil
}

package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/runos/runos-agent/ui"
)

// The console's sign-in: one admin password (argon2id hash) and a session
// key in the store's meta bucket, signed-out sessions in their own bucket.
// The session, CSRF and rate-limit rules are the agent UI's (package ui).

var (
	keyConsoleAdmin = []byte("console_admin")
	bRevoked        = []byte("console_revoked")
)

type consoleAdmin struct {
	Hash       string    `json:"hash"`
	SessionKey []byte    `json:"session_key"`
	SetAt      time.Time `json:"set_at"`
}

// consoleAuth is the console's ui.Authority.
type consoleAuth struct{ st *store }

var _ ui.Authority = consoleAuth{}

func (a consoleAuth) Credential() (ui.Credential, error) {
	var c ui.Credential
	err := a.st.db.View(func(tx *bolt.Tx) error {
		var adm consoleAdmin
		if !getJSON(tx.Bucket(bMeta), keyConsoleAdmin, &adm) {
			return ui.ErrNoCredential
		}
		c.PasswordHash, c.SessionKey = adm.Hash, adm.SessionKey
		if b := tx.Bucket(bRevoked); b != nil {
			c.Revoked = map[string]time.Time{}
			b.ForEach(func(k, v []byte) error {
				var until time.Time
				if json.Unmarshal(v, &until) == nil {
					c.Revoked[string(k)] = until
				}
				return nil
			})
		}
		return nil
	})
	return c, err
}

func (a consoleAuth) RevokeSession(_ context.Context, id string, until time.Time) error {
	now := time.Now()
	return a.st.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bRevoked)
		if err != nil {
			return err
		}
		// Sessions past their expiry are dead anyway: forget them.
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var t time.Time
			if json.Unmarshal(v, &t) != nil || t.Before(now) {
				c.Delete()
			}
		}
		return putJSON(b, []byte(id), until)
	})
}

// setConsoleAdmin stores a new password hash and session key (every
// existing session ends). With ifUnset it keeps an existing credential and
// returns "".
func (s *store) setConsoleAdmin(ifUnset bool) (string, error) {
	var password string
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bMeta)
		if ifUnset && meta.Get(keyConsoleAdmin) != nil {
			return nil
		}
		pw, err := ui.NewPassword()
		if err != nil {
			return err
		}
		hash, err := ui.HashPassword(pw)
		if err != nil {
			return err
		}
		key, err := ui.NewSessionKey()
		if err != nil {
			return err
		}
		if err := putJSON(meta, keyConsoleAdmin, consoleAdmin{Hash: hash, SessionKey: key, SetAt: time.Now().UTC()}); err != nil {
			return err
		}
		if tx.Bucket(bRevoked) != nil {
			if err := tx.DeleteBucket(bRevoked); err != nil {
				return err
			}
		}
		password = pw
		return nil
	})
	return password, err
}

// InitialPassword is the console's admin password if this start created
// it (the first `runos-cloud serve` prints it once), else "".
func (s *Server) InitialPassword() string { return s.initialPassword }

// ResetConsolePassword makes a new console admin password and ends every
// console session.
func (s *Server) ResetConsolePassword() (string, error) {
	pw, err := s.store.setConsoleAdmin(false)
	if err == nil {
		s.log.Warn("console admin password reset; every console session ended")
	}
	if err == nil && pw == "" {
		err = errors.New("no password was made")
	}
	return pw, err
}

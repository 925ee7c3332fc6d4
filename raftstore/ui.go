package raftstore

import (
	"errors"
	"maps"
	"time"
)

// The web UI's part of the state (issue 7): the admin credential and the key
// that signs UI sessions. Both live in Raft so a session works on every node
// and a password reset on one node signs everybody out everywhere.

// UI ops.
const (
	// OpUISetAdmin stores a new admin password hash and a new session key.
	// A new key invalidates every session signed with the old one.
	OpUISetAdmin = "ui_set_admin"
	// OpUIRevokeSession records a signed-out session until it would have
	// expired anyway.
	OpUIRevokeSession = "ui_revoke_session"
)

// EventUIPasswordReset is recorded when the admin password is replaced.
const EventUIPasswordReset = "ui_password_reset"

// revokedWindow bounds the signed-out sessions remembered. Sessions live
// hours; thousands of sign-outs within one lifetime do not happen, and if
// they did the ones closest to expiring anyway are forgotten first.
const revokedWindow = 4096

// ErrUIAdminSet answers an init credential that arrives after one is set
// (init's credential must never overwrite a password reset).
var ErrUIAdminSet = errors.New("the UI admin credential is already set")

// UIAdminWasSet reports whether a result is ErrUIAdminSet (results cross
// write forwarding as text).
func (r *Result) UIAdminWasSet() bool { return r != nil && r.Err == ErrUIAdminSet.Error() }

// UIState holds the UI's admin credential.
type UIState struct {
	// AdminHash is the admin password's slow hash (argon2id, PHC string
	// form); the password itself is never stored.
	AdminHash string `json:"admin_hash,omitempty"`
	// SessionKey signs session cookies and CSRF tokens, sealed with the
	// cluster data key (seal purpose "ui-session-key").
	SessionKey string `json:"session_key,omitempty"`
	// Epoch counts credential changes (1 after init).
	Epoch         uint64    `json:"epoch,omitempty"`
	PasswordSetAt time.Time `json:"password_set_at,omitzero"`
	// Revoked maps signed-out session IDs to when they expire.
	Revoked map[string]time.Time `json:"revoked,omitempty"`
}

func (u UIState) clone() UIState {
	u.Revoked = maps.Clone(u.Revoked)
	return u
}

// UICmd is the payload of ui_* ops. The proposer hashes the password and
// generates the (sealed) key; Apply only stores them.
type UICmd struct {
	AdminHash  string `json:"admin_hash,omitempty"`
	SessionKey string `json:"session_key,omitempty"`
	// IfUnset makes ui_set_admin apply only when no credential exists
	// (init's credential, applied after the bootstrap).
	IfUnset bool `json:"if_unset,omitempty"`

	SessionID string    `json:"session_id,omitempty"`
	Until     time.Time `json:"until,omitzero"`
}

func (s *State) applyUI(cmd *Command, res *Result) error {
	c := cmd.UI
	if c == nil {
		return ErrMalformedCmd
	}
	switch cmd.Op {
	case OpUISetAdmin:
		if c.AdminHash == "" || c.SessionKey == "" {
			return ErrMalformedCmd
		}
		if c.IfUnset && s.UI.AdminHash != "" {
			return ErrUIAdminSet
		}
		reset := s.UI.AdminHash != ""
		s.UI.AdminHash, s.UI.SessionKey = c.AdminHash, c.SessionKey
		s.UI.Epoch++
		s.UI.PasswordSetAt = cmd.Time
		// The old key's sessions are dead already; their revocations too.
		s.UI.Revoked = nil
		if reset {
			s.record(res.Index, cmd.Time, Event{Kind: EventUIPasswordReset, Detail: "every UI session was signed out"})
		}
		return nil

	case OpUIRevokeSession:
		if c.SessionID == "" || c.Until.IsZero() {
			return ErrMalformedCmd
		}
		if s.UI.Revoked == nil {
			s.UI.Revoked = map[string]time.Time{}
		}
		for id, until := range s.UI.Revoked {
			if !until.After(cmd.Time) {
				delete(s.UI.Revoked, id)
			}
		}
		if c.Until.After(cmd.Time) {
			s.UI.Revoked[c.SessionID] = c.Until
		}
		for len(s.UI.Revoked) > revokedWindow {
			var oldest string
			var oldestUntil time.Time
			for id, until := range s.UI.Revoked {
				// Ties broken by ID so every replica drops the same one.
				if oldest == "" || until.Before(oldestUntil) || (until.Equal(oldestUntil) && id < oldest) {
					oldest, oldestUntil = id, until
				}
			}
			delete(s.UI.Revoked, oldest)
		}
		return nil
	}
	return ErrUnknownOp
}

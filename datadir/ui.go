package datadir

import (
	"path/filepath"
	"time"

	"github.com/runos/runos-agent/raftstore"
	"github.com/runos/runos-agent/seal"
	"github.com/runos/runos-agent/ui"
)

// UISessionKeyPurpose is the seal purpose of the UI session key in the
// cluster state.
const UISessionKeyPurpose = raftstore.UISessionKeyPurpose

// NewUICredential makes a fresh admin password for the web UI and the
// ui_set_admin command that stores its hash and a new session key. Init
// leaves one in ui-init.json; the agent makes one for a password reset.
func NewUICredential(keys seal.Sealer, ifUnset bool) (password string, cmd *raftstore.Command, err error) {
	if password, err = ui.NewPassword(); err != nil {
		return "", nil, err
	}
	hash, err := ui.HashPassword(password)
	if err != nil {
		return "", nil, err
	}
	key, err := ui.NewSessionKey()
	if err != nil {
		return "", nil, err
	}
	sealed, err := keys.Seal(UISessionKeyPurpose, key)
	if err != nil {
		return "", nil, err
	}
	return password, &raftstore.Command{
		ID: "ui-admin-" + randomHex(8), Time: time.Now().UTC(), Op: raftstore.OpUISetAdmin,
		UI: &raftstore.UICmd{AdminHash: hash, SessionKey: sealed, IfUnset: ifUnset},
	}, nil
}

// writeUIInit prepares init's admin credential for the first leader.
func writeUIInit(dir string, dataKey seal.Key) (string, error) {
	password, cmd, err := NewUICredential(dataKey, true)
	if err != nil {
		return "", err
	}
	return password, WriteJSON(filepath.Join(dir, FileUIInit), cmd, 0o600)
}

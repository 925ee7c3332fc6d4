package agent

import (
	"context"
	"crypto/subtle"
	"time"

	"github.com/runos/runos-agent/datadir"
	"github.com/runos/runos-agent/pki"
	"github.com/runos/runos-agent/raftstore"
)

// tokenReplicationWait is how long a join with a token this member does not
// know waits for its state to change: a token created on another member a
// moment ago may still be replicating.
const tokenReplicationWait = time.Second

// checkJoinToken checks a join token against this member's replica before
// anything is signed or written: the ID exists, the secret's hash matches
// (constant time), it has not expired and has uses left. It writes nothing
// to Raft, so a stranger's attempts cost the cluster no log entries. The
// FSM checks again when the join commits (and spends the use), so a stale
// replica can only refuse early, never admit twice.
//
// The errors are raftstore's token sentinels, the same the FSM gives, so
// joiners (old ones too) read the same messages.
func (a *Agent) checkJoinToken(ctx context.Context, tok datadir.Token) error {
	hash := []byte(pki.HashSecret(tok.Secret))
	ctx, cancel := context.WithTimeout(ctx, tokenReplicationWait)
	defer cancel()
	for {
		changed := a.store.Changed()
		st, _ := a.store.State()
		if t, ok := st.Tokens[tok.ID]; ok {
			if subtle.ConstantTimeCompare([]byte(t.SecretHash), hash) != 1 {
				return raftstore.ErrTokenInvalid
			}
			if t.UsesLeft < 1 {
				return raftstore.ErrTokenUsed
			}
			if !a.now().Before(t.ExpiresAt) {
				return raftstore.ErrTokenExpired
			}
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return raftstore.ErrTokenInvalid
		}
	}
}

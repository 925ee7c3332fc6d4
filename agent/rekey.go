package agent

import "github.com/runos/runos-agent/seal"

// rekeyGossip re-keys gossip after the data keyring changed (keys newest
// first). A stub until the gossip keyring lands (the TLS engineer's branch
// replaces this file).
func (a *Agent) rekeyGossip(keys []seal.Key) error { return nil }

package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/runos/runos-agent/procmem"
)

// trimDelay is how long after the agent started its executable's pages are
// trimmed (procmem.TrimExecutable): package initialisation and startup
// (Raft's restore, the first election, joins, STUN, the first handshakes)
// are over well before, and what the running agent uses is mapped again as
// it runs.
const trimDelay = 30 * time.Second

// trimAfterStartup trims once, trimDelay from now, unless ctx ends first.
// It returns when done; the caller waits for it.
func trimAfterStartup(ctx context.Context, log *slog.Logger) {
	t := time.NewTimer(trimDelay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	tr, err := procmem.TrimExecutable()
	if err != nil {
		log.Debug("executable pages not trimmed", "err", err)
		return
	}
	log.Debug("executable pages trimmed after startup", "resident_bytes", tr.Bytes, "mappings", tr.Mappings, "kept", tr.Kept)
}

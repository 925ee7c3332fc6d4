//go:build jepsen_nodedupe

package raftstore

// Deliberately broken builds for the campaign's mutation check (README
// "Reliability"). Never build a release with these tags.

const (
	dedupe             = false // a retried command is applied again
	staleBeatsAnswered = false
)

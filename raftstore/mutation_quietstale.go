//go:build jepsen_quietstale && !jepsen_nodedupe

package raftstore

// A deliberately broken build for the campaign's mutation check (README
// "Reliability"): the quiet transport answers for a follower whose health
// heartbeats stopped. Never build a release with this tag.

const (
	dedupe             = true
	staleBeatsAnswered = true
)

//go:build !jepsen_nodedupe && !jepsen_quietstale

package raftstore

// dedupe is the state machine's deduplication by command ID. Only the
// campaign's mutation check turns it off (mutation_nodedupe.go, build tag
// jepsen_nodedupe), to prove that the campaign catches a double apply.
const dedupe = true

// staleBeatsAnswered false: the quiet transport answers a follower's idle
// appends only while its health heartbeats are fresh. The mutation check
// sets it (mutation_quietstale.go, build tag jepsen_quietstale).
const staleBeatsAnswered = false

package raftstore

import (
	"testing"
	"time"
)

func TestTimingFor(t *testing.T) {
	beat := 5 * time.Second
	for _, c := range []struct {
		name                string
		heartbeat, election time.Duration
		beat                time.Duration
		want                Timing
	}{
		{"production", 0, 0, beat, Timing{8 * time.Second, 8 * time.Second, 250 * time.Millisecond, 8 * time.Second, 3 * time.Second}},
		{"short timers", 100 * time.Millisecond, 200 * time.Millisecond, beat, Timing{HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond}},
		{"short timers, faster beats", time.Second, time.Second, 100 * time.Millisecond, Timing{time.Second, time.Second, 0, time.Second, 0}},
		{"production timers, slow beats", 0, 0, 6 * time.Second, Timing{8 * time.Second, 8 * time.Second, 250 * time.Millisecond, 0, 0}},
	} {
		if got := TimingFor(c.heartbeat, c.election, c.beat); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

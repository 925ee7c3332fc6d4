package health

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/runos/runos-agent/api"
)

func TestClassify(t *testing.T) {
	th := thresholds{10 * time.Second, 30 * time.Second}
	cases := []struct {
		age      time.Duration
		inGossip bool
		state    memberlist.NodeStateType
		health   string
		reason   string
	}{
		{2 * time.Second, true, memberlist.StateAlive, api.Healthy, "heartbeat"},
		{2 * time.Second, true, memberlist.StateSuspect, api.Degraded, "suspected"},
		{12 * time.Second, true, memberlist.StateAlive, api.Degraded, "last heartbeat 12s ago"},
		{31 * time.Second, true, memberlist.StateAlive, api.Offline, "no heartbeat for 31s"},
		{2 * time.Second, true, memberlist.StateDead, api.Offline, "confirmed dead"},
		{2 * time.Second, true, memberlist.StateLeft, api.Offline, "left"},
		{2 * time.Second, false, memberlist.StateDead, api.Degraded, "not seen by gossip"},
		{40 * time.Second, false, memberlist.StateDead, api.Offline, "no heartbeat"},
	}
	for _, tc := range cases {
		h, r := classify(tc.age, tc.inGossip, tc.state, th)
		if h != tc.health || !strings.Contains(r, tc.reason) {
			t.Errorf("classify(%v, %v, %v) = %s (%s), want %s (%s)", tc.age, tc.inGossip, tc.state, h, r, tc.health, tc.reason)
		}
	}
}

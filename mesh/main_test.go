package mesh

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test must leave no goroutine behind: wireguard-go and gVisor start
// many, and a Device that leaks them would leak per reconnect in the agent.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

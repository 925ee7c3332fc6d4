package nat

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test leaves no goroutine behind: the Bind's manager, STUN queries,
// receive drivers, and the wireguard-go devices in the scenarios.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

package agent_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/runos/runos-agent/agent/agenttest"
)

// TestMain checks for leaked goroutines after this package's internal and
// external tests alike (one test binary).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, agenttest.LeakOptions()...) }

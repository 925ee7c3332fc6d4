package access

import (
	"testing"

	"go.uber.org/goleak"
)

// The userspace server starts wireguard-go's goroutines; Close must stop
// every one.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

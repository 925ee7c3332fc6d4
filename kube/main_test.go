package kube_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every Executor's connections and every test server are closed by the end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

package procmem

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// An interval without a collection gets one; an interval in which the
// runtime collected by itself does not.
func TestCollectWhenIdle(t *testing.T) {
	var calls atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		collectWhenIdle(ctx, 50*time.Millisecond, func() { calls.Add(1); runtime.GC() })
	}()
	deadline := time.Now().Add(30 * time.Second)
	for calls.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if calls.Load() < 2 {
		t.Fatalf("idle: %d collections, want some", calls.Load())
	}

	// Busy: collections happen anyway; the loop adds none.
	before := calls.Load()
	stop := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(stop) {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	if n := calls.Load() - before; n > 1 { // one may have been due as the busy spell began
		t.Errorf("busy: the loop added %d collections", n)
	}
	cancel()
	wg.Wait()
}

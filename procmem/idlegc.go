package procmem

import (
	"context"
	"runtime"
	"runtime/metrics"
	"time"
)

// IdleGCInterval is how often CollectWhenIdle checks.
const IdleGCInterval = 20 * time.Second

// CollectWhenIdle runs a garbage collection every interval in which the
// runtime ran none, until ctx ends. Call it once per process (it is about
// the runtime, not about one agent).
//
// Why: Go paces collections by the live heap, and most of the agent's is
// wireguard-go's batch buffers (some 24 MiB, pointer-free and barely
// touched while idle). At the default GOGC the heap may grow by that much
// again before a collection, so an idle agent collects only at Go's
// two-minute forced GC, and each new object until then lands on a page
// never touched before: ~6 MB of resident garbage on a leader, which makes
// ~50 kB/s. Collecting every 20 s keeps the garbage on pages already
// touched. A busy agent collects far more often by itself, so this never
// adds a collection under load; idle, one costs a few milliseconds.
// Lowering GOGC instead would do the same at idle but also under load,
// where it cost write throughput (BenchmarkWrites).
func CollectWhenIdle(ctx context.Context, interval time.Duration) {
	collectWhenIdle(ctx, interval, runtime.GC)
}

func collectWhenIdle(ctx context.Context, interval time.Duration, gc func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := gcCycles()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n := gcCycles(); n != last {
			last = n
			continue
		}
		gc()
		last = gcCycles()
	}
}

// gcCycles is the number of collections the runtime has completed.
func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

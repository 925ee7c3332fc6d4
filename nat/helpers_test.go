package nat

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// testLogger discards unless NAT_TEST_LOG is set; it never writes through
// t.Log because goroutines may log a last line after a test returns.
func testLogger() *slog.Logger {
	if os.Getenv("NAT_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func testKey(t testing.TB, seed byte) [32]byte {
	t.Helper()
	var k [32]byte
	for i := range k {
		k[i] = seed*31 + byte(i)*7 + 1
	}
	return k
}

// fastConfig has test-sized intervals.
func fastConfig(priv [32]byte, under conn.Bind) Config {
	return Config{
		PrivateKey:    priv,
		Underlay:      under,
		ProbeInterval: 50 * time.Millisecond,
		PathTimeout:   300 * time.Millisecond,
		// Discovery as often as probing, so upgrades show up quickly.
		DiscoveryInterval: 100 * time.Millisecond,
		STUNRetransmit:    20 * time.Millisecond,
		STUNTimeout:       2 * time.Second,
	}
}

// driven opens b and runs its receive functions the way wireguard-go
// would, dropping WireGuard packets. Cleanup closes b and waits.
func driven(t testing.TB, b *Bind) uint16 {
	t.Helper()
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := b.BatchSize()
			bufs, sizes, eps := make([][]byte, n), make([]int, n), make([]conn.Endpoint, n)
			for i := range bufs {
				bufs[i] = make([]byte, 65535)
			}
			for {
				if _, err := fn(bufs, sizes, eps); errors.Is(err, net.ErrClosed) {
					return
				}
			}
		}()
	}
	t.Cleanup(func() {
		b.Close()
		wg.Wait()
	})
	return port
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

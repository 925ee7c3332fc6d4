package mesh

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestPingEcho(t *testing.T) {
	a, b := newUserspace(t, "172.24.0.1"), newUserspace(t, "172.24.0.2")
	connectPair(t, a, b)
	e, err := ListenEcho(b.Net(), netip.MustParseAddrPort("172.24.0.2:7948"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rtt, err := Ping(ctx, a.Net(), netip.MustParseAddrPort("172.24.0.2:7948"), 1)
	if err != nil || rtt <= 0 {
		t.Fatalf("ping: %v, %v", rtt, err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e.Close() // idempotent
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := Ping(ctx, a.Net(), netip.MustParseAddrPort("172.24.0.2:7948"), 2); !errors.Is(err, ErrNoAnswer) {
		t.Fatalf("ping without an echo: %v", err)
	}
}

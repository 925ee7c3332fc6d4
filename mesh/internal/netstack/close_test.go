package netstack

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestCloseWithPacketInFlight closes the device while the stack is blocked
// handing a packet to a reader that has stopped reading (wireguard-go stops
// its TUN reader while it shuts down). Upstream closes the packet channel
// under that sender: "send on closed channel" panics, or -race reports the
// close racing with the send.
func TestCloseWithPacketInFlight(t *testing.T) {
	defer goleak.VerifyNone(t)
	for range 20 {
		dev, tnet, err := CreateNetTUN([]netip.Addr{netip.MustParseAddr("198.18.0.2")}, nil, 1420)
		if err != nil {
			t.Fatal(err)
		}
		// Nobody reads: the SYN below blocks in WriteNotify, as in the
		// window between wireguard-go's reader stopping and Close. The
		// packet never leaves this process: there is no device behind it.
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		done := make(chan struct{})
		go func() {
			defer close(done)
			c, err := tnet.DialContextTCPAddrPort(ctx, netip.MustParseAddrPort("198.18.0.1:9"))
			if err == nil {
				c.Close()
			}
		}()
		time.Sleep(5 * time.Millisecond)
		if err := dev.Close(); err != nil {
			t.Fatal(err)
		}
		if err := dev.Close(); err != nil { // idempotent
			t.Fatal(err)
		}
		<-done
		cancel()
		if _, err := dev.Read(make([][]byte, 1), make([]int, 1), 0); err == nil {
			t.Fatal("Read after Close succeeded")
		}
	}
}

package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// ErrNoAnswer is returned by Ping when the echo did not come back in time.
var ErrNoAnswer = errors.New("mesh: no echo answer")

// Echo answers UDP pings on the overlay (`runos-agent ping`): every
// datagram goes back to its sender. The echo rides WireGuard over whatever
// underlay path carries the peer, so its round trip is the overlay's.
type Echo struct {
	pc        net.PacketConn
	done      chan struct{}
	closeOnce sync.Once
	err       error
}

// ListenEcho starts an echo on addr of n.
func ListenEcho(n Net, addr netip.AddrPort) (*Echo, error) {
	pc, err := n.ListenPacket("udp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("ping echo: %w", err)
	}
	e := &Echo{pc: pc, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return e, nil
}

// Close stops the echo and waits for it. It is idempotent.
func (e *Echo) Close() error {
	e.closeOnce.Do(func() {
		e.err = e.pc.Close()
		<-e.done
	})
	return e.err
}

// Ping sends one echo to addr over n and returns its round trip. ctx must
// carry a deadline: an echo that is not back by then fails with an error
// wrapping ErrNoAnswer.
func Ping(ctx context.Context, n Net, addr netip.AddrPort, seq int) (time.Duration, error) {
	conn, err := n.DialContext(ctx, "udp", addr.String())
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	msg := fmt.Appendf(nil, "runos-ping %d %d", seq, time.Now().UnixNano())
	start := time.Now()
	buf := make([]byte, 64)
	if _, err = conn.Write(msg); err == nil {
		_, err = conn.Read(buf)
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrNoAnswer, err)
	}
	return time.Since(start), nil
}

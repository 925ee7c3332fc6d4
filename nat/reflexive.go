package nat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// handleSTUN answers Binding requests (every member is a STUN server) and
// hands Binding responses to the transaction waiting for them.
func (b *Bind) handleSTUN(pkt []byte, ep conn.Endpoint) {
	m, err := parseSTUN(pkt)
	if err != nil {
		b.stats.dropMalformed.Add(1)
		return
	}
	switch m.Kind {
	case stunRequest:
		src, ok := endpointAddr(ep)
		if !ok {
			b.stats.dropMalformed.Add(1)
			return
		}
		if !b.stunLimit.allow(time.Now(), 1) {
			b.stats.dropRateLimited.Add(1)
			return
		}
		resp, err := buildSTUNResponse(m.TxID, src)
		if err != nil {
			b.stats.dropMalformed.Add(1)
			return
		}
		if err := b.inner.Send([][]byte{resp}, ep); err != nil {
			b.log.Debug("nat: STUN response", "to", src, "err", err)
			return
		}
		b.stats.stunResponses.Add(1)
	case stunSuccess:
		b.stunMu.Lock()
		ch := b.stunTx[m.TxID]
		delete(b.stunTx, m.TxID)
		b.stunMu.Unlock()
		if ch != nil {
			ch <- m // buffered 1, and removed above: never blocks
		}
	default:
		b.stats.dropUnknown.Add(1)
	}
}

// stunQuery runs one Binding transaction with server over the Bind's
// socket, retransmitting with a doubling timeout.
func (b *Bind) stunQuery(ctx context.Context, server netip.AddrPort) STUNResult {
	res := STUNResult{Server: server}
	b.mu.Lock()
	open, stop := b.open, b.stop
	b.mu.Unlock()
	if !open {
		res.Err = ErrClosed
		return res
	}
	tx := newTxID()
	req, err := buildSTUNRequest(tx)
	if err != nil {
		res.Err = err
		return res
	}
	ch := make(chan stunMsg, 1)
	b.stunMu.Lock()
	b.stunTx[tx] = ch
	b.stunMu.Unlock()
	defer func() {
		b.stunMu.Lock()
		delete(b.stunTx, tx)
		b.stunMu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, b.cfg.STUNTimeout)
	defer cancel()
	start := time.Now()
	rto := b.cfg.STUNRetransmit
	t := time.NewTimer(rto)
	defer t.Stop()
	for {
		if err := b.sendTo(server, req); err != nil {
			res.Err = fmt.Errorf("nat: STUN to %s: %w", server, err)
			return res
		}
		select {
		case m, ok := <-ch:
			if !ok {
				res.Err = ErrClosed
				return res
			}
			res.Mapped, res.RTT = m.Mapped, time.Since(start)
			return res
		case <-t.C:
			rto = min(2*rto, 2*time.Second)
			t.Reset(rto)
		case <-ctx.Done():
			res.Err = fmt.Errorf("nat: STUN to %s: %w", server, ctx.Err())
			return res
		case <-stop:
			res.Err = ErrClosed
			return res
		}
	}
}

// queryAll runs stunQuery against every server at once. If firstOnly, the
// rest are cancelled as soon as one answers. The goroutines are the call's:
// all have returned when it does.
func (b *Bind) queryAll(ctx context.Context, servers []netip.AddrPort, firstOnly bool) []STUNResult {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([]STUNResult, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = b.stunQuery(ctx, s)
			if firstOnly && results[i].Err == nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	return results
}

// Reflexive asks the STUN servers (members, the cloud, or --stun; there is
// no public default) for this node's public address, over the Bind's own
// socket so the answer is the mapping WireGuard traffic gets. It returns
// the first answer. The Bind must be open (its receive functions running,
// as they are under wireguard-go).
func (b *Bind) Reflexive(ctx context.Context, servers []netip.AddrPort) (netip.AddrPort, error) {
	if len(servers) == 0 {
		return netip.AddrPort{}, errors.New("nat: no STUN servers")
	}
	var errs []error
	for _, r := range b.queryAll(ctx, servers, true) {
		if r.Err == nil {
			return r.Mapped, nil
		}
		errs = append(errs, r.Err)
	}
	return netip.AddrPort{}, errors.Join(errs...)
}

// Netcheck asks every server and summarizes (see the Netcheck function):
// UDP reachability, public address and mapping behaviour.
func (b *Bind) Netcheck(ctx context.Context, servers []netip.AddrPort) NetcheckReport {
	return Netcheck(b.queryAll(ctx, servers, false))
}

// LocalCandidates returns this host's usable interface addresses with port:
// the LAN half of a node's candidates (add the reflexive address from
// Reflexive). Loopback, link-local and unspecified addresses are left out.
func LocalCandidates(port uint16) ([]netip.AddrPort, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			ips = append(ips, p.Addr())
		}
	}
	return CandidatesFrom(ips, port), nil
}

// CandidatesFrom is the pure part of LocalCandidates.
func CandidatesFrom(ips []netip.Addr, port uint16) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ip := range ips {
		ip = ip.Unmap().WithZone("")
		if !ip.IsValid() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() || ip.IsMulticast() {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, port))
	}
	return out
}

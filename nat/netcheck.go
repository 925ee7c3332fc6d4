package nat

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/runos/runos-agent/api"
)

// STUNResult is one STUN server's answer (or failure).
type STUNResult struct {
	Server netip.AddrPort
	Mapped netip.AddrPort // zero on failure
	RTT    time.Duration
	Err    error
}

// MappingBehavior is how this node's NAT maps its socket to public
// addresses (RFC 4787 terms, as far as two STUN servers can tell).
type MappingBehavior uint8

const (
	// MappingUnknown: fewer than two servers at different addresses answered.
	MappingUnknown MappingBehavior = iota
	// MappingEndpointIndependent: every server saw the same address ("easy"
	// NAT, or no NAT): peers can reach the STUN-reflexive candidate.
	MappingEndpointIndependent
	// MappingEndpointDependent: servers saw different addresses ("hard" NAT):
	// the reflexive candidate is useless to peers; expect relaying.
	MappingEndpointDependent
)

func (m MappingBehavior) String() string {
	switch m {
	case MappingEndpointIndependent:
		return "endpoint-independent"
	case MappingEndpointDependent:
		return "endpoint-dependent"
	}
	return "unknown"
}

// NetcheckReport summarizes STUN results.
type NetcheckReport struct {
	UDP     bool           // at least one server answered
	Public  netip.AddrPort // the first answer's mapped address
	Mapping MappingBehavior
	Results []STUNResult
}

// Netcheck summarizes results; it is pure. Mapping behaviour needs answers
// from servers at two different IP addresses: two ports of one host can sit
// behind the same NAT mapping decision and prove nothing.
func Netcheck(results []STUNResult) NetcheckReport {
	r := NetcheckReport{Results: results}
	seen := map[netip.Addr]netip.AddrPort{}
	for _, res := range results {
		if res.Err != nil || !res.Mapped.IsValid() {
			continue
		}
		if !r.UDP {
			r.UDP, r.Public = true, res.Mapped
		}
		if _, ok := seen[res.Server.Addr()]; !ok {
			seen[res.Server.Addr()] = res.Mapped
		}
	}
	if len(seen) < 2 {
		return r
	}
	r.Mapping = MappingEndpointIndependent
	for _, m := range seen {
		if m != r.Public {
			r.Mapping = MappingEndpointDependent
		}
	}
	return r
}

// CheckNetwork reports what the underlay allows, through the Bind's socket
// (which must be open), in the local API's shape: STUN answers from
// servers (10 s at most), the NAT's mapping behaviour, and this host's LAN
// addresses with port.
func (b *Bind) CheckNetwork(ctx context.Context, servers []netip.AddrPort, port uint16) *api.Netcheck {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rep := b.Netcheck(ctx, servers)
	out := &api.Netcheck{UDP: rep.UDP, Mapping: rep.Mapping.String(), LANAddresses: []string{}, Results: []api.STUNResult{}}
	if rep.Public.IsValid() {
		out.Public = rep.Public.String()
	}
	if lan, err := LocalCandidates(port); err == nil {
		for _, ap := range lan {
			out.LANAddresses = append(out.LANAddresses, ap.String())
		}
	}
	for _, r := range rep.Results {
		res := api.STUNResult{Server: r.Server.String(), RTTMillis: float64(r.RTT.Microseconds()) / 1000}
		if r.Mapped.IsValid() {
			res.Mapped = r.Mapped.String()
		}
		if r.Err != nil {
			res.Error = r.Err.Error()
		}
		out.Results = append(out.Results, res)
	}
	return out
}

// StandaloneNetcheck runs CheckNetwork where no agent runs: a throwaway key
// on a fresh socket (ephemeral port), read here as wireguard-go reads a
// Bind, so the Bind's receive path runs as in the daemon.
func StandaloneNetcheck(ctx context.Context, stun []string, log *slog.Logger) (*api.Netcheck, error) {
	servers := ParseEndpoints(stun)
	if len(servers) == 0 {
		return nil, errors.New("no STUN servers: pass --stun HOST:PORT (there is no public default), or run netcheck where an agent runs (--data-dir)")
	}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, err
	}
	key[0] &= 248
	key[31] = (key[31] & 127) | 64
	b, err := New(Config{PrivateKey: key}, log)
	if err != nil {
		return nil, err
	}
	fns, port, err := b.Open(0)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	defer func() {
		b.Close()
		wg.Wait()
	}()
	for _, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			drain(fn, b.BatchSize())
		}()
	}
	return b.CheckNetwork(ctx, servers, port), nil
}

// drain reads the socket until it closes, as wireguard-go's receive
// routine does (the Bind handles STUN inside its receive function), and
// gives up after ten errors in a row that are not a close.
func drain(fn conn.ReceiveFunc, batch int) {
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, 1<<16-1)
	}
	sizes, eps := make([]int, batch), make([]conn.Endpoint, batch)
	for fails := 0; ; {
		if _, err := fn(bufs, sizes, eps); err != nil {
			if errors.Is(err, net.ErrClosed) || fails >= 10 {
				return
			}
			fails++
			time.Sleep(time.Second / 3)
			continue
		}
		fails = 0
	}
}

package mesh

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file speaks the WireGuard cross-platform configuration protocol
// ("UAPI", https://www.wireguard.com/xplatform/#configuration-protocol):
// building the "set" text that moves the device from one peer set to another,
// and parsing the "get" text. Both are pure functions so they can be table-
// and fuzz-tested without a device.

// PeerStats is the observed state of one peer, as the device reports it.
type PeerStats struct {
	PublicKey     Key
	Endpoint      string    // "ip:port" the device last used; "" if none yet
	LastHandshake time.Time // zero if never
	RxBytes       uint64
	TxBytes       uint64
	// AllowedIPs is what the device routes to this peer; it lets callers
	// (and tests) see that a reconcile really landed.
	AllowedIPs []netip.Prefix
}

// deviceState is the part of a UAPI "get" answer mesh cares about.
type deviceState struct {
	ListenPort int
	Peers      []PeerStats
}

// parseUAPI parses the text of a UAPI "get" operation. Keys it does not know
// are skipped so a newer wireguard-go that reports more does not break Stats;
// malformed values are errors because they mean the text is not what we think.
func parseUAPI(s string) (deviceState, error) {
	var st deviceState
	var cur *PeerStats
	var hsSec, hsNsec int64
	flush := func() {
		if cur == nil {
			return
		}
		if hsSec != 0 || hsNsec != 0 {
			cur.LastHandshake = time.Unix(hsSec, hsNsec)
		}
		st.Peers = append(st.Peers, *cur)
		cur, hsSec, hsNsec = nil, 0, 0
	}
	for line := range strings.Lines(s) {
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			break // a blank line ends the answer in the socket protocol
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return deviceState{}, fmt.Errorf("mesh: uapi: malformed line %q", line)
		}
		var err error
		switch key {
		case "public_key":
			flush()
			var k Key
			if k, err = parseHexKey(value); err == nil {
				cur = &PeerStats{PublicKey: k}
			}
		case "listen_port":
			if cur == nil {
				var p uint64
				p, err = strconv.ParseUint(value, 10, 16)
				st.ListenPort = int(p)
			}
		case "errno":
			if value != "0" {
				err = fmt.Errorf("device reported errno %s", value)
			}
		default:
			if cur != nil {
				err = parsePeerLine(cur, key, value, &hsSec, &hsNsec)
			}
		}
		if err != nil {
			return deviceState{}, fmt.Errorf("mesh: uapi: %s: %w", key, err)
		}
	}
	flush()
	return st, nil
}

func parsePeerLine(p *PeerStats, key, value string, hsSec, hsNsec *int64) error {
	var err error
	switch key {
	case "endpoint":
		p.Endpoint = value
	case "last_handshake_time_sec":
		*hsSec, err = strconv.ParseInt(value, 10, 64)
	case "last_handshake_time_nsec":
		*hsNsec, err = strconv.ParseInt(value, 10, 64)
		if err == nil && (*hsNsec < 0 || *hsNsec >= int64(time.Second)) {
			err = fmt.Errorf("out of range: %d", *hsNsec)
		}
	case "rx_bytes":
		p.RxBytes, err = strconv.ParseUint(value, 10, 64)
	case "tx_bytes":
		p.TxBytes, err = strconv.ParseUint(value, 10, 64)
	case "allowed_ip":
		var pfx netip.Prefix
		if pfx, err = netip.ParsePrefix(value); err == nil {
			p.AllowedIPs = append(p.AllowedIPs, pfx)
		}
	}
	return err
}

// normalizePeers validates a desired peer set and returns it keyed by public
// key, with each peer's AllowedIPs masked, sorted and deduplicated so that two
// descriptions of the same peer compare equal and SetPeers can skip it.
//
// The device's own key is dropped rather than rejected: callers build the
// set from the cluster's node list, which includes this node, and installing
// our own pod /24 as a route into wg0 would cut the node off from its pods.
func normalizePeers(peers []Peer, self Key) (map[Key]Peer, error) {
	out := make(map[Key]Peer, len(peers))
	owner := make(map[netip.Prefix]Key)
	for i, p := range peers {
		if p.PublicKey.IsZero() {
			return nil, fmt.Errorf("mesh: peer %d: public key is missing", i)
		}
		if p.PublicKey == self {
			continue
		}
		if _, dup := out[p.PublicKey]; dup {
			return nil, fmt.Errorf("mesh: peer %s listed twice", p.PublicKey)
		}
		if p.Endpoint.IsValid() && p.Endpoint.Port() == 0 {
			return nil, fmt.Errorf("mesh: peer %s: endpoint %s has no port", p.PublicKey, p.Endpoint)
		}
		if p.PersistentKeepalive < 0 || p.PersistentKeepalive > 65535*time.Second {
			return nil, fmt.Errorf("mesh: peer %s: persistent keepalive %v out of range", p.PublicKey, p.PersistentKeepalive)
		}
		n := Peer{
			PublicKey:           p.PublicKey,
			Endpoint:            netip.AddrPortFrom(p.Endpoint.Addr().Unmap(), p.Endpoint.Port()),
			PersistentKeepalive: keepaliveSeconds(p.PersistentKeepalive) * time.Second,
			AllowedIPs:          make([]netip.Prefix, 0, len(p.AllowedIPs)),
		}
		if !p.Endpoint.IsValid() {
			n.Endpoint = netip.AddrPort{}
		}
		for _, pfx := range p.AllowedIPs {
			if !pfx.IsValid() {
				return nil, fmt.Errorf("mesh: peer %s: invalid allowed IP prefix", p.PublicKey)
			}
			n.AllowedIPs = append(n.AllowedIPs, pfx.Masked())
		}
		slices.SortFunc(n.AllowedIPs, comparePrefix)
		n.AllowedIPs = slices.Compact(n.AllowedIPs)
		// WireGuard gives a prefix to whichever peer claimed it last, so a
		// prefix listed under two peers would silently follow write order
		// and defeat the diff. Nested prefixes are fine (longest match).
		for _, pfx := range n.AllowedIPs {
			if other, taken := owner[pfx]; taken {
				return nil, fmt.Errorf("mesh: allowed IP %s claimed by peers %s and %s", pfx, other, p.PublicKey)
			}
			owner[pfx] = p.PublicKey
		}
		out[n.PublicKey] = n
	}
	return out, nil
}

// keepaliveSeconds rounds up, so a sub-second interval still means "on".
func keepaliveSeconds(d time.Duration) time.Duration {
	return (d + time.Second - 1) / time.Second
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func sortedKeys[V any](m map[Key]V) []Key {
	keys := make([]Key, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b Key) int { return bytes.Compare(a[:], b[:]) })
	return keys
}

// peerSetUAPI returns the UAPI "set" text that turns the device's peers from
// cur into want, or "" when there is nothing to do. Only what changed is
// written: an unchanged peer is not mentioned at all, and a changed one is
// updated in place, never removed and re-added, because removing a peer
// drops its keypairs and forces a new handshake.
//
// When force is true, cur is only trusted for which keys exist on the device
// (used after a failed set left the device in an unknown state): every wanted
// peer is written out in full.
func peerSetUAPI(cur, want map[Key]Peer, force bool) string {
	var b strings.Builder
	for _, k := range sortedKeys(cur) {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.hex())
		}
	}
	for _, k := range sortedKeys(want) {
		w := want[k]
		c, exists := cur[k]
		full := force || !exists
		epChanged := w.Endpoint.IsValid() && (full || w.Endpoint != c.Endpoint)
		kaChanged := full || w.PersistentKeepalive != c.PersistentKeepalive
		ipsChanged := full || !slices.Equal(w.AllowedIPs, c.AllowedIPs)
		if !epChanged && !kaChanged && !ipsChanged {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\n", k.hex())
		// A zero endpoint is not written: UAPI cannot unset one, and the
		// device keeps whatever address the peer last roamed in from.
		if epChanged {
			fmt.Fprintf(&b, "endpoint=%s\n", w.Endpoint)
		}
		if kaChanged {
			fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", w.PersistentKeepalive/time.Second)
		}
		if ipsChanged {
			b.WriteString("replace_allowed_ips=true\n")
			for _, p := range w.AllowedIPs {
				fmt.Fprintf(&b, "allowed_ip=%s\n", p)
			}
		}
	}
	return b.String()
}

func sortStats(ps []PeerStats) {
	slices.SortFunc(ps, func(a, b PeerStats) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
}

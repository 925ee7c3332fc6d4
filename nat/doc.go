// Package nat owns the node's one underlay UDP socket and everything that
// shares it: WireGuard (through a conn.Bind handed to wireguard-go), a STUN
// client and responder, probe/pong frames that find and keep paths to peers,
// and relaying through members that both ends can reach.
//
// # One socket, demultiplexed
//
// Every received datagram is classified by exact header bits (Classify):
//
//   - WireGuard: first byte is a message type 1..4 followed by three zero
//     bytes. Checked first: a WireGuard receiver index can equal the STUN
//     magic cookie.
//   - STUN: top two bits zero, magic cookie 0x2112A442 at offset 4, a length
//     that is a multiple of 4 and matches the datagram, and the Binding
//     method.
//   - Our frames: the prefix "rn" plus a version byte. 'r' is 0x72, which is
//     neither a WireGuard type (1..4) nor a STUN first byte (< 0x40).
//
// Anything else is dropped and counted.
//
// # Peer identity endpoints
//
// wireguard-go sees one stable conn.Endpoint per peer, parsed from
// PeerEndpointString(pub) (or PeerAddrPort(pub), which mesh.Peer.Endpoint
// can carry): a synthetic address in the discard-only prefix 100::/64 whose
// low 64 bits are the first 8 bytes of the peer's public key. For each packet
// the Bind picks the underlay path from the peer's current route: one atomic
// load. Plain "ip:port" endpoints still work and bypass all path logic.
//
// # Frames
//
// All frames end in a 16-byte keyed BLAKE2s MAC under a pairwise key derived
// from X25519(own private key, peer public key), so only members (peers given
// to SetPeers) can probe, answer or relay:
//
//	probe   'r' 'n' 2 1 | sender id (8) | ts (8) | nonce (8) | tx id (12)                 | mac
//	pong    'r' 'n' 2 2 | sender id (8) | ts (8) | nonce (8) | tx id (12) | observed (18) | mac
//	addrs   'r' 'n' 2 5 | sender id (8) | ts (8) | nonce (8) | n (1) | n × addr (18)      | mac
//	relay   'r' 'n' 2 3 | src id (8)    | dst id (8) | payload                            | mac(src↔relay)
//	relayed 'r' 'n' 2 4 | relay id (8)  | src id (8) | payload                            | mac(relay↔dst)
//
// A peer id is the first 8 bytes of its public key. A relay payload is an
// already-encrypted WireGuard message, or a probe or pong between the two
// ends (MACed with their own pairwise key), so paths through a relay are
// probed end to end. An addrs frame ("call me maybe") goes through the
// relay to a peer without a direct path and lists the addresses other
// members see the sender at, so both ends probe each other at once: that is
// how a path recovers after a NAT mapping changes.
//
// # Replay
//
// Control frames (probe, pong, addrs) carry the sender's clock and a random
// nonce under the MAC. A receiver judges each peer's timestamps against
// that peer's own clock as it last saw it (not its own: members' clocks
// may be far apart, and a cluster without internet may have no NTP),
// drops frames more than ReplayWindow older, and drops a nonce it has seen
// within the window (a bounded cache per peer). A pong that answers one of
// our own probes is fresh by construction (its tx id was ours, single use),
// so it re-anchors the peer's clock whatever its timestamp: a peer whose
// clock jumped recovers within one probe round. Drops are counted in
// Stats.DropReplay and Stats.DropStale.
//
// Relay envelopes carry no stamp: their payload is either a WireGuard
// message (whose own counter drops replays at the destination) or a
// stamped control frame checked end to end, and a relay forwards only to
// its own path to the destination, so a replayed envelope reflects nothing
// towards an address the attacker picks.
//
// Version 1 frames (no stamp) are not accepted: they classify as unknown
// and count in DropUnknown. Accepting them would leave the replay open for
// as long as any node accepts them (an attacker replays v1 captures at
// will), and the release that added stamps also puts Raft and gossip
// behind member authentication, which old nodes do not speak: a cluster
// is upgraded all at once, not mixed. During a rolling restart, an old and
// a new node keep a direct path only while WireGuard traffic flows on it.
package nat

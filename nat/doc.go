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
//	probe   'r' 'n' 1 1 | sender id (8) | tx id (12)                   | mac
//	pong    'r' 'n' 1 2 | sender id (8) | tx id (12) | observed (18)   | mac
//	relay   'r' 'n' 1 3 | src id (8)    | dst id (8) | payload         | mac(src↔relay)
//	relayed 'r' 'n' 1 4 | relay id (8)  | src id (8) | payload         | mac(relay↔dst)
//	addrs   'r' 'n' 1 5 | sender id (8) | n (1) | n × addr (18)        | mac
//
// A peer id is the first 8 bytes of its public key. A relay payload is an
// already-encrypted WireGuard message, or a probe or pong between the two
// ends (MACed with their own pairwise key), so paths through a relay are
// probed end to end. An addrs frame ("call me maybe") goes through the
// relay to a peer without a direct path and lists the addresses other
// members see the sender at, so both ends probe each other at once: that is
// how a path recovers after a NAT mapping changes.
package nat

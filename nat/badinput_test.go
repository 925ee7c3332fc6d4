package nat

import (
	"net/netip"
	"testing"
	"time"

	"github.com/runos/runos-agent/nat/natlab"
)

// TestBadInput: a stranger on the internet sends a relay frame for a
// non-member, a frame spoofing a member's id, a probe flood with a
// member's real key, and garbage. All dropped and counted; the cluster
// keeps working.
func TestBadInput(t *testing.T) {
	l := newLab(t)
	r := l.public("r", 10, true)
	a := l.home("a", 1, 2, natlab.HardNAT)
	b := l.home("b", 2, 2, natlab.HardNAT)
	nodes := []*tnode{r, a, b}
	connect(t, nodes, l.candidates(nodes, r))
	waitPath(t, a, b, "relay", viaRelay(r))

	evil, err := l.inet.NewHost("evil", netip.MustParseAddr("198.18.0.66"))
	if err != nil {
		t.Fatal(err)
	}
	sock, err := evil.Listen(666)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	to := l.addr(r)
	before := r.bind.Stats()

	outsider := [32]byte{0x55}
	outKey, _ := pairKey(testKey(t, 9), publicKey(testKey(t, 9)), r.pub)
	// Relay frame from a non-member, and from a member to a non-member.
	sock.WriteTo(appendFrame(nil, &frame{Type: frameRelay, A: peerID(publicKey(testKey(t, 9))), B: peerID(b.pub), Payload: []byte{4, 0, 0, 0}}, newMACKey(outKey)), to)
	aKey, _ := pairKey(a.priv, a.pub, r.pub)
	sock.WriteTo(appendFrame(nil, &frame{Type: frameRelay, A: peerID(a.pub), B: peerID(outsider), Payload: []byte{4, 0, 0, 0}}, newMACKey(aKey)), to)
	// Spoofed: a's id, wrong key.
	sock.WriteTo(appendFrame(nil, &frame{Type: frameRelay, A: peerID(a.pub), B: peerID(b.pub), Payload: []byte{4, 0, 0, 0}}, newMACKey([32]byte{1})), to)
	sock.WriteTo(appendFrame(nil, &frame{Type: frameProbe, A: peerID(a.pub)}, newMACKey([32]byte{1})), to)
	// A flood of valid, freshly stamped probes (a's key leaked): the
	// rate limit holds. Replays of one probe are TestProbeReplay's.
	for i := 0; i < 500; i++ {
		sock.WriteTo(appendFrame(nil, stamped(frame{Type: frameProbe, A: peerID(a.pub), TxID: [12]byte{byte(i), byte(i >> 8)}}, time.Now()), newMACKey(aKey)), to)
	}
	// Garbage, a truncated frame, and a frame of an unknown type.
	sock.WriteTo([]byte("GET / HTTP/1.1\r\n\r\n"), to)
	sock.WriteTo([]byte{'r', 'n', frameVersion, frameProbe, 1, 2}, to)
	sock.WriteTo([]byte{'r', 'n', frameVersion, 99, 1, 2, 3, 4}, to)

	waitFor(t, 5*time.Second, "drops counted", func() bool {
		s := r.bind.Stats()
		return s.DropNonMember >= before.DropNonMember+2 && s.DropBadMAC >= before.DropBadMAC+2 &&
			s.DropRateLimited > before.DropRateLimited+400 && s.DropUnknown > before.DropUnknown && s.DropMalformed >= before.DropMalformed+2
	})
	if s := r.bind.Stats(); s.TxPongs-before.TxPongs > 2*DefaultProbesPerSec+20 {
		t.Fatalf("answered %d flooded probes", s.TxPongs-before.TxPongs)
	}
	mustEcho(t, a, b)
}

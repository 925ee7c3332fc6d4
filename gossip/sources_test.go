package gossip

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/runos/runos-agent/mesh"
)

// A sender outside Sources (a pod, a wg1 client: here another loopback
// address) reaches neither memberlist's packet nor its stream channel; a
// member's packet and stream, sent after, are the first delivered.
func TestTransportDropsForeignSources(t *testing.T) {
	tr := newTestTransport(t)
	stranger := mesh.NewHostNet(netip.MustParseAddr("127.0.0.2"))
	member := mesh.NewHostNet(loopback)
	to := tr.Addr().String()

	send := func(n mesh.Net, payload string) {
		t.Helper()
		c, err := n.DialContext(t.Context(), "udp", to)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(payload)); err != nil {
			t.Fatal(err)
		}
	}
	send(stranger, "from a pod")
	send(member, "from a member")
	select {
	case p := <-tr.PacketCh():
		if string(p.Buf) != "from a member" {
			t.Fatalf("delivered %q from %s", p.Buf, p.From)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the member's packet was not delivered")
	}

	sc, err := stranger.DialContext(t.Context(), "tcp", to)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	mc, err := member.DialContext(t.Context(), "tcp", to)
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	select {
	case c := <-tr.StreamCh():
		defer c.Close()
		if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got.Addr() != loopback || got != mc.LocalAddr().(*net.TCPAddr).AddrPort() {
			t.Fatalf("delivered a stream from %s", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the member's stream was not delivered")
	}
	// The stranger's stream was closed on accept, its packet counted.
	_ = sc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := sc.Read(make([]byte, 1)); err == nil {
		t.Fatal("the stranger's stream is open")
	}
	if got := tr.Dropped(); got != 2 {
		t.Fatalf("Dropped = %d, want 2", got)
	}
}

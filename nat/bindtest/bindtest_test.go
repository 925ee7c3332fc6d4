package bindtest

import (
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/runos/runos-agent/nat/natlab"
)

func TestCutStopsSends(t *testing.T) {
	w := natlab.NewWorld()
	lan := w.NewNetwork("lan", netip.MustParsePrefix("127.0.0.0/8"))
	ha, _ := lan.NewHost("a", netip.MustParseAddr("127.0.0.2"))
	hb, _ := lan.NewHost("b", netip.MustParseAddr("127.0.0.3"))
	a := NewCuttable(ha.Bind())
	if _, _, err := a.Open(1000); err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	recv, _, err := hb.Bind().Open(2000)
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := a.ParseEndpoint("127.0.0.3:2000")
	bufs, sizes, eps := [][]byte{make([]byte, 64)}, []int{0}, []conn.Endpoint{nil}

	if err := a.Send([][]byte{[]byte("before")}, ep); err != nil {
		t.Fatal(err)
	}
	if n, err := recv[0](bufs, sizes, eps); err != nil || n != 1 || string(bufs[0][:sizes[0]]) != "before" {
		t.Fatalf("before the cut: n=%d err=%v %q", n, err, bufs[0][:sizes[0]])
	}
	a.Cut()
	if err := a.Send([][]byte{[]byte("after")}, ep); err != nil {
		t.Fatalf("a cut send is a silent drop, got %v", err)
	}
	// Nothing arrives: a later datagram from a third host is the next one.
	hc, _ := lan.NewHost("c", netip.MustParseAddr("127.0.0.4"))
	sc := hc.Bind()
	if _, _, err := sc.Open(3000); err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Send([][]byte{[]byte("marker")}, ep); err != nil {
		t.Fatal(err)
	}
	if n, err := recv[0](bufs, sizes, eps); err != nil || n != 1 || string(bufs[0][:sizes[0]]) != "marker" {
		t.Fatalf("after the cut got %q, want only the marker", bufs[0][:sizes[0]])
	}
}

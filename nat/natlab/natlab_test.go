package natlab

import (
	"net/netip"
	"testing"
	"time"
)

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func recv(t *testing.T, s *Socket) (string, netip.AddrPort, bool) {
	t.Helper()
	select {
	case p := <-s.ch:
		return string(p.data), p.from, true
	case <-time.After(50 * time.Millisecond):
		return "", netip.AddrPort{}, false
	}
}

func TestNAT(t *testing.T) {
	for _, kind := range []NATKind{EasyNAT, HardNAT} {
		t.Run(kind.String(), func(t *testing.T) {
			w := NewWorld()
			inet := w.NewNetwork("internet", netip.MustParsePrefix("198.18.0.0/15"))
			lan := w.NewNetwork("lan", netip.MustParsePrefix("192.168.1.0/24"))
			nat := must[*NAT](t)(w.NewNAT(kind, lan, inet, netip.MustParseAddr("198.18.1.1")))
			a := must[*Host](t)(lan.NewHost("a", netip.MustParseAddr("192.168.1.2")))
			s1 := must[*Host](t)(inet.NewHost("s1", netip.MustParseAddr("198.18.0.10")))
			s2 := must[*Host](t)(inet.NewHost("s2", netip.MustParseAddr("198.18.0.11")))
			as := must[*Socket](t)(a.Listen(5000))
			s1s := must[*Socket](t)(s1.Listen(3478))
			s2s := must[*Socket](t)(s2.Listen(3478))
			defer as.Close()
			defer s1s.Close()
			defer s2s.Close()

			// Unsolicited inbound to the NAT is dropped.
			as.WriteTo([]byte("hi1"), s1s.LocalAddr())
			_, m1, ok := recv(t, s1s)
			if !ok || m1.Addr() != nat.Public() {
				t.Fatalf("s1 got from %v ok=%v", m1, ok)
			}
			s2s.WriteTo([]byte("unsolicited"), m1)
			if msg, _, ok := recv(t, as); ok {
				t.Fatalf("unsolicited inbound delivered: %q", msg)
			}
			// The reply from the server it talked to passes.
			s1s.WriteTo([]byte("reply"), m1)
			if msg, from, ok := recv(t, as); !ok || msg != "reply" || from != s1s.LocalAddr() {
				t.Fatalf("reply: %q from %v ok=%v", msg, from, ok)
			}
			as.WriteTo([]byte("hi2"), s2s.LocalAddr())
			_, m2, _ := recv(t, s2s)
			if (m1 == m2) != (kind == EasyNAT) {
				t.Fatalf("%v NAT mapped to %v and %v", kind, m1, m2)
			}
			nat.Flush()
			as.WriteTo([]byte("hi3"), s1s.LocalAddr())
			if _, m3, _ := recv(t, s1s); m3 == m1 {
				t.Fatal("flush kept the mapping's port")
			}
			w.SetDrop(func(from, to netip.AddrPort) bool { return to == s1s.LocalAddr() })
			as.WriteTo([]byte("dropped"), s1s.LocalAddr())
			if _, _, ok := recv(t, s1s); ok {
				t.Fatal("drop rule ignored")
			}
		})
	}
}

package nat

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

func TestSTUNEncodeParse(t *testing.T) {
	tx := [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	req, err := buildSTUNRequest(tx)
	if err != nil {
		t.Fatal(err)
	}
	m, err := parseSTUN(req)
	if err != nil || m.Kind != stunRequest || m.TxID != tx {
		t.Fatalf("request: %+v %v", m, err)
	}
	for _, a := range []string{"198.18.3.4:40000", "[2001:db8::7]:1"} {
		mapped := netip.MustParseAddrPort(a)
		resp, err := buildSTUNResponse(tx, mapped)
		if err != nil {
			t.Fatal(err)
		}
		m, err = parseSTUN(resp)
		if err != nil || m.Kind != stunSuccess || m.TxID != tx || m.Mapped != mapped {
			t.Fatalf("response: %+v %v", m, err)
		}
		resp[len(resp)-1] ^= 1 // breaks the FINGERPRINT
		if _, err := parseSTUN(resp); err == nil {
			t.Fatal("bad fingerprint accepted")
		}
	}
}

func FuzzParseSTUN(f *testing.F) {
	req, _ := buildSTUNRequest([12]byte{1})
	resp, _ := buildSTUNResponse([12]byte{2}, netip.MustParseAddrPort("1.2.3.4:5"))
	f.Add(req)
	f.Add(resp)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseSTUN(b)
		if err != nil {
			return
		}
		if m.Kind == stunSuccess {
			again, err := buildSTUNResponse(m.TxID, m.Mapped)
			if err != nil {
				t.Fatal(err)
			}
			m2, err := parseSTUN(again)
			if err != nil || m2.Mapped != m.Mapped || m2.TxID != m.TxID {
				t.Fatalf("round trip: %+v -> %+v %v", m, m2, err)
			}
		}
	})
}

// TestSTUNLoopback runs a STUN transaction between two Binds over real UDP
// on 127.0.0.1: one the client, one the responder.
func TestSTUNLoopback(t *testing.T) {
	server, err := New(fastConfig(testKey(t, 1), conn.NewStdNetBind()), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	client, err := New(fastConfig(testKey(t, 2), conn.NewStdNetBind()), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	sport := driven(t, server)
	cport := driven(t, client)
	srv := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), sport)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := client.Reflexive(ctx, []netip.AddrPort{srv})
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), cport); got != want {
		t.Fatalf("reflexive = %v, want %v", got, want)
	}
	waitFor(t, time.Second, "STUN counters", func() bool {
		return server.Stats().STUNResponses > 0 && server.Stats().RxSTUN > 0 && client.Stats().RxSTUN > 0
	})

	// Netcheck with the same server twice cannot judge mapping behaviour.
	rep := client.Netcheck(ctx, []netip.AddrPort{srv, srv})
	if !rep.UDP || rep.Public.Port() != cport || rep.Mapping != MappingUnknown {
		t.Fatalf("netcheck: %+v", rep)
	}

	// A server that does not answer: retransmits, then the deadline.
	dead := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 9) // discard
	short, cancel2 := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel2()
	if _, err := client.Reflexive(short, []netip.AddrPort{dead}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dead server: %v", err)
	}

	client.Close()
	if _, err := client.Reflexive(ctx, []netip.AddrPort{srv}); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed bind: %v", err)
	}
}

func TestNetcheckPure(t *testing.T) {
	s1, s2 := netip.MustParseAddrPort("198.18.0.10:3478"), netip.MustParseAddrPort("198.18.0.11:3478")
	s1b := netip.MustParseAddrPort("198.18.0.10:3479")
	m1, m2 := netip.MustParseAddrPort("198.18.1.1:20000"), netip.MustParseAddrPort("198.18.1.1:20001")
	for _, tc := range []struct {
		name string
		res  []STUNResult
		udp  bool
		want MappingBehavior
	}{
		{"none", nil, false, MappingUnknown},
		{"all failed", []STUNResult{{Server: s1, Err: errors.New("x")}}, false, MappingUnknown},
		{"one server", []STUNResult{{Server: s1, Mapped: m1}}, true, MappingUnknown},
		{"same host twice", []STUNResult{{Server: s1, Mapped: m1}, {Server: s1b, Mapped: m2}}, true, MappingUnknown},
		{"easy", []STUNResult{{Server: s1, Mapped: m1}, {Server: s2, Mapped: m1}}, true, MappingEndpointIndependent},
		{"hard", []STUNResult{{Server: s1, Mapped: m1}, {Server: s2, Mapped: m2}}, true, MappingEndpointDependent},
		{"one failed", []STUNResult{{Server: s1, Mapped: m1}, {Server: s2, Err: errors.New("x")}}, true, MappingUnknown},
	} {
		r := Netcheck(tc.res)
		if r.UDP != tc.udp || r.Mapping != tc.want {
			t.Errorf("%s: %+v", tc.name, r)
		}
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New(Config{}, testLogger()); err == nil {
		t.Error("missing PrivateKey accepted")
	}
	if _, err := New(Config{PrivateKey: [32]byte{1}}, nil); err == nil {
		t.Error("nil logger accepted")
	}
	if _, err := New(Config{PrivateKey: [32]byte{1}, ProbeInterval: time.Second, PathTimeout: time.Second}, testLogger()); err == nil {
		t.Error("PathTimeout <= ProbeInterval accepted")
	}
	if _, err := New(Config{PrivateKey: [32]byte{1}, ProbeInterval: -1}, testLogger()); err == nil {
		t.Error("negative interval accepted")
	}
	b, err := New(Config{PrivateKey: testKey(t, 4)}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	self := b.PublicKey()
	// Bad entries are skipped and counted; the good ones still apply.
	other := publicKey(testKey(t, 5))
	third := publicKey(testKey(t, 6))
	if err := b.SetPeers([]PeerInfo{{PublicKey: [32]byte{}}, {PublicKey: third}}); err != nil || len(b.Paths()) != 1 {
		t.Errorf("zero peer key: err %v, %d peers, want the other one", err, len(b.Paths()))
	}
	if err := b.SetPeers([]PeerInfo{{PublicKey: other}, {PublicKey: other}, {PublicKey: third}}); err != nil || len(b.Paths()) != 1 {
		t.Errorf("duplicate peer: err %v, %d peers, want only the unique one", err, len(b.Paths()))
	}
	if err := b.SetPeers([]PeerInfo{{PublicKey: other, Candidates: []netip.AddrPort{netip.MustParseAddrPort("1.2.3.4:0"),
		netip.MustParseAddrPort("0.0.0.0:9"), netip.MustParseAddrPort("224.0.0.1:9"), netip.MustParseAddrPort("1.2.3.4:9")}}}); err != nil {
		t.Errorf("bad candidates: %v", err)
	}
	b.mu.Lock()
	n := len(b.peers[other].cands)
	b.mu.Unlock()
	if st := b.Stats(); n != 1 || st.SkippedPeers != 2 || st.SkippedCandidates != 3 {
		t.Errorf("%d candidates kept, stats %+v; want 1 kept, 2 peers and 3 candidates skipped", n, st)
	}
	if err := b.SetPeers([]PeerInfo{{PublicKey: self}, {PublicKey: other}}); err != nil {
		t.Errorf("own key in the list: %v", err)
	}
}

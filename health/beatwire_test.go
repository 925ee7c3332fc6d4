package health

import (
	"reflect"
	"testing"

	"github.com/runos/runos-agent/hostinfo"
)

func TestBeatWireRoundTrip(t *testing.T) {
	full := heartbeat{
		Name: "node-1", ID: "0123456789abcdef", Seq: 77, Term: 5, Leader: true, Version: "v1.2.3",
		Host: hostinfo.Snapshot{CPUPercent: 12.5, Load1: 0.42, Load5: 1.5, Load15: 2, MemUsedBytes: 512 << 20,
			MemTotalBytes: 8 << 30, DiskUsedBytes: 10 << 30, DiskTotalBytes: 100 << 30, UptimeSeconds: 3600},
		MeshRx: 1 << 40, MeshTx: 12345, Cands: []string{"198.18.0.1:51820", "10.0.0.2:51820"}, has: beatParts,
	}
	got, err := decodeBeat(encodeBeat(nil, &full))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, full) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, full)
	}

	// A liveness-only beat is a few bytes, and a receiver keeps what it
	// learned from the full one.
	tiny := heartbeat{Name: "node-1", Seq: 78, Term: 5, Leader: true}
	wire := encodeBeat(nil, &tiny)
	if len(wire) > 16 {
		t.Errorf("liveness beat is %d bytes", len(wire))
	}
	got, err = decodeBeat(wire)
	if err != nil {
		t.Fatal(err)
	}
	got.merge(full)
	if got.ID != full.ID || got.Host != full.Host || got.Version != full.Version || len(got.Cands) != 2 || got.Seq != 78 {
		t.Errorf("merged beat lost parts: %+v", got)
	}

	bye := heartbeat{Name: "n", Bye: true}
	if got, err := decodeBeat(encodeBeat(nil, &bye)); err != nil || !got.Bye || got.Leader {
		t.Errorf("bye: %+v %v", got, err)
	}
}

func TestBeatWireRejectsMalformed(t *testing.T) {
	good := encodeBeat(nil, &heartbeat{Name: "n", Seq: 1, Cands: []string{"a:1"}, has: beatCands})
	for name, b := range map[string][]byte{
		"empty":         nil,
		"json":          []byte(`{"n":"x"}`),
		"other version": append([]byte{beatMagic, 9}, good[2:]...),
		"truncated":     good[:len(good)-1],
		"trailing":      append(append([]byte{}, good...), 0),
		"no name":       encodeBeat(nil, &heartbeat{Seq: 1}),
		"oversized":     append(append([]byte{}, good[:2]...), make([]byte, maxBeatLen)...),
		"huge string":   {beatMagic, beatVersion, 0, 0xff, 0xff, 0x03},
	} {
		if _, err := decodeBeat(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestHostMovedDeadband(t *testing.T) {
	base := hostinfo.Snapshot{CPUPercent: 1, Load1: 0.1, MemUsedBytes: 1 << 30, MemTotalBytes: 8 << 30, DiskUsedBytes: 5 << 30, DiskTotalBytes: 100 << 30}
	jitter := base
	jitter.CPUPercent, jitter.Load1, jitter.MemUsedBytes = 2.5, 0.2, base.MemUsedBytes+50<<20
	if hostMoved(base, jitter) {
		t.Error("idle jitter counted as a change")
	}
	for name, f := range map[string]func(*hostinfo.Snapshot){
		"cpu":  func(s *hostinfo.Snapshot) { s.CPUPercent = 40 },
		"load": func(s *hostinfo.Snapshot) { s.Load1 = 2 },
		"mem":  func(s *hostinfo.Snapshot) { s.MemUsedBytes += 1 << 30 },
		"disk": func(s *hostinfo.Snapshot) { s.DiskUsedBytes += 2 << 30 },
	} {
		s := base
		f(&s)
		if !hostMoved(base, s) {
			t.Errorf("%s change not noticed", name)
		}
	}
}

func FuzzDecodeBeat(f *testing.F) {
	f.Add(encodeBeat(nil, &heartbeat{Name: "n", Seq: 3, Term: 2, Cands: []string{"1.2.3.4:5"}, has: beatParts}))
	f.Add([]byte{beatMagic, beatVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		hb, err := decodeBeat(b)
		if err != nil {
			return
		}
		again, err := decodeBeat(encodeBeat(nil, &hb))
		if err != nil || again.Name != hb.Name || again.Seq != hb.Seq {
			t.Fatalf("re-encoding a decoded beat: %v", err)
		}
	})
}
